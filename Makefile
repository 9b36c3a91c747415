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

.PHONY: install run test test-embedded test-scaleout lint format bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
	./scripts/system-deps

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

test: install
	./scripts/system-deps --test
	$(MAKE) test-embedded
	$(MAKE) test-scaleout

test-embedded:
	env -u DATABASE_URL -u REDIS_URL CLAUDESVC_VAR_DIR=$(CURDIR)/var/test-embedded $(PY) -m pytest $(PYTEST_ARGS)

test-scaleout:
	DATABASE_URL=$(SCALEOUT_DATABASE_URL) REDIS_URL=$(SCALEOUT_REDIS_URL) Q_CLUSTER_NAME=claudesvc-test \
	  CLAUDESVC_VAR_DIR=$(CURDIR)/var/test-scaleout $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/upload_memory.py

clean:
	rm -rf $(VENV) var
