# Quick start:  make run   (install into .venv, then the default experiment end to end)
#               make test  (install into .venv, then the whole test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install run test test-fast bench lint clean

install: $(VENV)/.installed

# One resolution of everything (runtime, torchattacks included, and the dev tools), then the advfine
# package itself, editable (its dependencies are those pins); pip check fails the install if any two
# packages disagree.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

run: install
	$(BIN)/snakemake --cores $(CORES) all

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The benchmark suite (docs/benchmarks.md). It needs the default experiment's results (the no-op
# re-run and the jobs' peak memory), so it runs `make run` first: nothing to do when that is done.
bench: run
	$(BIN)/python benchmarks/run_all.py --threads $(CORES)

# The house checks CI runs beside the tests: Snakemake's linter and the snakefmt formatting.
lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

clean:
	rm -rf results logs .snakemake
