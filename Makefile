# Quick start:  make run   (install into .venv, then the default experiment end to end)
#               make test  (install into .venv, then the whole test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install run test test-fast test-oldest-torch bench lint clean

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

# The oldest torch the code supports (docs/gpu-and-slurm.md): the fast tests in a venv of its own with
# that torch and its torchvision, everything else at requirements.txt's pins. torch 2.11 refuses
# setuptools 82 and newer, and our pyproject's license field needs 77 or newer.
TORCH_OLDEST ?= 2.11.0
TORCHVISION_OLDEST ?= 0.26.0
OLDEST := .venv-torch$(TORCH_OLDEST)

test-oldest-torch:
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet "setuptools>=77,<82"
	grep -v -E '^(torch|torchvision)==' requirements.txt > $(OLDEST)/requirements.txt
	$(OLDEST)/bin/python -m pip install --quiet -r $(OLDEST)/requirements.txt torch==$(TORCH_OLDEST) \
		torchvision==$(TORCHVISION_OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --no-deps -e .
	$(OLDEST)/bin/python -m pytest -q -m "not slow"
