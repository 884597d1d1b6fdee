# The project's verbs. `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false
export VLLM_LOGGING_LEVEL ?= WARNING

.PHONY: install demo test test-unit lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)

demo: install
	$(VENV)/bin/pope train --config configs/demo_cpu.yaml

test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q -m unit tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# bench: every benchmark in bench/ at full size (8 to 15 min on a busy 2-core machine), into bench/results.json;
# TRL (the peer of bench/trl_peer.py) and matplotlib (bench/plots/) come from the `bench` extra
bench: install
	$(PY) -c "import trl, matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) -m bench.run

clean:
	rm -rf runs .pytest_cache

# The testbed experiments of issue D (about 50 min on 2 cores); writes RESULTS.md, results/*.png and the
# investigation's teacher-forced table (results/investigation.md).
# `$(PY) scripts/reproduce.py --quick` is a few-minute smoke run (report under runs/reproduce/).
.PHONY: reproduce
reproduce: install
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[reproduce]"
	$(PY) scripts/reproduce.py
	$(PY) scripts/investigate_testbed.py --runs runs/reproduce --out results/investigation.json > results/investigation.md

# The v2 testbed (issue H, results/v2_preregistration.md): base model, gates, every method x seed, the
# pre-registered predictions; `$(PY) scripts/reproduce_v2.py --quick --out /tmp/v2` is a plumbing check
# on the pilot model. Run only once the gates pass on the base model (the pre-registration says so).
.PHONY: reproduce-v2
reproduce-v2: install
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[reproduce]"
	$(PY) scripts/reproduce_v2.py
