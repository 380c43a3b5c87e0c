VENV ?= .venv
PY = $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
# Examples per fuzz harness in `make fuzz` (`make test` runs each with 150).
FUZZ_EXAMPLES ?= 20000
# Image `make image` builds, and the base it builds on (empty: Debian bookworm minbase from debootstrap).
IMAGE ?= shoal:dev
BASE_IMAGE ?=
# Registry `make release` pushes to (empty: a docker-registry on loopback for the run).
REGISTRY ?=

PROTOS = $(sort $(wildcard protos/shoal/v1/*.proto))
GEN_DIR = services/shoal/v1
CHART = charts/shoal
HELM = .cache/k8s-tools/bin/helm
# Every values scenario the chart is linted with, relative to the chart.
CHART_VALUES = values.yaml values-kind.yaml values-eks.yaml \
	$(patsubst $(CHART)/%,%,$(sort $(wildcard $(CHART)/ci/*-values.yaml)))
LINT_PATHS = $(wildcard services tests bench tools)
TYPECHECK_PATHS = $(wildcard services/shoal tests bench tools)
# The one protoc command; $(1) is the output root (the package lands in $(1)/shoal/v1).
PROTOC = $(PY) -m grpc_tools.protoc -Iprotos --python_out=$(1) --grpc_python_out=$(1) \
	--mypy_out=quiet:$(1) --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy $(PROTOS)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

all: help

# Show the targets.
.PHONY: help
help:
	@awk '/^# / { doc = substr($$0, 3); next } /^\.PHONY:/ { next } \
		/^[a-z][a-z0-9-]*:/ { if (doc != "") printf "  %-18s %s\n", substr($$1, 1, length($$1) - 1), doc } \
		{ doc = "" }' $(MAKEFILE_LIST)

# Create the virtualenv and install shoal with its dev extras.
.PHONY: venv
venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Install the Debian packages the tests and benches need (only those missing).
.PHONY: system-deps
system-deps:
	bash tools/system-deps.sh

# Regenerate the gRPC package services/shoal/v1 from protos/.
.PHONY: proto
proto: venv
	rm -f $(GEN_DIR)/*_pb2.py $(GEN_DIR)/*_pb2.pyi $(GEN_DIR)/*_pb2_grpc.py
	$(call PROTOC,services)
	touch $(GEN_DIR)/__init__.py

# Check that services/shoal/v1 matches what the protos generate.
.PHONY: proto-check
proto-check: venv
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(call PROTOC,$$tmp); \
	if ! diff -r -q -x __init__.py -x __pycache__ "$$tmp/shoal/v1" $(GEN_DIR); then \
		echo "proto-check: $(GEN_DIR) is out of date with protos/shoal/v1/*.proto: run 'make proto'" >&2; \
		exit 1; \
	fi; \
	test -f $(GEN_DIR)/__init__.py || { echo "proto-check: $(GEN_DIR)/__init__.py missing: run 'make proto'" >&2; exit 1; }; \
	echo "proto-check: $(GEN_DIR) is up to date"

# Lint and check formatting with ruff.
.PHONY: lint
lint: venv
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)

# Check formatting with ruff.
.PHONY: format-check
format-check: venv
	$(PY) -m ruff format --check $(LINT_PATHS)

# Format the code and apply safe lint fixes.
.PHONY: format
format: venv
	$(PY) -m ruff check --fix-only $(LINT_PATHS)
	$(PY) -m ruff format $(LINT_PATHS)

# Type-check services, tests and benches with mypy (settings in pyproject.toml).
.PHONY: typecheck
typecheck: venv
	$(PY) -m mypy --explicit-package-bases $(TYPECHECK_PATHS)

# Run every check and the whole test suite, every marker included, then the fault and integration suites again with
# mutual TLS on every swarm (SHOAL_TEST_TLS=1; integration tests are marked `integration` by tests/conftest.py). What CI runs.
.PHONY: test
test: venv system-deps proto-check lint typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS)
	SHOAL_TEST_TLS=1 $(PY) -m pytest -q -m "faults or integration" $(PYTEST_ARGS) || test $$? -eq 5  # 5: PYTEST_ARGS selected none of them

# Run the unit tests.
.PHONY: test-unit
test-unit: venv
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# Run the integration tests.
.PHONY: test-integration
test-integration: venv system-deps
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

# Fuzz tracker requests, the wire decoder, manifest checks and the registry at length (FUZZ_EXAMPLES=20000 each).
.PHONY: fuzz
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz SHOAL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -o timeout=0 tests/fuzz $(PYTEST_ARGS)

# Run the fault-injection suite (needs root).
.PHONY: test-faults
test-faults: venv system-deps
	$(PY) -m pytest -q -m faults $(PYTEST_ARGS)

# Run the fault-injection suite with mutual TLS on every gRPC listener and channel (root; table in results-tls.md).
.PHONY: test-faults-tls
test-faults-tls: venv system-deps
	SHOAL_TEST_TLS=1 $(PY) -m pytest -q -m faults $(PYTEST_ARGS)

# Run the metrics suite: collectors and exporter, then every dashboard query against a real Prometheus.
.PHONY: test-metrics
test-metrics: venv system-deps
	$(PY) -m pytest -q tests/metrics $(PYTEST_ARGS)

# Check formatting, lint and run the tests.
.PHONY: precheck
precheck: format-check lint test

# Run the local demo.
.PHONY: demo
demo: venv
	$(VENV)/bin/shoal demo

# Benchmark one peer pair against nginx + curl (BENCH_ARGS="--size 256MiB --runs 3").
.PHONY: bench-pair
bench-pair: venv system-deps
	$(PY) bench/pair.py $(BENCH_ARGS)

# Benchmark N peers getting one origin URL against N plain curls of it (BENCH_ARGS="--peers 4 --size 64MiB").
.PHONY: bench-origin
bench-origin: venv system-deps
	$(PY) -m bench.origin $(BENCH_ARGS)

# Benchmark one seeder and N leechers in network namespaces with tc-capped uplinks (root; BENCH_ARGS="--n 4,8").
.PHONY: bench-swarm
bench-swarm: venv system-deps
	$(PY) -m bench.swarm $(BENCH_ARGS)

# Benchmark 10% packet loss on the only source's link: shoal get vs one plain TCP stream (root; BENCH_ARGS="--runs 5").
.PHONY: bench-loss
bench-loss: venv system-deps
	$(PY) -m bench.loss $(BENCH_ARGS)

# Measure the ceiling of Python gRPC on loopback (1 MiB messages, no disk, no hashing).
.PHONY: bench-grpc
bench-grpc: venv
	$(PY) -m bench.grpc_ceiling $(BENCH_ARGS)

# Benchmark one tracker against 10,000 simulated peers: paced announces, GetPeers latency, saturation (BENCH_ARGS="--peers 15000").
.PHONY: bench-tracker
bench-tracker: venv
	$(PY) -m bench.tracker_load $(BENCH_ARGS)

# Fetch helm and kubectl into .cache/k8s-tools/bin.
.PHONY: k8s-tools
k8s-tools:
	bash tools/fetch-k8s-tools.sh

# Install and start the Docker engine (Debian's docker.io) unless it is running.
.PHONY: docker-engine
docker-engine:
	bash tools/docker-engine.sh start

# Build the image with no registry: debootstrap base and a wheelhouse (IMAGE=shoal:dev, BASE_IMAGE=...).
.PHONY: image
image: venv
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) PY=$(PY) bash tools/build-image.sh

# Copy dashboards/shoal.json into the chart (Helm reads only files inside the chart).
.PHONY: chart-dashboard
chart-dashboard: $(CHART)/dashboards/shoal.json

$(CHART)/dashboards/shoal.json: dashboards/shoal.json
	mkdir -p $(@D)
	cp $< $@

# Lint the chart strictly and render it with every values scenario.
.PHONY: chart-lint
chart-lint: k8s-tools chart-dashboard
	for values in $(CHART_VALUES); do \
		echo "chart-lint: $$values"; \
		$(HELM) lint --strict --quiet $(CHART) -f $(CHART)/$$values; \
		$(HELM) template shoal $(CHART) -f $(CHART)/$$values --kube-version 1.33.0 >/dev/null; \
	done

# Write charts/shoal/README.md from README.md.tmpl and the `# --` comments of values.yaml.
.PHONY: chart-docs
chart-docs: venv
	$(PY) -m tools.chart_docs

# Check that charts/shoal/README.md is up to date with values.yaml.
.PHONY: chart-docs-check
chart-docs-check: venv
	$(PY) -m tools.chart_docs --check

# Check the alerts: promtool check rules and promtool test rules on the PrometheusRule the chart renders.
.PHONY: chart-rules
chart-rules: venv system-deps k8s-tools
	$(PY) -m pytest -q tests/chart/test_rules.py $(PYTEST_ARGS)

# Write examples/sidecar/deployment.yaml from snippet.yaml and the chart's shoal.sidecar templates.
.PHONY: examples
examples: venv k8s-tools
	$(PY) -m tools.rehearsal.examples

# Test the chart: every object valid for Kubernetes 1.29 and 1.33 (strict), the alerts, the README, the examples.
.PHONY: chart-test
chart-test: venv system-deps k8s-tools chart-dashboard chart-docs-check
	$(PY) -m pytest -q -m chart tests/chart $(PYTEST_ARGS)

# Rehearse the chart on Docker: its pods as containers of the image, put/get, metrics, a tracker lost.
.PHONY: rehearsal
rehearsal: venv k8s-tools
	$(PY) -m pytest -q -m rehearsal tests/chart $(PYTEST_ARGS)

# Install the chart on a throwaway kind cluster: round-trip a file, helm test, the sidecar example and node-local peers (needs Docker, kind and a registry).
.PHONY: e2e-kind
e2e-kind: image k8s-tools
	IMAGE=$(IMAGE) bash tools/e2e-kind.sh

# Package the chart and push it with the image beside it to an OCI registry (REGISTRY=host:port; default: Debian's docker-registry on loopback).
.PHONY: release
release: image k8s-tools chart-dashboard chart-docs-check
	IMAGE=$(IMAGE) REGISTRY=$(REGISTRY) bash tools/release.sh

# Remove caches and build outputs (keeps the virtualenv; rm -rf .venv by hand for a new one).
.PHONY: clean
clean:
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache build dist services/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
