"""Arbiter's Python package: the generated protobuf code lives in `arbiter.v1`."""
