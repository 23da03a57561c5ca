"""Transitions with a spread: the laptop study's recipe for each family over several seeds.

  make seeds    (= python -m launch.study --config configs/study_seeds.py --workdir runs/seeds)

Every run is the laptop study's recipe for its family (configs/study_laptop.py, imported, not copied) with one
replicate's seeds; nothing else of the recipe changes. Replicate i of family F is the run `F_s<i>` with
  seed       = MODEL_SEEDS[i]   the model's initialisation (nnx.Rngs, and the trainer's PRNG key)
  data_seed  = DATA_SEEDS[i]    the training rows (another draw of the same task, so another data order): one
                                token cache per data seed (<workdir>/cache_data<seed>), the combined task's
                                generator seeded with it
The task itself (the Bigram-Backcopy table, data.synthetic.table_seed), the probes and the held-out rows stay
the same in every run: one task, one instrument. Replicate 0 (model 0, data 0) has the laptop study's seeds
and training rows (its checkpoints are denser: CHECKPOINT_EVERY).

The same resumable pipeline (data -> train -> sweep -> metrics -> report) runs them, in parallel processes
pinned to the cores (the `parallel` section). The report adds, per family and marker, how many seeds reached
it with the median and range of its step, the sink-minus-induction gap per seed, a figure of every seed's
trajectory with the median, whether "sink first" holds in every seed, which families form induction in every
seed, and the PR lead (the paper's F5) per head, seed and family (circuits/study/seeds.py).

Choices that moved a result in the pilots (PILOTS.md, README), stated here and printed by the report
(`pilot_choices`): the span lengths, the seeds, the query/key initialisation, the step budget, the batch, the
task, the depth and the checkpoint spacing (the markers' resolution).
"""

import ml_collections

from configs.study_laptop import FAMILIES, study_config

MODEL_SEEDS = (0, 1, 2, 3, 4)  # model initialisation per replicate
DATA_SEEDS = (0, 1, 2, 3, 4)   # training rows (data order) per replicate (paired with MODEL_SEEDS: replicate i)
CHECKPOINT_EVERY = 100  # the laptop study keeps every 200th step: 100 halves the resolution of every marker and
                        # of the PR lead (F5) at about 1.65x the sweep time (38 instead of 23 checkpoints per run)

PILOT_CHOICES = {
    "span lengths (m of the repeated span)": dict(
        fields=("data.synthetic.span_min", "data.synthetic.span_max"),
        note="m in 12..24: only OLMoE formed induction within 3000 steps; m in 16..28: all three did "
             "(2026-12-02 pilots)"),
    "model seed": dict(
        fields=("families.*.seed",),
        note="OLMo with model seed 1 (same data, m 16..28) formed no induction in 3000 steps (train loss 4.34 "
             "against 2.86 with seed 0)"),
    "data seed (training rows)": dict(
        fields=("families.*.data_seed",),
        note="the same code and seed on two CPUs moved markers by up to 800 steps: the dynamics amplify any "
             "difference, so the data order is varied too"),
    "query/key init std": dict(
        fields=("families.*.qk_init_std", "families.*.init_std"),
        note="QK std 0.02: attention stayed uniform in the natural-text pilots; 0.1 formed previous-token, "
             "induction and sink heads"),
    "step budget": dict(
        fields=("families.*.steps",),
        note="the first OLMo-like pilot formed sinks but no induction within 2500 steps"),
    "batch": dict(
        fields=("train.batch_size",),
        note="a batch-16 OLMo pilot (5000 steps, m 12..24) formed no induction"),
    "task": dict(
        fields=("data.task",),
        note="both circuits formed only with both jobs in every row; separate-sequence mixtures and pure "
             "repeated spans (OLMo, 2000 steps) gave no induction"),
    "depth": dict(
        fields=("families.*.n_layers",),
        note="3 layers formed both circuits, later than 4; a half-induction mixture at 3 layers sank layer 0 and "
             "formed no induction"),
    "checkpoint spacing (marker resolution)": dict(
        fields=("checkpoint.log_until", "checkpoint.every"),
        note="every marker and the PR lead are first checkpoints: their resolution is this spacing"),
}


def get_config(arg: str = ""):
  """The seeds study (no argument) or one run's trainer config (e.g. "olmo_s3")."""
  c = study_config()
  c.name = "seeds"
  runs = {}
  for fam in FAMILIES:
    recipe = c.families[fam].to_dict()
    for i, (ms, ds) in enumerate(zip(MODEL_SEEDS, DATA_SEEDS)):
      runs[f"{fam}_s{i}"] = dict(recipe, family=fam, seed=ms, data_seed=ds)
  c.families = ml_collections.ConfigDict(runs)
  c.family_order = tuple(runs)
  c.seeds = ml_collections.ConfigDict(dict(families=FAMILIES, model_seeds=MODEL_SEEDS, data_seeds=DATA_SEEDS))
  c.checkpoint.every = CHECKPOINT_EVERY
  c.pilot_choices = ml_collections.ConfigDict(PILOT_CHOICES)
  if not arg:
    return c
  from circuits import study
  return study.run_config(c, arg)
