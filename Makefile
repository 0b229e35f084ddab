# Quick start: `make demo` (set up + the main job) and `make test` (set up + the test suite).
# Both create a virtual environment in .venv with MXNet 1.9.1 (CPU) and build the operators.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

$(VENV)/.installed: requirements.txt requirements-test.txt setup.py CMakeLists.txt $(shell find src python -type f -not -name '*.so' -not -path '*/__pycache__/*')
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m dcnv2_mx demo

test: setup
	$(PY) -m pytest tests -q

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build python/dcnv2_mx/*.so
