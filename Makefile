# The two commands: `make run` and `make test`. Everything else is optional.
# Every target installs from the lock (requirements/, see its README.md): the same versions everywhere.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/dev.txt

.PHONY: run test soak bench deploy-test schema lock clean reset

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "joblog needs Python 3.11 or newer: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

# The locked versions with their hashes, then joblog itself (editable, nothing more resolved).
$(VENV)/.installed: $(BIN)/python $(LOCK) pyproject.toml
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: $(VENV)/.installed
	$(BIN)/joblog dev

# Two test processes (pytest-xdist), a test file each at a time: most tests wait on servers, not the CPU.
# Every test has its own database, stream and subject prefix, so they never see each other.
TEST_JOBS ?= 2
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

# The chaos soak for minutes (docs/reliability.md); `make test` runs a short one.
SOAK_SECONDS ?= 300
soak: $(VENV)/.installed
	JOBLOG_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest tests/chaos -s -p no:cacheprovider $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python -m bench $(BENCH_ARGS)

# The compose deployment on a real Docker engine (root; installs and starts what it needs):
# tests/deploy/run.sh says what it does, README "Deployment" what it proves.
deploy-test: $(VENV)/.installed
	bash tests/deploy/run.sh $(PYTEST_ARGS)

# Regenerate the published event schema (docs/schema/) after changing services/contracts.
schema: $(VENV)/.installed
	$(BIN)/joblog schema

# Re-resolve the lock from pyproject.toml (after changing a dependency, or to take newer releases).
PIP_COMPILE = .venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links --upgrade
lock:
	test -x .venv-lock/bin/pip-compile || ($(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet pip-tools)
	$(PIP_COMPILE) --extra local --extra test --extra deploy --extra bench -o requirements/dev.txt pyproject.toml requirements/build.in
	$(PIP_COMPILE) --constraint requirements/dev.txt -o requirements/service.txt pyproject.toml requirements/build.in
	$(PYTHON) requirements/drop_self.py requirements/dev.txt requirements/service.txt

clean:
	rm -rf $(VENV) .venv-lock .pytest_cache

# Start the local stack (make run) from nothing: its NATS and Postgres data under .joblog/ go.
reset:
	@if [ -f .joblog/stack.env ] && kill -0 $$(sed -n 's/^JOBLOG_DEV_PID=//p' .joblog/stack.env) 2>/dev/null; then \
		echo "make reset: joblog dev is running; stop it first (Ctrl-C)"; exit 1; fi
	rm -rf .joblog
