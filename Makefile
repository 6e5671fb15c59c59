# The single entry point, used the same way locally and in CI.
# Everything runs inside .venv so that a fresh machine needs only Python 3.11+ and the package registry.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= artifacts/demo
PORT   ?= 8000

.PHONY: help install demo test check format clean loadtest

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: these machines take the local CPU wheel, never the CUDA ones.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[serve,train,dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv with everything (serve + train + dev)

demo: $(STAMP)  ## build the demo (reused while current; REBUILD=1 anew), serve it on PORT (8000), tour it
	$(PY) -m training demo --out $(DEMO) --port $(PORT) $(if $(REBUILD),--rebuild)

test: $(STAMP)  ## run the test suite (real Redis, real ONNX, real HTTP)
	$(PY) -m pytest -q

check: $(STAMP)  ## ruff lint + format check + mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy training service deploy benchmarks

format: $(STAMP)  ## apply ruff formatting and safe fixes
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

loadtest: $(STAMP)  ## start the service on the demo bundle and load-test it (~1 min once the bundle exists)
	PY=$(PY) BUNDLE=$(DEMO)/bundle deploy/loadtest/run_local.sh

clean:  ## remove the demo artefacts (keeps .venv and the training runs in runs/)
	rm -rf artifacts
