# The two quickstart commands (README.md) and nothing clever.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU build on disk for the test path; an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test lint

$(VENV)/.core:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PY) -m pip install -q -e '.[dev,gpu,app,dist]' $(TORCH_CPU)
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/servesim simulate

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check servesim tests bench

test: lint
	TRITON_INTERPRET=1 $(PY) -m pytest -q
