# The two commands of the README: `make run` and `make test` do all the set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
# The scale-out half of the suite (PostgreSQL + Redis on this machine by default).
SCALEOUT_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/claudesvc
SCALEOUT_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install upgrade run test test-embedded test-scaleout lint format bench clean

UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv

# Exactly the locked set (uv.lock: every package, transitive ones included, with hashes).
$(VENV)/.installed: pyproject.toml uv.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q 'uv==$(UV_VERSION)'
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev
	touch $@

install: $(VENV)/.installed
	./scripts/system-deps

# Refresh the lock to the newest versions pyproject.toml allows, install them, run the suite.
upgrade:
	test -x $(UV) || $(MAKE) install
	$(UV) lock --upgrade
	$(MAKE) test

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

test: install
	./scripts/system-deps --test
	$(MAKE) test-embedded
	$(MAKE) test-scaleout

test-embedded: install
	env -u DATABASE_URL -u REDIS_URL CLAUDESVC_VAR_DIR=$(CURDIR)/var/test-embedded $(PY) -m pytest $(PYTEST_ARGS)

test-scaleout: install
	DATABASE_URL=$(SCALEOUT_DATABASE_URL) REDIS_URL=$(SCALEOUT_REDIS_URL) Q_CLUSTER_NAME=claudesvc-test \
	  CLAUDESVC_VAR_DIR=$(CURDIR)/var/test-scaleout $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/upload_memory.py

clean:
	rm -rf $(VENV) var
