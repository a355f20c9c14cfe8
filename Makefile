# rscore: `make demo` and `make test` are all a newcomer needs; both set up first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Variables you may set (`make demo PORT=8001`); `make help` lists them with their defaults.
PYTHON ?= python3
PORT ?= 8000
METRICS_PORT ?= 9090
BENCH_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMPS := $(VENV)/.stamps
EXAMPLES := examples/build
DEV_CERTS := secrets/dev
# The model families of examples/zoo/ (docs/bundles.md), each scored by its own package.
ZOO_PACKAGES := r-cran-ranger r-cran-mass r-cran-nnet r-cran-e1071 r-cran-mgcv r-cran-kernlab \
	r-cran-party r-cran-partykit r-cran-earth r-cran-caret r-cran-pls r-cran-quantreg \
	r-cran-ordinal r-cran-mda r-cran-survival r-cran-lme4 r-cran-nlme r-cran-pscl
ZOO := examples/zoo/build
DEBIAN_PACKAGES := r-base-core r-base-dev r-cran-jsonlite r-cran-randomforest r-cran-rpart \
	r-cran-gbm r-cran-glmnet prometheus $(ZOO_PACKAGES)

.PHONY: help setup demo predict-examples dev-certs test test-fast lint format bench-worker bench \
	bench-activator bench-sim bench-autoscale bench-parse bench-bodies bench-fidelity bench-big soak \
	bench-controller bench-memory images pod-test clean

help:
	@echo "make demo          set up, serve the example lm bundle, send it one request"
	@echo "make predict-examples  score each example bundle offline (rscore predict)"
	@echo "make test          set up, then lint and run the test suite"
	@echo "make test-fast     the tests that start no R and no rscore process, and are quick (<1 min)"
	@echo "make bench-worker  measure the worker protocol's round-trip overhead"
	@echo "make bench         HTTP benchmark: rscore vs plumber vs an echo ceiling (wrk)"
	@echo "make bench-activator  latency and throughput rscore activator adds (wrk)"
	@echo "make bench-sim     simulator: speed vs SimPy, M/M/4 vs Erlang C, a simulated day"
	@echo "make bench-autoscale  every example scenario under every policy, cost vs the oracle"
	@echo "make bench-parse   what a records body costs to parse as it grows (1k-100k records)"
	@echo "make bench-bodies  sidecar memory and /healthz stalls under 9 MB bodies"
	@echo "make bench-big     100k and 1M-row requests vs R's own predict(); fan-out"
	@echo "make bench-fidelity  simulator vs a real pod: lm and rf, Poisson and trace, 30-90% load"
	@echo "make bench-controller  rscore autoscaler vs the API emulator: ticks, CPU, API requests at scale"
	@echo "make bench-memory  R workers' memory and restart: spawned vs forked from a zygote"
	@echo "make soak          10 minutes of faults and hostile clients at 80% load: nothing lost"
	@echo "make dev-certs     a test CA and a localhost/127.0.0.1 certificate in $(DEV_CERTS)/"
	@echo "make images        build the scorer, sidecar, autoscaler, activator images (podman)"
	@echo "make pod-test      run the scoring pod in podman: HTTPS, rotation, SIGTERM, kill -9"
	@echo "make lint, make format  ruff, import contracts, mypy;  make clean  remove .venv, bundles"
	@echo
	@echo "Variables (make demo PORT=8001 METRICS_PORT=9091):"
	@echo "  PORT=8000          make demo: the API's port on 127.0.0.1"
	@echo "  METRICS_PORT=9090  make demo: the Prometheus /metrics port"
	@echo "  BENCH_ARGS=        make bench*: flags for the benchmark, e.g. \"--duration 5 --no-write\""
	@echo "  PYTHON=python3     the interpreter that creates .venv (at set-up)"

setup: $(STAMPS)/debian $(STAMPS)/python $(STAMPS)/examples $(STAMPS)/zoo
	@:

# Debian packages: install only what is missing, so a second run is quiet and quick.
$(STAMPS)/debian: Makefile scripts/install-debian-packages
	@scripts/install-debian-packages $(DEBIAN_PACKAGES)
	@mkdir -p $(STAMPS) && touch $@

# The same script installs the project into the container images (docker/).
$(STAMPS)/python: pyproject.toml scripts/install-python $(STAMPS)/debian
	@echo "installing rscore and its test tools into $(VENV)"
	@PYTHON=$(PYTHON) scripts/install-python $(VENV) -e '.[all,test]'
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/examples: examples/build_examples.R $(STAMPS)/debian
	@echo "building example bundles in $(EXAMPLES)/"
	@Rscript examples/build_examples.R $(EXAMPLES) >/dev/null
	@mkdir -p $(STAMPS) && touch $@

# One plain bundle per model family and each package's own answers (tests/test_zoo.py).
$(STAMPS)/zoo: examples/zoo/build_zoo.R $(STAMPS)/debian
	@echo "building the model zoo in $(ZOO)/"
	@TZ=UTC Rscript examples/zoo/build_zoo.R $(ZOO) >/dev/null
	@mkdir -p $(STAMPS) && touch $@

demo: setup
	@PORT=$(PORT) METRICS_PORT=$(METRICS_PORT) $(BIN)/python examples/demo.py

# A test CA and a server certificate for localhost and 127.0.0.1 signed by it, for trying
# TLS (README, Security): git-ignored, keys unencrypted, valid 30 days; run again to renew.
dev-certs:
	@scripts/install-debian-packages openssl
	@scripts/dev-certs $(DEV_CERTS)

predict-examples: setup
	@for bundle in mtcars-lm iris-rf warpbreaks-glm; do \
	  echo "== $$bundle: rscore predict $(EXAMPLES)/$$bundle examples/requests/$$bundle.json"; \
	  $(BIN)/rscore predict $(EXAMPLES)/$$bundle examples/requests/$$bundle.json; \
	done

lint: setup
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/lint-imports --no-cache
	@$(BIN)/mypy

format: setup
	@$(BIN)/ruff format .
	@$(BIN)/ruff check --fix .

test: setup lint
	@$(BIN)/pytest

# The markers are in pyproject.toml; tests/conftest.py adds real_r by fixture.
test-fast: setup
	@$(BIN)/pytest -m "not slow and not real_r and not e2e"

bench-worker: setup
	@$(BIN)/python -m bench.worker_roundtrip --bundle $(EXAMPLES)/mtcars-lm

# `make bench` (BENCH_ARGS="--duration 5 --no-write" to shorten or keep docs/ as is).
bench: setup $(STAMPS)/bench-debian
	@$(BIN)/python -m bench.http $(BENCH_ARGS)

# The benchmark's tools from Debian (wrk, plumber), installed only when missing.
$(STAMPS)/bench-debian: Makefile $(STAMPS)/debian
	@scripts/install-debian-packages wrk hey r-cran-plumber
	@mkdir -p $(STAMPS) && touch $@

# `make bench-activator` (BENCH_ARGS as for `make bench`): direct vs through the activator.
bench-activator: setup $(STAMPS)/bench-wrk
	@$(BIN)/python -m bench.activator $(BENCH_ARGS)

# wrk alone (the activator's benchmark needs no plumber), installed only when missing.
$(STAMPS)/bench-wrk: Makefile $(STAMPS)/debian
	@scripts/install-debian-packages wrk
	@mkdir -p $(STAMPS) && touch $@

# `make bench-NAME` runs bench/NAME.py with BENCH_ARGS: "--no-write" keeps docs/ as is;
# bench-autoscale also takes scenario paths (only those run); bench-fidelity takes about 8
# minutes ("--duration-s 5 --no-write" for a shorter look; the traces come from
# ../shared/traces); bench-big a few minutes.
bench-sim bench-autoscale bench-parse bench-bodies bench-fidelity bench-big bench-controller bench-memory: bench-%: setup
	@$(BIN)/python -m bench.$* $(BENCH_ARGS)

# `make images`: podman here (docker elsewhere, same docker/*.Dockerfile); the base is made
# with debootstrap when no registry answers. Not part of `make test` (minutes, not CI).
images: setup $(STAMPS)/images-debian
	@PIP=$(BIN)/pip scripts/build-images

# `make pod-test`: the two-container pod as manifests/base/deployment.yaml runs it, in
# podman (docs/deploy.md, "The pod in podman"); builds the images first.
pod-test: images
	@$(BIN)/python -m scripts.pod_test

# The container tools, for the two targets above only.
$(STAMPS)/images-debian: Makefile $(STAMPS)/debian
	@scripts/install-debian-packages podman runc debootstrap
	@mkdir -p $(STAMPS) && touch $@

# `make soak` (BENCH_ARGS="--duration-s 120 --no-write" for a shorter look).
soak: setup
	@$(BIN)/python -m bench.soak $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(EXAMPLES) $(ZOO) .pytest_cache .ruff_cache
