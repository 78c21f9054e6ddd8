# hasup: two commands on a fresh Debian 12 machine: `make demo` and `make test`.
# The venv lives outside the work tree (and outside /root) so the unprivileged
# user that runs PostgreSQL in tests and the demo can execute it.
VENV ?= /opt/hasup-venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= /usr/bin/python3
PG_BIN := /usr/lib/postgresql/15/bin

.PHONY: all deps system-deps venv install lint unit integration test demo bench clean

all: test

system-deps:
	@missing=""; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	[ -x $(PG_BIN)/postgres ] || missing="$$missing postgresql-15"; \
	$(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v ps >/dev/null 2>&1 || missing="$$missing procps"; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	command -v setpriv >/dev/null 2>&1 || missing="$$missing util-linux"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.deps: setup.cfg pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q '.[test]'
	touch $@

venv: $(VENV)/.deps

# Installed as a copy (not editable): the test user may not be able to read the work tree.
install: system-deps venv
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	chmod -R a+rX $(VENV)

lint: venv
	$(VENV)/bin/ruff check hasup tests bench tools
	$(VENV)/bin/mypy hasup

unit: install
	$(PY) -m pytest -q tests/unit

test: install lint
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: install
	$(PY) tools/demo.py

bench: install
	$(PY) bench/failover.py

clean:
	rm -rf build *.egg-info demo
