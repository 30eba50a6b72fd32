# TrustFleet — the two commands are `make demo` and `make test`; both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= var

.PHONY: setup demo test bench bench-history lint check clean

setup:
	@bash scripts/bootstrap.sh

demo: setup ## a live fleet on the embedded defaults: broker, SoftHSM rig, one ledger node, five trucks, dashboard
	$(VENV)/bin/trustfleet up --data $(DATA)

test: setup ## every test that can run here, with real Mosquitto, SoftHSM2 and SQLite
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup ## throughput and latency through the real broker into a real node (per-reading and batch-signed), device HSM signing, latency under a flood, contracts' cost, history at 1M entries, a consortium of 4 nodes and 3 etcd members against one node
	$(PY) -m ledger_node.bench $(BENCH_ARGS)
	$(PY) -m ledger_node.bench --batch 64 $(BENCH_ARGS)
	$(PY) -m edge_agent.bench $(AGENT_BENCH_ARGS)
	$(PY) -m edge_agent.bench_signing $(SIGNING_BENCH_ARGS)
	$(PY) -m ledger_node.bench_flood $(FLOOD_BENCH_ARGS)
	$(PY) -m ledger_node.bench_contracts $(CONTRACTS_BENCH_ARGS)
	$(PY) -m ledger_node.contracts.bench
	$(PY) -m ledger_node.bench_history --entries 1000000 --devices 100 --queries 200
	$(PY) -m ledger_node.bench_consortium $(CONSORTIUM_BENCH_ARGS)

bench-history: setup ## one device's day of history in a 10-million-entry chain (a few minutes)
	$(PY) -m ledger_node.bench_history $(HISTORY_BENCH_ARGS)

lint: setup ## ruff over everything, mypy over the packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy trustfleet hsm ledger_node edge_agent firmware_shims

check: lint test

clean:
	rm -rf $(DATA) .pytest_cache
