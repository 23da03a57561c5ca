# The two commands: `make run` (the main job) and `make test`. Each sets up .venv from requirements.txt.
SHELL := /bin/bash
PY := .venv/bin/python
REQ_HASH := $(shell sha1sum requirements.txt | cut -c1-12)
VENV := .venv/.installed-$(REQ_HASH)
export PYTHONHASHSEED := 0

.PHONY: run test setup corpora demo bench sinks seeds device-check clean

setup: $(VENV) corpora

$(VENV): requirements.txt
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt
	@rm -f .venv/.installed-*
	@touch $@

corpora: $(VENV) data/corpora/.done

data/corpora/.done: launch/get_corpora.py circuits/data/corpora.py
	$(PY) -m launch.get_corpora --out data/corpora

test: setup
	$(PY) -m pytest -q -n 2 --durations=15 tests

run: setup
	$(PY) -m launch.study --config configs/study_laptop.py --workdir runs/laptop

# the parity figures of the three families against Hugging Face (a one-minute smoke run)
demo: setup
	$(PY) -m launch.demo

# benchmarks: tables on stdout, JSON in out/bench/
bench: setup
	$(PY) -m launch.bench

# sink mitigations: one family trained with each attention option, measured by the same instrument
sinks: setup
	$(PY) -m launch.study --config configs/study_sinks.py --workdir runs/sinks

# transitions with a spread: the laptop study's recipe per family over 5 seeds (model init and data order)
seeds: setup
	$(PY) -m launch.study --config configs/study_seeds.py --workdir runs/seeds

# on a GPU or TPU host: matmul peak, 1B train steps (tokens/s, MFU, memory), one discovery pass (< 10 min)
device-check: setup
	$(PY) -m launch.device_check --out device_check.json

clean:
	rm -rf .venv data
