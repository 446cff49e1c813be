# The two set-up commands of the README:
#   make dev    start labd on SQLite and the simulated cluster
#   make test   run the whole test suite (starts PostgreSQL if it is down; runs the
#               real-node tier where the machine allows: LABD_REALNODE=0 skips it)
# Both create .venv and install the project into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint format bench clean

$(STAMP): pyproject.toml tests/hub/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,jupyterhub]'
	if command -v npm >/dev/null; then npm ci --prefix tests/hub --no-audit --no-fund; \
	else echo "npm not found: the JupyterHub end-to-end tests will skip"; fi
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/labd dev

test: $(STAMP)
	./scripts/kube-apiserver/build || echo "real apiserver unavailable: tests/realk8s will be skipped"
	./scripts/ensure-registry || echo "docker-registry unavailable: tests/images registry tests will be skipped"
	./scripts/ensure-browser || echo "chromium or chromedriver unavailable: browser tests will be skipped"
	./scripts/ensure-haproxy || echo "haproxy unavailable: the replica tests behind a load balancer will be skipped"
	./scripts/ensure-postgres
	LABD_REALNODE=$${LABD_REALNODE-1} $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy labd tests migrations
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .ruff_cache
