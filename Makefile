# Two commands do all set-up on a fresh machine: `make demo` (main job) and `make test`.
# Both create or update the local virtual environment .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test,deploy]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/secure-afl run --out results/demo.json --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install -e '.[bench]'
	$(BIN)/python benchmarks/afl_partitions.py
	$(BIN)/python benchmarks/server_cost.py
	$(BIN)/python benchmarks/gamma_selection.py
	$(BIN)/python benchmarks/extraction_throughput.py
	$(BIN)/python benchmarks/masking_cost.py
	$(BIN)/python benchmarks/he_cost.py
	$(BIN)/python benchmarks/accuracy_table.py
	$(BIN)/python benchmarks/time_to_accuracy.py
	$(BIN)/python benchmarks/active_security_cost.py
	$(BIN)/python benchmarks/attack_sweep.py
	$(BIN)/python benchmarks/dp_statistics.py
	$(BIN)/python benchmarks/membership.py
	$(BIN)/python benchmarks/ledger_cost.py
	$(BIN)/python benchmarks/privacy_grid.py
	$(BIN)/python benchmarks/privacy_report.py
	$(BIN)/python benchmarks/head_selection.py
	$(BIN)/python benchmarks/deepafl_speed.py
	$(BIN)/python benchmarks/gradient_inversion.py
	$(BIN)/python benchmarks/readme_figures.py
