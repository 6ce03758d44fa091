# Set-up and everyday commands. Prerequisites: Python 3.11 and git; everything else comes from pip.

PYTHON ?= python3
VENV = .venv

.PHONY: demo test bench rdma dpdk nettools clean distclean

# The virtual environment with tickwire installed editable and the development tools; rebuilt when
# pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/tickwire demo

# pytest exits with 5 when it collected no tests: that is a failure here, not a pass.
# TICKWIRE_PREBUILD=1: the whole-appliance Verilator builds start in the background at once
# (tickwire.sim.prebuild, log in build/prebuild.log) and compile while single-threaded tests run.
test: $(VENV)/.installed dpdk nettools
	@rc=0; TICKWIRE_PREBUILD=1 $(VENV)/bin/python -m pytest -q --durations=30 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# Measures the appliance (Verilator: tick-to-trade, messages per cycle, native replay), the ECP5
# builds (board Fmax and utilization, the order book) and the host journal, and writes
# docs/benchmarks.md with a latency histogram. The ECP5 place-and-route results are cached in
# build/ by a hash of the design: a cold run builds the ECPIX-5 (30+ minutes on two cores), a
# warm one takes a few minutes. BENCH_FLAGS=--no-build uses only what is cached.
BENCH_FLAGS ?=
bench: $(VENV)/.installed
	$(VENV)/bin/python -m tickwire.sim.bench $(BENCH_FLAGS)

# pyverbs for the rdma driver: rdma-core's Debian package, linked into the virtual environment.
# Does nothing (and succeeds) where apt-get is missing or cannot install it; nothing else needs it.
rdma: $(VENV)/.installed
	@if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make rdma: no apt-get: the rdma driver stays unavailable" >&2; exit 0; fi; \
	if ! dpkg -s python3-pyverbs >/dev/null 2>&1; then \
	  { apt-get install -y python3-pyverbs || { apt-get update && apt-get install -y python3-pyverbs; }; } \
	    >/dev/null 2>&1 || { echo "make rdma: apt-get cannot install python3-pyverbs: the rdma driver stays unavailable" >&2; exit 0; }; fi; \
	site=$$($(VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	ln -sfn /usr/lib/python3/dist-packages/pyverbs "$$site/pyverbs"; \
	$(VENV)/bin/python -c "import pyverbs.device" && echo "make rdma: pyverbs importable from $(VENV)"

# DPDK (Debian's dpdk and libdpdk-dev, 22.11) for the dpdk driver, installed with apt-get when
# missing and running as root. Never fails: without it the dpdk tests skip and say why.
dpdk:
	@if pkg-config --exists libdpdk 2>/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make dpdk: DPDK is missing and this is not root with apt-get: the dpdk driver's tests skip" >&2; exit 0; fi; \
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y dpdk libdpdk-dev || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dpdk libdpdk-dev; }; } >/dev/null 2>&1 \
	  && echo "make dpdk: installed DPDK $$(pkg-config --modversion libdpdk)" \
	  || echo "make dpdk: apt-get cannot install dpdk libdpdk-dev: the dpdk driver's tests skip" >&2

# tcpdump and tshark for the TCP interop tests' capture checks (tests/sim/test_tcp_tap.py),
# installed with apt-get when missing and running as root. Never fails: without them those checks
# skip and say why.
nettools:
	@if command -v tcpdump >/dev/null 2>&1 && command -v tshark >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make nettools: tcpdump/tshark missing and this is not root with apt-get: capture checks skip" >&2; exit 0; fi; \
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y tcpdump tshark || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y tcpdump tshark; }; } >/dev/null 2>&1 \
	  && echo "make nettools: installed tcpdump and tshark" \
	  || echo "make nettools: apt-get cannot install tcpdump tshark: capture checks skip" >&2

# The ECPIX-5 bitstream with the open flow (yosys, nextpnr-ecp5, ecppack from PyPI) into
# build/boards/ecpix5, failing when timing is not met; and the KCU105 Vivado project. Slow: the
# ECP5 place and route takes many minutes on two cores.
bitstream: $(VENV)/.installed
	$(VENV)/bin/tickwire -v build --board ecpix5 --out build/boards/ecpix5
	$(VENV)/bin/tickwire -v build --board kcu105 --out build/boards/kcu105

# Build outputs and caches; the virtual environment stays (see distclean).
clean:
	rm -rf build .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
