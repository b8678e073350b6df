# Two commands: `make demo` and `make test`. Both create .venv on first use and install
# exactly requirements.lock into it: every package the project needs, transitively, at one
# version with its hashes, torch's CPU build (torch==2.13.0+cpu) included; an unpinned torch
# would pull a multi-GB CUDA build. `make lock` refreshes the lock; nothing else changes it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.statpair-installed
LOCK    = requirements.lock
EXTRAS  = worker,train,mlflow,registry,dev
# Where pip finds torch's CPU wheel when its own configuration does not (this machine's pip
# has it on disk): make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
INDEX   = $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# The unit tier: fakeredis and plain functions, no server started (tests/conftest.py marks
# every test that starts one `integration`).
FAST    = -m "not integration and not slow"
# Test processes (pytest-xdist): 2 on the 2-core machines the suite is timed on.
PYTEST_WORKERS ?= 2

.PHONY: demo bench test test-fast test-latest test-lowest lint install lock clean

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps $(INDEX) -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Refresh the lock to the newest versions the ranges in pyproject.toml allow (one package
# only: make lock LOCK_ARGS='--upgrade-package redis'). Then `make test`, and commit both.
LOCK_ARGS ?= --upgrade
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --all-extras --all-build-deps --generate-hashes --allow-unsafe \
	    --strip-extras --no-emit-index-url --no-emit-find-links $(INDEX) $(LOCK_ARGS) \
	    --output-file $(LOCK) pyproject.toml

demo: $(STAMP)
	$(BIN)/python -m bench demo

bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench e2e
	$(BIN)/python -m bench client

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(FAST) $(PYTEST_ARGS)

# The ranges users get, at both ends, each in a fresh venv beside .venv, the whole suite.
# Newest: what `pip install 'statpair[...]'` resolves today.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet $(INDEX) torch==2.13.0
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager $(INDEX) \
	    --editable '.[$(EXTRAS)]'
	.venv-latest/bin/python -m pip check
	.venv-latest/bin/python -m pip freeze --exclude-editable > .venv-latest/versions.txt
	STATPAIR_UNLOCKED=1 .venv-latest/bin/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Lowest: every direct dependency at the floor its range declares (uv's lowest-direct
# resolution; torch first, from pip, whose configuration finds the CPU wheel).
test-lowest: $(STAMP)
	rm -rf .venv-lowest && $(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install --quiet $(INDEX) torch==2.13.0
	$(BIN)/uv pip install --quiet --python .venv-lowest/bin/python --resolution lowest-direct \
	    --editable '.[$(EXTRAS)]'
	.venv-lowest/bin/python -m pip check
	.venv-lowest/bin/python -m pip freeze --exclude-editable > .venv-lowest/versions.txt
	STATPAIR_UNLOCKED=1 .venv-lowest/bin/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest .pytest_cache
