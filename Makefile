# The two commands a newcomer needs: `make up` and `make test` (see README.md).
# Everything they need is installed on first use: uv (pinned, in .rdv/tools), the
# virtual env with the exact set of uv.lock, the Kafka jars (from Maven Central,
# cached under .rdv/cache).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
KAFKA_PORT ?= 9092
CLINC150   ?= models/ood/clinc150
UV_VERSION := 0.13.9
UV         := .rdv/tools/bin/uv
# every extra the workers, tests and benchmarks use; the images take fewer (Dockerfile)
EXTRAS     := --extra models --extra weights --extra dev --extra bench-runtimes
OOD_ARTIFACT := .rdv/models/ood-clinc150
# kustomize builds deploy/k8s for the manifest tests (tests/unit/deploy); built from its
# Go module once (Go 1.26+, about a minute cold on 2 cores), kept per version.
KUSTOMIZE_VERSION := v5.8.2
KUSTOMIZE  := .rdv/tools/kustomize-$(KUSTOMIZE_VERSION)/kustomize

.PHONY: help install lock clean-venv kafka-jars kustomize llama-cpp llama-cpp-if-possible ood-artifact up down ps bench chaos test unit integration lint format clean

help:
	@echo "make up          start the platform locally and print a request to try"
	@echo "make down        stop it"
	@echo "make test        lint + the full test suite against a real Kafka broker"
	@echo "make unit        unit tests only (no broker)"
	@echo "make lint        ruff + mypy"
	@echo "make bench       the stream-overhead benchmark (figures: docs/benchmarks.md)"
	@echo "make chaos       the chaos harness: faults and poison records under load (~12 min)"
	@echo "make lock        re-resolve uv.lock after editing pyproject.toml"
	@echo "make clean       remove the virtual env and the local broker's data"

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
		{ echo "Python 3.11+ is needed ($(PYTHON) is $$($(PYTHON) --version 2>&1))"; exit 1; }
	$(PYTHON) -m venv .rdv/tools
	.rdv/tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The exact package set of uv.lock (--frozen: the lock is used as committed, never
# re-resolved). To change a dependency: edit pyproject.toml, then `make lock`.
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`: torch's CPU build at
# the locked version, without the CUDA packages (README: "Locked installs").
TORCH_INDEX ?=
$(STAMP): pyproject.toml uv.lock | $(UV)
	UV=$(UV) UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON=$(PYTHON) UV_PYTHON_DOWNLOADS=never \
		TORCH_INDEX=$(TORCH_INDEX) deploy/install-locked.sh $(EXTRAS)
	@touch $(STAMP)

install: $(STAMP)

# Re-resolve uv.lock after editing pyproject.toml (pins that still fit are kept;
# `make lock LOCK_ARGS=--upgrade` moves every pin forward), then commit it.
lock: | $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) lock --python $(PYTHON) $(LOCK_ARGS)

kafka-jars: install
	$(BIN)/rdv kafka fetch

$(KUSTOMIZE):
	@command -v go >/dev/null || { echo "Go 1.26+ is needed to build kustomize (tests/unit/deploy)"; exit 1; }
	GOBIN=$(CURDIR)/$(dir $(KUSTOMIZE)) GOTOOLCHAIN=local \
		go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

# builds it when missing; prints its path (the manifest tests call this)
kustomize: $(KUSTOMIZE)
	@echo $(KUSTOMIZE)

# llama.cpp's Python binding: the chat workers' fast CPU runtime (models/llama/cpp.py;
# the workers run the torch engine without it) and a reference in bench.llm_throughput.
# PyPI has it as source only: the wheel is built once, for this machine's CPU (its
# kernels use the instructions the build finds: do not copy the wheel to an older CPU),
# in 5-6 min on 2 cores, into .rdv/wheels and installed from there. Not in uv.lock: a
# re-install after a lock change removes it (uv sync is exact); the cached wheel makes
# `make llama-cpp` quick again. `make test` needs it; `make up` carries on without it.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_WHEELS := .rdv/wheels
llama-cpp: install
	@ls $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		.rdv/tools/bin/pip wheel --no-deps --wheel-dir $(LLAMA_CPP_WHEELS) \
			llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(UV) pip install --python $(BIN)/python --find-links $(LLAMA_CPP_WHEELS) \
		llama-cpp-python==$(LLAMA_CPP_VERSION)

llama-cpp-if-possible:
	@$(MAKE) --no-print-directory llama-cpp || \
		echo "llama.cpp could not be built here: the chat workers run the torch engine"

# The chat endpoint's OOD detector, fitted once on CLINC150 (about a minute on 2 cores
# with a warm embedding cache, a few minutes cold). models/specs/ood.yaml reads it.
$(OOD_ARTIFACT)/artifact.json: | $(STAMP)
	@test -f $(CLINC150)/train.jsonl || { echo "no CLINC150 data at $(CLINC150) (set CLINC150=...)"; exit 1; }
	$(BIN)/python -m models.ood fit --data $(CLINC150) --out $(OOD_ARTIFACT) --cache-dir .rdv/cache/ood

ood-artifact: $(OOD_ARTIFACT)/artifact.json

# The broker, the topics, then every process of deploy/local/stack.yaml, each waited
# for on its readiness URL; prints a curl command that works.
up: kafka-jars ood-artifact llama-cpp-if-possible
	$(BIN)/rdv up --port $(KAFKA_PORT)

down: install
	$(BIN)/rdv down --port $(KAFKA_PORT)

ps: install
	$(BIN)/rdv ps --port $(KAFKA_PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The test session starts its own broker on a free port (or uses RDV_KAFKA_BOOTSTRAP)
# and stops it at the end; a running `make up` broker is left alone.
test: kafka-jars lint kustomize llama-cpp
	RDV_KUSTOMIZE=$(KUSTOMIZE) $(BIN)/python -m pytest

unit: install kustomize
	RDV_KUSTOMIZE=$(KUSTOMIZE) $(BIN)/python -m pytest tests/unit

integration: kafka-jars llama-cpp
	$(BIN)/python -m pytest tests/integration

# Benchmarks start their own broker (or use RDV_KAFKA_BOOTSTRAP) and stacks.
bench: kafka-jars
	$(BIN)/python -m bench.stream_overhead

# Its own broker and data plane on free ports; CHAOS_ARGS=--quick for a ~7 min run.
chaos: kafka-jars
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	-$(BIN)/rdv down --port $(KAFKA_PORT)
	rm -rf $(VENV) .rdv

# the virtual env alone (the broker's data, the caches and fitted models stay)
clean-venv:
	rm -rf $(VENV)
