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

# Placeholder: compiles the example tenant (the full demo comes later).
demo: setup
	@mkdir -p .cache/demo
	$(BIN)/tenantflow compile tenants/acme/workflow.py -o .cache/demo/acme.wasm

# Placeholder: benchmarks land in bench/.
bench: setup
	@echo "no benchmarks yet"

clean:
	rm -rf $(VENV) .cache build dist .pytest_cache .mypy_cache .ruff_cache
