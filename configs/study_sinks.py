"""Sink mitigations: one family trained with each attention option on the laptop study's data.

  make sinks    (= python -m launch.study --config configs/study_sinks.py --workdir runs/sinks)

Every run is the laptop study's `FAMILY` recipe (configs/study_laptop.py) with one attention option of
circuits.models.attention (softmax, softmax1, sink_logit, gated, sigmoid); nothing else changes (tested:
tests/test_attention_variants.py). The same pipeline trains, sweeps and reports: whether and when
first-token sinks form, whether and when the induction circuit forms, final loss and step time.
"""

from circuits.models.config import ATTENTION_KINDS
from configs.study_laptop import study_config

FAMILY = "olmo"
STEPS = 1500  # five runs on two cores: shorter than the laptop study (sinks form within a few hundred steps)


def get_config(arg: str = ""):
  c = study_config()
  c.name = "sinks"
  recipe = dict(c.families[FAMILY].to_dict(), steps=STEPS)
  runs = {f"{FAMILY}_{kind}": dict(recipe, family=FAMILY, attention=kind) for kind in ATTENTION_KINDS}
  import ml_collections
  c.families = ml_collections.ConfigDict(runs)
  c.family_order = tuple(runs)
  c.sweep.n_seeds = 20
  c.sweep.probes = ("combined",)  # the in-distribution probe (with ablations); the synthetic one is optional
  # the spans this comparison was measured with (README, 2026-12-02); the laptop study uses 16..28 since then
  c.data.synthetic.span_min, c.data.synthetic.span_max = 12, 24
  if not arg:
    return c
  from circuits import study
  return study.run_config(c, arg)
