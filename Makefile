VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-sqlite test-postgresql clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and alone, so that nothing else can pick a different build of it.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: install
	$(BIN)/tunedock serve --demo

test: install
	# The console tests drive Debian's chromium; Playwright's own browser download is not used.
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python -m pytest
	# The same suite again with every server on its own PostgreSQL database
	# (TUNEDOCK_TEST_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test).
	TUNEDOCK_TEST_DATABASE=postgresql $(BIN)/python -m pytest

test-sqlite: install
	$(BIN)/python -m pytest

test-postgresql: install
	TUNEDOCK_TEST_DATABASE=postgresql $(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
