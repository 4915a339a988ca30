# Two commands set up and run everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.py
WORKDIR ?= runs/default
PYTEST_ARGS ?=
TEST_WORKERS ?= auto  # pytest-xdist processes (auto: one per core, at most 4); 0: this process

.PHONY: setup train eval test test-fast clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed  ## create .venv from requirements.txt when missing or stale

train: setup  ## train the default config end to end, then evaluate it on the validation split
	$(PY) train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) eval.py --workdir=$(WORKDIR) --split=val

eval: setup
	$(PY) eval.py --workdir=$(WORKDIR) --split=test_2016_flickr

test: setup  ## the whole suite (CI runs this)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses=4 $(PYTEST_ARGS) tests

test-fast: setup  ## skip the slow end-to-end tests
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses=4 -m "not slow" $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV)
