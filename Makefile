# The two commands: `make run` (the main job) and `make test`. Each sets up .venv from requirements.txt.
SHELL := /bin/bash
PY := .venv/bin/python
REQ_HASH := $(shell sha1sum requirements.txt | cut -c1-12)
VENV := .venv/.installed-$(REQ_HASH)
export PYTHONHASHSEED := 0

.PHONY: run test setup corpora bench faults sinks clean

setup: $(VENV) corpora

$(VENV): requirements.txt
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt
	@rm -f .venv/.installed-*
	@touch $@

corpora: $(VENV) data/corpora/.done

data/corpora/.done: launch/get_corpora.py circuits/data/corpora.py
	$(PY) -m launch.get_corpora --out data/corpora

test: setup
	$(PY) -m pytest -q -n 2 --durations=15 tests

run: setup
	$(PY) -m launch.demo

clean:
	rm -rf .venv data
