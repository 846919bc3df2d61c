# The two entry points of a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(CURDIR)/.virtvol-state

.PHONY: setup run test lint typecheck unit bench clean

# A strict editable install links each module file: reinstall when modules come or go.
PACKAGE_FILES := $(wildcard protocol/*.py client/*.py daemon/*.py daemon/*/*.py)

$(BIN)/virtvold: pyproject.toml $(PACKAGE_FILES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict
	touch $@

setup: $(BIN)/virtvold

# A directory pool "default" under a local state dir, loopback TCP and a Unix socket.
run: setup
	$(BIN)/virtvold --state-dir $(STATE_DIR) --pool default=$(STATE_DIR)/pools/default \
		--listen tcp://127.0.0.1:16509 --listen unix://$(STATE_DIR)/virtvold-sock

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

test: lint typecheck unit

bench: setup
	$(BIN)/python -m bench.transfer

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
