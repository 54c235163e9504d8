# The two commands: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test soak bench schema clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "joblog needs Python 3.11 or newer: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-%: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[$*]'
	touch $@

run: $(VENV)/.installed-local
	$(BIN)/joblog dev

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The chaos soak for minutes (docs/reliability.md); `make test` runs a short one.
SOAK_SECONDS ?= 300
soak: $(VENV)/.installed-test
	JOBLOG_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest tests/chaos -s -p no:cacheprovider $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerate the published event schema (docs/schema/) after changing services/contracts.
schema: $(VENV)/.installed-local
	$(BIN)/joblog schema

clean:
	rm -rf $(VENV) .pytest_cache
