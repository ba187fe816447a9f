# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
CORE_STAMP := $(VENV)/.sctraj-core-installed
STAMP := $(VENV)/.sctraj-installed

.PHONY: install install-core demo test lint bench docs tutorials clean

# sctraj and what it needs to run (all the demo uses)
$(CORE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# the pinned CPU wheel first, so nothing can pull a multi-GB CUDA build
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e .
	touch $(CORE_STAMP)

# ... plus the test extra (pytest, the tutorials' and the integrations' packages: CellRank, scVelo, Dask, leiden)
$(STAMP): $(CORE_STAMP)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install-core: $(CORE_STAMP)

install: $(STAMP)

# the demo needs only the core install (about a minute less than the test extra on a fresh machine)
demo: install-core
	$(VENV)/bin/sctraj demo --out sctraj_demo

test: install
	$(PY) -m ruff check sctraj tests benchmarks
	$(PY) -m pytest -n 2 -q tests
	# every tutorial re-executed in quick mode (SCTRAJ_FAST=1; committed outputs are not overwritten), ~2 min
	SCTRAJ_FAST=1 MPLBACKEND=agg $(PY) -m pytest -n 2 -q --nbmake --nbmake-timeout=900 tutorials/
	# the docs build offline with warnings as errors (about a minute)
	$(MAKE) docs

lint: install
	$(PY) -m ruff check sctraj tests benchmarks

bench: install
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

DOC_STAMP := $(VENV)/.sctraj-doc-installed

$(DOC_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[doc]"
	touch $(DOC_STAMP)

# HTML docs, offline (no intersphinx), warnings are errors; tutorials are rendered from their committed outputs
docs: $(DOC_STAMP)
	SCTRAJ_DOCS_OFFLINE=1 $(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

# re-execute every tutorial notebook (quick settings; the committed outputs are not overwritten)
tutorials: install
	SCTRAJ_FAST=1 MPLBACKEND=agg $(PY) -m pytest -q --nbmake --nbmake-timeout=900 tutorials/

clean:
	rm -rf $(VENV) sctraj_demo docs/_build docs/generated docs/tutorials
