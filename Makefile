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
TYPED_MODULES := $(filter-out bench/%,$(wildcard */services.py */selectors.py */access.py */decision.py */crypto.py */dicom.py)) \
	portal/env.py sharing/store.py audit/chain.py accounts/sealing.py studies/spool.py \
	studies/scp.py studies/dicomweb.py studies/media.py sharing/keys.py sharing/tasks.py \
	sharing/links.py sharing/frames.py sharing/archive.py

.PHONY: help install run test system-packages lint format typecheck migrations-check clean

help:
	@echo "make run               serve the site at http://$(HOST):$(PORT) with demo data (no set-up)"
	@echo "make test              lint, type-check and run every test against the real stack"
	@echo "make stack-up          start the real stack and write var/stack.env (make stack-down stops it)"
	@echo "make bench-ingest      ingest speed against Orthanc (bench/README.md); make bench-crypto"
	@echo "make bench-publish | bench-render | bench-download   the other benchmarks (bench/README.md)"
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
	var_dir=$$(mktemp -d) && trap 'rm -rf "$$var_dir"' EXIT && \
	$(EMBEDDED) DATABASE_URL= PORTAL_VAR_DIR=$$var_dir $(BIN)/python manage.py makemigrations --check --dry-run

# Every test runs against the real services (PostgreSQL, Redis, SeaweedFS S3, an SMTP sink) that
# scripts/stack.py provides; `make test PYTEST_ARGS=tests/sharing` runs a part of the suite.
test: install lint typecheck migrations-check system-packages
	$(BIN)/python scripts/stack.py run -- bash -c \
		'$(BIN)/python manage.py collectstatic --no-input -v0 && $(BIN)/pytest $(PYTEST_ARGS)'

# Tests drive real peers from Debian: chromium (browser tests), dcmtk's storescu and dcmsend, and
# Orthanc with its DICOMweb plugin (interoperability). Install what is missing (CI runs as root).
SYSTEM_PACKAGES := chromium dcmtk orthanc orthanc-dicomweb
SYSTEM_PROGRAMS := /usr/bin/chromium /usr/bin/storescu /usr/bin/dcmsend /usr/sbin/Orthanc \
	/usr/share/orthanc/plugins/libOrthancDicomWeb.so
system-packages:
	@missing=$$(for f in $(SYSTEM_PROGRAMS); do test -e $$f || echo $$f; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "Tests need Debian's $(SYSTEM_PACKAGES): sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi

# The same services left running: `make stack-up`, then `source var/stack.env` and run
# `$(BIN)/pytest tests/...` as often as you like; `make stack-down` when done.
# Benchmarks (bench/README.md): against Orthanc, on the real stack; never part of `make test`.
.PHONY: bench-ingest bench-crypto bench-render bench-download bench-publish
bench-ingest: install system-packages
	$(BIN)/python scripts/stack.py run -- $(BIN)/python -m bench.ingest

bench-crypto: install
	$(BIN)/python bench/crypto.py

# First-frame render time of the viewer (gunicorn, from the encrypted store) against Orthanc's.
bench-render: install system-packages
	$(BIN)/python scripts/stack.py run -- $(BIN)/python -m bench.render

# Zip download of a study through gunicorn: MB/s, the web process's memory (also for 2 GiB), and
# how many bytes still arrive after consent is withdrawn; Orthanc's /media for reference.
bench-download: install system-packages
	$(BIN)/python scripts/stack.py run -- $(BIN)/python -m bench.download

# Publishing (spool -> encrypted objects in SeaweedFS) with one real Celery worker, vs ingest.
bench-publish: install
	$(BIN)/python scripts/stack.py run -- $(BIN)/python -m bench.publish

.PHONY: stack-up stack-down
stack-up: install
	$(BIN)/python scripts/stack.py up
	source var/stack.env && $(BIN)/python manage.py collectstatic --no-input -v0

stack-down:
	$(BIN)/python scripts/stack.py down

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
