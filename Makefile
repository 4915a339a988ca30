# Two commands set up and run everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.py
WORKDIR ?= runs/default
PYTEST_ARGS ?=
TEST_WORKERS ?= auto  # pytest-xdist processes (auto: one per core, at most 4); 0: this process

.PHONY: setup train train-ensemble eval test test-fast clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed  ## create .venv from requirements.txt when missing or stale

train: setup  ## train CONFIG end to end, then decode its validation split at its decoding
	$(PY) train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) eval.py --workdir=$(WORKDIR)

# Runs of CONFIG trained at once, the cores split among them (taskset where present), each under
# the time budget, sharing the first run's vocabulary; then eval.py decodes with all of them as
# one model at the config's decoding. Logs: $(ENSEMBLE_DIR)/seed*/train.log.
ENSEMBLE_DIR ?= runs/ensemble
ENSEMBLE_SEEDS ?= 0 2
ENSEMBLE_FLAGS ?= --config.time_budget_minutes=58 --config.checkpoint_every_steps=125
ENSEMBLE_EVAL ?=   # more eval.py flags, e.g. --split=test_2016_flickr
FIRST_SEED := $(firstword $(ENSEMBLE_SEEDS))
FIRST_DIR := $(ENSEMBLE_DIR)/seed$(FIRST_SEED)
comma := ,
space := $() $()
OTHER_DIRS := $(subst $(space),$(comma),$(strip \
    $(patsubst %,$(ENSEMBLE_DIR)/seed%,$(wordlist 2,99,$(ENSEMBLE_SEEDS)))))

train-ensemble: setup  ## train the runs of ENSEMBLE_SEEDS at once, then evaluate their ensemble
	$(PY) train.py --config=$(CONFIG) --workdir=$(FIRST_DIR) --config.seed=$(FIRST_SEED) \
	    $(ENSEMBLE_FLAGS) --prepare_only
	@n=$$(nproc); k=$(words $(ENSEMBLE_SEEDS)); i=0; pids=; \
	for s in $(ENSEMBLE_SEEDS); do \
	  d=$(ENSEMBLE_DIR)/seed$$s; mkdir -p $$d; \
	  test -e $$d/tokenizer.model || cp $(FIRST_DIR)/tokenizer.model $$d/; \
	  pin=; if command -v taskset > /dev/null && [ $$n -ge $$k ]; then \
	    pin="taskset -c $$((i * n / k))-$$(((i + 1) * n / k - 1))"; fi; \
	  echo "seed $$s: $$pin train.py ... > $$d/train.log"; \
	  $$pin $(PY) train.py --config=$(CONFIG) --workdir=$$d --config.seed=$$s \
	      $(ENSEMBLE_FLAGS) > $$d/train.log 2>&1 & pids="$$pids $$!"; i=$$((i + 1)); \
	done; \
	failed=0; for p in $$pids; do wait $$p || failed=1; done; \
	for s in $(ENSEMBLE_SEEDS); do tail -n 2 $(ENSEMBLE_DIR)/seed$$s/train.log; done; \
	if [ $$failed = 1 ]; then echo "error: a run failed; see its train.log (rerun to resume)"; \
	  exit 1; fi
	$(PY) eval.py --workdir=$(FIRST_DIR) --ensemble=$(OTHER_DIRS) $(ENSEMBLE_EVAL)

eval: setup
	$(PY) eval.py --workdir=$(WORKDIR) --split=test_2016_flickr

test: setup  ## lint and format check, then the whole suite (CI runs this)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses=4 $(PYTEST_ARGS) tests

test-fast: setup  ## lint and format check, then skip the slow end-to-end tests
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses=4 -m "not slow" $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV)
