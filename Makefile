# The two entry points of a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(CURDIR)/.virtvol-state
# TCP port of `make run` (make run PORT=16510 when 16509 is taken).
PORT ?= 16509

.PHONY: setup peers run test lint typecheck unit bench clean

# The real libvirt 9.0 peers of the interop tests (Debian packages).
PEER_PACKAGES := libvirt-clients libvirt-daemon python3-libvirt tshark libvirt-wireshark systemd procps
PEER_TOOLS := virsh libvirtd tshark systemd-analyze systemd-socket-activate

# A strict editable install links each module file: reinstall when modules come or go.
PACKAGE_FILES := $(wildcard protocol/*.py sparse/*.py client/*.py daemon/*.py daemon/*/*.py)

$(BIN)/virtvold: pyproject.toml $(PACKAGE_FILES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict
	touch $@

setup: $(BIN)/virtvold

# A directory pool "default" under a local state dir, loopback TCP and a Unix socket.
run: setup
	$(BIN)/virtvold --state-dir $(STATE_DIR) --pool default=$(STATE_DIR)/pools/default \
		--listen tcp://127.0.0.1:$(PORT) --listen unix://$(STATE_DIR)/virtvold-sock

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

# Install the peers when one is missing (needs root, as the interop tests do).
peers:
	@missing=0; \
	for tool in $(PEER_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	/usr/bin/python3 -c 'import libvirt' 2>/dev/null || missing=1; [ -x /bin/kill ] || missing=1; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "the tests need root and: apt-get install --no-install-recommends $(PEER_PACKAGES)" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing $(PEER_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(PEER_PACKAGES) >/dev/null; \
	fi

test: peers lint typecheck unit

# The NBD peers of the benchmark (Debian packages), installed when missing.
BENCH_PACKAGES := nbdkit libnbd-bin
# make bench BENCH_ARGS=--quick for a short run.
BENCH_ARGS ?=

bench: setup peers
	@if ! command -v nbdkit >/dev/null || ! command -v nbdcopy >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "the benchmark needs root and: apt-get install --no-install-recommends $(BENCH_PACKAGES)" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing $(BENCH_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    -o DPkg::Lock::Timeout=600 --no-install-recommends $(BENCH_PACKAGES) >/dev/null; \
	fi
	$(BIN)/python -m bench.transfer $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
