# Every target installs what it needs into .venv first, so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BENCH_INSTALLED := $(VENV)/.bench-installed
BENCH_ARGS ?=
LOADTEST_ARGS ?=
PROTO_FILES := $(wildcard proto/arbiter/v1/*.proto)
ROLE ?= submitter

.PHONY: install proto proto-check lint test run migrate keys clean bench loadtest env-example

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED)

# Generated code is committed; `make proto` must reproduce it byte for byte.
proto: $(INSTALLED)
	rm -rf arbiter/v1
	mkdir -p arbiter/v1
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_FILES)
	touch arbiter/v1/__init__.py

proto-check: $(INSTALLED)
	@tmp=$$(mktemp -d) && mkdir -p $$tmp/arbiter/v1 && touch $$tmp/arbiter/v1/__init__.py && \
	$(PY) -m grpc_tools.protoc -I proto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTO_FILES) && \
	diff -r $$tmp/arbiter/v1 arbiter/v1 -x __pycache__ && rm -rf $$tmp && echo "generated code is up to date" || \
	{ echo "generated code in arbiter/v1 is stale: run 'make proto' and commit the result"; rm -rf $$tmp; exit 1; }

lint: $(INSTALLED) proto-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint

test: lint
	$(VENV)/bin/pytest -n 2 --dist loadgroup

# Starts PostgreSQL (embedded unless ARBITER_DATABASE_URL is set), migrates, and runs both services.
run: $(INSTALLED) proto
	$(PY) -m shared.devstack

migrate: $(INSTALLED)
	$(VENV)/bin/arbiter migrate

# .env.example is written from SETTINGS in shared/config.py; a test fails when the committed one differs.
env-example: $(INSTALLED)
	$(PY) -m shared.env_example > .env.example

# The peers (Celery, procrastinate) and matplotlib, only for the benchmark.
$(BENCH_INSTALLED): $(INSTALLED) bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

# Issue 7: Arbiter, its peers and the bare-SQL floor side by side (medians of 3), the scale scenario and
# the routing micro-benchmark (which fails the run when a strategy's median Router.choose() reaches 1 ms);
# writes bench/results/latest.{json,md,png}. A quick run: make bench BENCH_ARGS="--tasks 2000 --repetitions 1"
bench: $(BENCH_INSTALLED)
	$(PY) -m bench.run $(BENCH_ARGS)

# Issue 9: clients (submitters, watchers, readers) and SDK agents against its own stack (a fresh database on
# ARBITER_DATABASE_URL's server or the embedded one) for a set time, then a drain; per-RPC p50/p95/p99,
# error rate, server-side codes from /metrics, lost tasks; writes bench/results/loadtest.json; exits 1 on a
# lost or stuck task, a server error or too many errors. make loadtest LOADTEST_ARGS="--duration 60 --clients 100 --agents 50"
loadtest: $(INSTALLED)
	$(PY) -m bench.loadtest $(LOADTEST_ARGS)

# make keys ROLE=viewer: creates an API key for the role and prints it once.
keys: $(INSTALLED)
	$(VENV)/bin/arbiter keys create --role $(ROLE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
