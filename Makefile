# The two quickstart commands (README.md) and nothing clever.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU build on disk for the test path; an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test lint e2e screenshots

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

# Browser tests of the dashboard (Debian's chromium: apt-get install -y chromium); CI runs them after `make test`.
e2e: $(VENV)/.dev
	$(PY) -m pytest -q -m e2e

# The same tests, writing their screenshots into docs/img/ (docs/dashboard.md shows them).
screenshots: $(VENV)/.dev
	SERVESIM_SCREENSHOT_DIR=docs/img $(PY) -m pytest -q -m e2e tests/test_e2e_dashboard.py
