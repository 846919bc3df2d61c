# The two entry points of a fresh machine: `make run` and `make test`.
# The interpreter of the virtual environments (setup and install): the system's CPython 3.11
# where it can make one (Debian's python3.11 with python3.11-venv), else the first python3
# on PATH. Debian builds it with profile-guided and link-time optimisation: a third less CPU
# for the same Python code than a plain build from source (docs/performance.md), and
# python3-rbd and python3-rados are built for it.
SYSTEM_PYTHON := /usr/bin/python3.11
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null && echo $(SYSTEM_PYTHON) || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(CURDIR)/.virtvol-state
# TCP port of `make run` (make run PORT=16510 when 16509 is taken).
PORT ?= 16509

.PHONY: setup FORCE ceph-binding peers run test lint typecheck unit bench bench-rbd clean install

# The real libvirt 9.0 peers of the interop tests (Debian packages).
PEER_PACKAGES := libvirt-clients libvirt-daemon python3-libvirt tshark libvirt-wireshark systemd procps \
	ceph-mon ceph-osd ceph-common python3-rbd python3-rados xfsprogs btrfs-progs
PEER_TOOLS := virsh libvirtd tshark systemd-analyze systemd-socket-activate \
	ceph-mon ceph-osd ceph rbd monmaptool ceph-authtool mkfs.xfs mkfs.btrfs
# Ceph's Python binding (rbd pools) exists only as Debian's python3-rbd / python3-rados,
# built for the system's CPython; setup links just those modules into the venv.
CEPH_MODULES := rados rbd
CEPH_PY_DIR ?= /usr/lib/python3/dist-packages

# A strict editable install links each module file: reinstall when modules come or go.
PACKAGE_FILES := $(wildcard protocol/*.py sparse/*.py client/*.py daemon/*.py daemon/*/*.py)

# The interpreter an environment was made with, recorded in it: one made by another
# interpreter than $(PYTHON) (the default, or PYTHON= given) is made again.
INTERPRETER_ID := import sys; print(sys.base_prefix, sys.version)
INTERPRETER_RECORD := $(VENV)/made-with

$(INTERPRETER_RECORD): FORCE
	@want="$$($(PYTHON) -c '$(INTERPRETER_ID)')" && [ -n "$$want" ] || \
	  { echo "$(PYTHON) does not run: $(VENV) is left as it is" >&2; exit 1; }; \
	if [ "$$(cat $@ 2>/dev/null)" != "$$want" ]; then \
	  [ ! -e $(VENV) ] || echo "$(VENV) is made again with $(PYTHON)"; \
	  rm -rf $(VENV); mkdir -p $(VENV); printf '%s\n' "$$want" > $@; \
	fi

FORCE:

# Python 3.11's venv brings setuptools, whose start-up hook (distutils-precedence.pth)
# runs in every start of the environment's Python: ~0.5 ms of each virtvol command
# (docs/performance.md). Nothing needs it installed: pip builds in an environment of its own.
define drop_setuptools
	@if $(1)/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("setuptools") is None)'; \
	then $(1)/pip uninstall -q -y setuptools; fi
endef

$(BIN)/virtvold: $(INTERPRETER_RECORD) pyproject.toml $(PACKAGE_FILES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict
	$(call drop_setuptools,$(BIN))
	@# Byte-code now, as an installed package has it: where PYTHONDONTWRITEBYTECODE is set,
	@# every virtvol command would otherwise compile its modules anew (~50 ms a start).
	$(BIN)/python -m compileall -q $$($(BIN)/python -c 'import virtvol; print(*virtvol.__path__)') >/dev/null
	touch $@

# Link rados/rbd into the venv when Debian's packages are there and match its Python.
ceph-binding: $(BIN)/virtvold
	@site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])'); \
	suffix=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'); \
	for module in $(CEPH_MODULES); do \
	  if [ -e $(CEPH_PY_DIR)/$$module$$suffix ]; then \
	    ln -sfn $(CEPH_PY_DIR)/$$module$$suffix $$site/$$module$$suffix; \
	  fi; \
	done

setup: $(BIN)/virtvold ceph-binding

# A directory pool "default" under a local state dir, loopback TCP and a Unix socket.
# Plain TCP has no authentication: virtvold opens it only when told (--auth-tcp none).
# A second `make run` in the same clone needs its own PORT= and STATE_DIR=.
run: setup
	@echo "make run: plain TCP on 127.0.0.1:$(PORT) without authentication (--auth-tcp none)," \
		"for this loopback demo; every local user can use it"
	@$(BIN)/virtvold --state-dir $(STATE_DIR) --pool default=$(STATE_DIR)/pools/default \
		--auth-tcp none --listen tcp://127.0.0.1:$(PORT) \
		--listen unix://$(STATE_DIR)/virtvold-sock \
	|| { code=$$?; [ $$code != 1 ] || echo "make run: virtvold did not start. When another" \
		"make run holds the port or the socket, give this one its own:" \
		"make run PORT=$$(($(PORT) + 1)) STATE_DIR=$(STATE_DIR)-2" >&2; exit $$code; }

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# The whole suite under branch coverage, with every virtvold and virtvol the tests start
# (coverage's subprocess patch, see [tool.coverage] in pyproject.toml): the floor
# (fail_under) for the tree, and 100% for the protocol core.
# TEST_WORKERS: pytest-xdist workers. Most tests wait on daemons and peers, so two keep a
# two-vCPU machine busy (the suite's wall time nearly halves).
TEST_WORKERS ?= 2
unit: setup
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest --numprocesses $(TEST_WORKERS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report
	$(BIN)/coverage report --include='protocol/*' --fail-under=100

# Install the peers when one is missing (needs root, as the interop tests do).
peers:
	@missing=0; \
	for tool in $(PEER_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	/usr/bin/python3 -c 'import libvirt' 2>/dev/null || missing=1; [ -x /bin/kill ] || missing=1; \
	/usr/bin/python3 -c 'import rados, rbd' 2>/dev/null || missing=1; \
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

# rbd pool transfers against rbd import/export, on a throwaway Ceph cluster.
bench-rbd: setup
	$(BIN)/python -m bench.rbd

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*

# `make install` (as root): virtvold and virtvol in a virtual environment of their own
# under PREFIX (Debian 12 refuses `pip install` into the system's Python), the systemd
# units with ExecStart= and Documentation= pointing there, the docs, and the example
# config as /etc/virtvol/virtvold.toml unless that file exists. DESTDIR= stages the
# whole tree elsewhere (scripts then name PREFIX, where the tree is meant to end up).
PREFIX ?= /opt/virtvol
DESTDIR ?=
UNITDIR ?= /etc/systemd/system
UNIT_FILES := virtvold.service virtvold.socket virtvold-ro.socket virtvold-tcp.socket
STAGED := $(DESTDIR)$(PREFIX)

install:
	@# An environment an earlier install made with another interpreter is made again: its
	@# own parts only, as PREFIX may hold more (venv --clear would empty the directory).
	@want="$$($(PYTHON) -c '$(INTERPRETER_ID)')" && [ -n "$$want" ] || exit 1; \
	if [ -e $(STAGED)/pyvenv.cfg ] && [ "$$(cat $(STAGED)/made-with 2>/dev/null)" != "$$want" ]; then \
	  rm -rf $(STAGED)/bin $(STAGED)/include $(STAGED)/lib $(STAGED)/lib64 $(STAGED)/pyvenv.cfg; \
	fi
	$(PYTHON) -m venv $(STAGED)
	$(PYTHON) -c '$(INTERPRETER_ID)' > $(STAGED)/made-with
	$(STAGED)/bin/pip install -q --disable-pip-version-check .
	$(call drop_setuptools,$(STAGED)/bin)
	@if [ -n "$(DESTDIR)" ]; then \
	  grep -rlF "$(STAGED)" $(STAGED)/bin $(STAGED)/pyvenv.cfg | \
	    xargs -r sed -i "s|$(STAGED)|$(PREFIX)|g"; \
	fi
	install -d $(DESTDIR)$(UNITDIR) $(STAGED)/share/doc/virtvol $(DESTDIR)/etc/virtvol
	for unit in $(UNIT_FILES); do \
	  sed "s|/opt/virtvol/|$(PREFIX)/|g" systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit; \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$unit; \
	done
	install -m 644 README.md docs/*.md examples/virtvold.toml $(STAGED)/share/doc/virtvol/
	[ -e $(DESTDIR)/etc/virtvol/virtvold.toml ] || \
	  install -m 644 examples/virtvold.toml $(DESTDIR)/etc/virtvol/virtvold.toml
	@echo "installed $(PREFIX)/bin/virtvold and virtvol; next, as root:"
	@echo "  systemctl daemon-reload"
	@echo "  systemctl disable --now virtstoraged.socket virtstoraged-ro.socket virtstoraged-admin.socket"
	@echo "  systemctl enable --now virtvold.socket virtvold-ro.socket"
