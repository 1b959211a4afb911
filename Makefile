# How to work on the portal. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The embedded default: SQLite, local encrypted objects, tasks in-process, e-mail to the console.
EMBEDDED := DJANGO_DEBUG=true
# mypy with django-stubs on the modules CONVENTIONS.md names, and the other security code.
TYPED_MODULES := $(wildcard */services.py */selectors.py */access.py */decision.py */crypto.py */dicom.py) \
	portal/env.py sharing/store.py audit/chain.py

.PHONY: help install run demo test pytest lint format typecheck migrations-check collectstatic clean

help:
	@echo "make run               serve the site at http://$(HOST):$(PORT) with demo data (no set-up)"
	@echo "make test              lint, type-check and run every test against the real stack"
	@echo "make lint | format | typecheck | migrations-check"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	$(EMBEDDED) $(BIN)/python manage.py migrate --no-input -v0
	$(EMBEDDED) $(BIN)/python manage.py collectstatic --no-input -v0
	$(EMBEDDED) $(BIN)/python manage.py load_demo
	$(EMBEDDED) $(BIN)/python manage.py runserver --noreload $(HOST):$(PORT)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(EMBEDDED) $(BIN)/mypy $(TYPED_MODULES)

migrations-check: install
	$(EMBEDDED) PORTAL_VAR_DIR=$$(mktemp -d) $(BIN)/python manage.py makemigrations --check --dry-run

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
