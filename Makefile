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
# The image `make image` builds and `make manifests` names; TAG defaults to the package version, the
# tag the prod overlay pins.
IMAGE ?= ghcr.io/arbiter/arbiter
TAG ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
# What `make breaking` compares proto/ with: the local main branch (CI fetches it first).
BREAKING_AGAINST ?= .git\#branch=main
PROD_OVERLAY := deploy/k8s/overlays/prod
# The image name the prod overlay gives; the release overlay below replaces it.
PROD_IMAGE_NAME := ghcr.io/arbiter/arbiter
MANIFESTS := dist/arbiter-prod.yaml

.PHONY: install proto proto-check lint test run migrate keys clean bench loadtest env-example breaking image manifests

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
	$(VENV)/bin/actionlint -shellcheck=$(VENV)/bin/shellcheck

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

# buf breaking (FILE rules, buf.yaml): fails when proto/ drops or changes what a released client relies on.
breaking: $(INSTALLED)
	$(VENV)/bin/buf breaking --against '$(BREAKING_AGAINST)'

# Refuses an image reference that docker or Kubernetes would reject, before it reaches them.
define check_image_reference
	@[[ '$(IMAGE)' =~ ^([a-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$$ ]] || { echo "IMAGE='$(IMAGE)' is not an image name: \
	lowercase letters, digits and . _ - / (and :port after a registry host), no tag, e.g. ghcr.io/owner/arbiter" >&2; exit 2; }
	@[[ '$(TAG)' =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$$ ]] || { echo "TAG='$(TAG)' is not an image tag: \
	up to 128 letters, digits and _ . - not starting with . or -, e.g. v1.2.0" >&2; exit 2; }
endef

# The image both services and the migration Job run: make image IMAGE=ghcr.io/owner/arbiter TAG=v1.2.0
image:
	$(check_image_reference)
	docker build -t '$(IMAGE):$(TAG)' .

# The prod overlay rendered with IMAGE:TAG into $(MANIFESTS), for `kubectl apply -f`. A throw-away
# overlay on top of prod sets the image, so the committed overlay stays as it is; it lives in its own
# folder two levels down (kustomize takes only relative paths), so runs at once do not collide.
manifests: $(INSTALLED)
	$(check_image_reference)
	mkdir -p dist $(dir $(MANIFESTS))
	overlay=$$(mktemp -d dist/release.XXXXXX) && trap 'rm -rf "$$overlay"' EXIT && \
	printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
	  'resources:' '  - ../../$(PROD_OVERLAY)' 'images:' '  - name: $(PROD_IMAGE_NAME)' \
	  '    newName: $(IMAGE)' '    newTag: "$(TAG)"' > "$$overlay/kustomization.yaml" && \
	$(VENV)/bin/kubectl kustomize "$$overlay" > "$$overlay/rendered.yaml" && \
	mv "$$overlay/rendered.yaml" $(MANIFESTS)
	@echo "wrote $(MANIFESTS) with image $(IMAGE):$(TAG)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist
