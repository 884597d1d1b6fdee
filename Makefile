# The project's verbs. `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false
export VLLM_LOGGING_LEVEL ?= WARNING

.PHONY: install demo test test-unit lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)

demo: install
	$(VENV)/bin/pope train --config configs/demo.yaml

test: install
	$(PY) -m pytest -q --durations=15 tests

test-unit: install
	$(PY) -m pytest -q -m unit tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# bench: every benchmark in bench/ at full size (8 to 15 min on a busy 2-core machine, and 3 to 8 more for the
# 256-token pipeline_long / trl_long pair), into bench/results.json;
# TRL (the peer of bench/trl_peer.py) and matplotlib (bench/plots/) come from the `bench` extra
bench: install
	$(PY) -c "import trl, matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) -m bench.run

clean:
	rm -rf runs .pytest_cache

# The v2 testbed (results/v2_preregistration.md): the base model (built once, ~90 min on 2 cores, cached),
# its gates (once, ~7 min; every gate must pass), then every method x seed and the pre-registered
# predictions (~45 min) -> RESULTS.md (top), results/v2_results.json, results/v2_hard_solved.png.
# `$(PY) scripts/reproduce_v2.py --quick --out /tmp/v2` is a plumbing check on the pilot model.
V2_GATES = runs/testbed_v2/gates/gates.json
.PHONY: reproduce reproduce-v2
reproduce reproduce-v2: install
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[reproduce]"
	test -f $(V2_GATES) || $(PY) scripts/testbed_v2_gates.py --model "$$($(PY) -m experiments.testbed_v2 build)" --out runs/testbed_v2/gates
	$(PY) scripts/reproduce_v2.py

# v1, the digit-chain testbed of issue D (about 50 min on 2 cores), kept as a documented negative result;
# writes its RESULTS.md block, results/*.png and the investigation's table (results/investigation.md).
.PHONY: reproduce-v1
reproduce-v1: install
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[reproduce]"
	$(PY) scripts/reproduce.py
	$(PY) scripts/investigate_testbed.py --runs runs/reproduce --out results/investigation.json > results/investigation.md
