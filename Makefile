# The README's two set-up commands: `make demo` and `make test`.
# Each creates the venv if missing, installs the pinned project, brings the services up
# (PostGIS, Redis, a Kafka broker), applies migrations, then runs its job.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test unit services migrate lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

services: $(STAMP)
	$(BIN)/wakala services up

migrate: services
	$(BIN)/wakala migrate

demo: migrate
	$(BIN)/wakala demo

test: migrate
	$(BIN)/ruff check .
	$(BIN)/pytest tests/unit tests/integration

# The inner loop: pure rules, parsers and generators; no service needed (under a minute).
unit: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
