# The README's two set-up commands: `make demo` and `make test`.
# Each creates the venv if missing, installs the pinned project, brings the services up
# (PostGIS, Redis, a Kafka broker), applies migrations, then runs its job.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test unit services migrate lint bench clean-venv prometheus

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

# promtool and a Prometheus server for the tests of deploy/prometheus (Debian's package; only
# installed when missing, and only where apt-get runs as root: elsewhere install it yourself).
prometheus:
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null || \
		  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; }; } || \
		echo "prometheus is not installed (apt-get install prometheus): its tests will fail"

# Four pytest-xdist workers even on two cores: integration tests mostly wait (on PostgreSQL's
# checkpoints, the broker, sockets). --dist loadfile keeps a file's tests on one worker, in
# order, with its module fixtures (one Faust worker for the stream tests, say).
test: migrate prometheus
	$(BIN)/ruff check .
	$(BIN)/pytest -n 4 --dist loadfile tests/unit tests/integration

# The inner loop: pure rules, parsers and generators; no service needed (under a minute).
# CPU-bound, so one worker per core; worksteal evens out the few long files.
unit: $(STAMP)
	$(BIN)/pytest -n auto --dist worksteal tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
