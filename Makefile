# One-command entry points. `make test` on a fresh machine sets everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy runtime/tenantflow

# Compiles acme's order-approval workflow and runs one order durably on a SQLite file,
# sleeps fast-forwarded, the manager's approval sent as an event; ends with the timeline.
DEMO := .cache/demo
demo: setup
	@mkdir -p $(DEMO)
	$(BIN)/tenantflow compile tenants/acme/workflow.py -o $(DEMO)/acme.wasm
	@rm -f $(DEMO)/demo.db $(DEMO)/demo.db-wal $(DEMO)/demo.db-shm
	$(BIN)/tenantflow run $(DEMO)/acme.wasm --db $(DEMO)/demo.db --tenant acme \
		--workflow order-approval --id order-1001 --fast-forward \
		--params '{"order_id": "1001", "items": [{"sku": "desk", "price": 850, "qty": 1}, {"sku": "lamp", "price": 90, "qty": 2}]}' \
		--event 'approval={"approved": true, "by": "dana@acme.example"}'

# tenantflow's benchmark suite, then the peers (DBOS, Temporal, Restate) in the same run, then
# sequential and one-step latency interleaved with DBOS and Restate (bench/interleaved.py), then
# BENCHMARKS.md and the plots (~45 min on 2 cores). `make bench BENCH_ARGS=--quick` for a smoke
# run (results under bench/results/*-quick.*). matplotlib and py-spy go into the repo venv for
# the bench only (not tenantflow dependencies); the peers get their own venv (bench/peers/).
BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'matplotlib>=3.8' 'py-spy>=0.3.14'
	bash bench/peers/setup.sh
	$(BIN)/python bench/run.py --via "make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache build dist .pytest_cache .mypy_cache .ruff_cache
