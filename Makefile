# Surge: `make run` starts everything, `make test` checks everything. Both set up what they
# need first (venv, requirements, PostgreSQL and Redis: see config/devservices.py).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVICES := $(PY) -m config.devservices

# Settings from a local .env (git-ignored; see .env.example), exported to every command.
ifneq (,$(wildcard .env))
include .env
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' .env)
endif

# The browser tests (tests/browser/) drive Debian's Chromium; Playwright never downloads one.
CHROMIUM := /usr/bin/chromium
BROWSER_NOT_RUN := WARNING: browser tests did not run: $(CHROMIUM) is missing (install Debian's \
	chromium package, e.g. apt-get install chromium; make test does it when run as root)

.PHONY: run test lint format bench services down clean help chromium

help:
	@echo "make run    - set up and start every process of the Procfile, with demo data"
	@echo "make test   - set up and run lint + every test (what CI runs)"
	@echo "make lint   - ruff check, ruff format --check, mypy"
	@echo "make bench  - run the benchmarks against the real stack"
	@echo "make down   - stop the private PostgreSQL/Redis under .run/"

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(SERVICES) exec -- $(PY) -m config.devrun

test: $(STAMP) chromium
	@# Whatever the outcome, the last line says so when the browser tests could not run
	@# (the harness skips them with the same reason: they never count as passed).
	@status=0; $(SERVICES) exec -- $(MAKE) --no-print-directory lint pytest || status=$$?; \
		test -x $(CHROMIUM) || echo "$(BROWSER_NOT_RUN)"; exit $$status

# As root with apt, install Debian's chromium when it is missing (like wrk for bench).
chromium:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { echo "test: installing Debian's chromium for the browser tests"; \
		     apt-get install -y -qq chromium >/dev/null 2>&1 \
		     || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } \
		|| true

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	@# wrk is the load generator the recorded figures use; as root with apt, install it.
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get install -y -qq wrk >/dev/null 2>&1 \
		     || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; }; }; } \
		|| echo "bench: wrk not found; using the slower asyncio load generator (ratios differ)"
	$(SERVICES) exec -- $(PY) -m bench $(BENCH_ARGS)

services: $(STAMP)
	$(SERVICES) up

down: $(STAMP)
	$(SERVICES) down

clean: down
	rm -rf $(VENV) .run staticfiles .pytest_cache .mypy_cache .ruff_cache tests/browser/artifacts
