# hasup: two commands on a fresh Debian 12 machine: `make demo` and `make test`.
# The venv lives outside the work tree (and outside /root) so the unprivileged
# user that runs PostgreSQL in tests and the demo can execute it.
VENV ?= /opt/hasup-venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= /usr/bin/python3
PG_BIN := /usr/lib/postgresql/15/bin

.PHONY: all deps system-deps venv install lint unit integration test demo bench bench-deps bench-docs chaos clean

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

# Three at a time (they spend most of their time waiting out timeouts), then one after another what
# measures timings or uses host-wide resources, with the soak tests beside them on a second worker
# (tests/conftest.py SERIAL_FILES, SOAK_FILES).
test: install lint
	$(PY) -m pytest -q -p no:cacheprovider -n 3 --dist loadfile -m "not serial" tests
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup -m serial tests

demo: install
	$(PY) tools/demo.py

# Benchmarks: `make bench` runs every one that docs/benchmarks.md shows (hasup and, where the harness
# can run it, Patroni in the same run), then renders the docs from bench/results; each result records
# its commit, so run it on a committed tree. CHAOS=1 adds the long chaos runs. `make bench-docs` only
# renders. BENCH_RUNS: runs per failover fault; HANG_RUNS: per hang fault (3 keeps `make bench` near
# an hour on 2 cores, most of it the fixed pgbench and etcd-load windows).
BENCH_RUNS ?= 3
HANG_RUNS ?= 3
PGBENCH_MINUTES ?= 10
CHAOS ?=

bench-deps:
	@command -v wrk >/dev/null 2>&1 || { echo "installing: wrk"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

bench: install bench-deps
	$(PY) bench/failover.py --runs $(BENCH_RUNS)
	$(PY) bench/hangs.py --profile defaults --faults freeze_pg --runs $(HANG_RUNS) --supervisor all
	$(PY) bench/hangs.py --profile defaults --faults freeze_pg --runs $(HANG_RUNS) --sync
	$(PY) bench/hangs.py --profile tight --faults freeze_pg,freeze_tree --runs $(HANG_RUNS)
	$(PY) bench/hangs.py --profile defaults --pgbench-minutes $(PGBENCH_MINUTES)
	$(PY) bench/footprint.py
	$(PY) bench/etcd_load.py
	$(if $(CHAOS),$(MAKE) chaos VENV=$(VENV))
	$(MAKE) bench-docs VENV=$(VENV)

bench-docs: venv
	$(PY) bench/report.py
	$(PY) bench/etcd_load.py --render
	$(PY) bench/chaos.py --report

# The long chaos runs docs/chaos.md shows (about 55 minutes): one v2 etcd, 50 faults per replication
# mode; the 3-member TLS etcd3, 20 per mode; a cluster mid-migration (node1 Patroni), 20 in synchronous
# mode. Every run is made and the report rendered even when one fails; the exit status says whether all
# passed.
chaos: install
	@status=0; \
	$(PY) bench/chaos.py --mode both --faults 50 --seed 2026 || status=1; \
	$(PY) bench/chaos.py --etcd3 --mode both --faults 20 --seed 2026 || status=1; \
	$(PY) bench/chaos.py --mixed --mode sync --faults 20 --seed 2026 || status=1; \
	$(PY) bench/chaos.py --report; \
	exit $$status

clean:
	rm -rf build *.egg-info demo
