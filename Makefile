# Two commands: `make demo` and `make test`. Both create .venv on first use.
# torch is installed first and pinned: on these machines `torch==2.13.0` is a
# local CPU wheel, while an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.statpair-installed

.PHONY: demo bench test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[worker,train,mlflow,dev]'
	touch $(STAMP)

install: $(STAMP)

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
