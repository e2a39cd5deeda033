# coordexp-swift: `make demo` (the end-to-end CPU demo) and `make test` (the whole suite).
# Both create .venv and install what they need if it is missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.coordexp-installed
DEMO_OUT ?= demo_out

.PHONY: demo study test test-fast bench install clean-demo

# setup.cfg holds compatible ranges (for installing the plugin into an existing ms-swift environment);
# constraints.txt the exact tested set, which this install (and so `make test`, i.e. CI) uses.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision first, as a pair built for each other (pip takes them from this machine's disk).
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not slow"

demo: $(STAMP)
	$(BIN)/coordexp-swift demo --out $(DEMO_OUT)

study: $(STAMP)
	$(BIN)/coordexp-swift demo --study --out study_out

bench: $(STAMP)
	$(BIN)/python bench/stage1.py
	$(BIN)/python bench/registry.py
	$(BIN)/python bench/eval.py

clean-demo:
	rm -rf $(DEMO_OUT)
