"""Benchmarks: run one with `python -m bench.NAME` (or `make bench`); each writes bench/results/NAME.json."""
