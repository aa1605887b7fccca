# Haven's two commands:  make run   and   make test   (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PG_URL ?= postgres://postgres@127.0.0.1:5432/haven
TEST_REDIS_URL ?= redis://127.0.0.1:6379/13
# Each pass runs on TEST_WORKERS pytest-xdist workers (2: the suite mostly waits on agents,
# daphne, Chromium and the servers, which the other worker fills; 24 min against 41 in one
# process on the 2-core CI machine, docs/development.md). TEST_WORKERS=0 runs one process.
# Worker n uses the Redis database of TEST_REDIS_URL minus n (pass 1: 15 and 14, pass 2: 13
# and 12, so no pass meets the other's leftovers), and its own data directory below
# HAVEN_DATA_DIR (tests/support/servers.py).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS)$(if $(filter-out 0,$(TEST_WORKERS)), --dist worksteal)

.PHONY: run test lint audit format bench venv tools

run: venv  ## Run the portal, its worker and the scheduler in the foreground.
	@$(BIN)/python manage.py haven_run

test: venv tools  ## Lint, type-check and audit the dependencies, then the whole suite on embedded defaults and again on PostgreSQL + Redis + Azurite.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python scripts/dependency_audit.py
	@echo "== pass 1/2: embedded defaults (SQLite, filesystem broker, in-memory layer, local storage)"
	env -u DATABASE_URL -u REDIS_URL -u AZURE_STORAGE_CONNECTION_STRING \
	  HAVEN_REQUIRE_SERVERS=1 HAVEN_DATA_DIR=$(CURDIR)/var/test-embedded \
	  $(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS)
	@echo "== pass 2/2: PostgreSQL + Redis + Azurite"
	HAVEN_REQUIRE_SERVERS=1 HAVEN_DATA_DIR=$(CURDIR)/var/test-servers HAVEN_TEST_STORAGE=azurite \
	  DATABASE_URL=$(PG_URL) REDIS_URL=$(TEST_REDIS_URL) \
	  $(BIN)/pytest -q -m servers $(XDIST) $(PYTEST_ARGS)

lint: venv  ## ruff, the import contracts and mypy (the files it checks: [tool.mypy] in pyproject.toml).
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports && $(BIN)/mypy

audit: venv  ## pip-audit over the installed environment: fails on a known vulnerability that has a fixed release.
	$(BIN)/python scripts/dependency_audit.py

format: venv
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: venv tools
	$(BIN)/python -m bench

venv: $(VENV)/.installed

# Reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

tools: node_modules/.installed /usr/bin/chromium

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

/usr/bin/chromium:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-dejavu-core
