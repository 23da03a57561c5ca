"""The pod-scale study: the three published 1B configs (configs/families.py), a real corpus, the same sweep.

  python -m launch.train --config configs/study_1b.py:olmo --workdir gs://.../olmo/run --distributed  # per family
  launch/tpu_pod.sh --family olmo ...      # creates the pod and runs exactly that on every worker

Same sections as configs/study_laptop.py (circuits.study reads both). Per family: the published
hyperparameters (Pythia 1B: lr 3e-4, warmup 1430, 143000 steps of 1024 x 2048, wd 0.01; OLMo 1B-0724: lr 4e-4,
warmup 2500, wd 0.1; OLMoE 1B-7B: 64 experts top-8, 1024 x 4096, lr 4e-4), standard init (std 0.02, no enlarged
query/key init), and checkpoints on Pythia's schedule (0, 1, 2, ..., 512, then every 1000 steps).
data: our natural-text mixture tokenised with our SentencePiece model is the placeholder corpus that exists
offline; on the pod set data.task / data.vocab (and data.cache to a bucket path) for the real corpus
(the Pile for Pythia, Dolma for OLMo/OLMoE) -- `--config.data.task=...`.
sweep: the synthetic probe at the paper's T = 256 and N = 2000 (the combined probe exists only for the
synthetic task).
"""

import ml_collections

from configs.families import PUBLISHED, family_config
from configs.study_laptop import study_config


def _family(name: str) -> ml_collections.ConfigDict:
  c = family_config(name, "1b")
  pub = PUBLISHED[name]
  return ml_collections.ConfigDict(dict(
      size="1b", steps=int(c.train.steps), lr=float(c.train.lr), warmup_steps=int(c.train.warmup_steps),
      min_lr_ratio=0.1, qk_init_std=0.02, init_std=0.02, n_layers=pub["n_layers"], d_model=pub["d_model"],
      n_heads=pub["n_heads"], d_ff=pub["d_ff"], n_experts=pub.get("n_experts", 0), top_k=pub.get("top_k", 0),
      seed=0, seq_len=int(c.data.seq_len), batch_size=int(c.train.batch_size),
      weight_decay=float(c.train.weight_decay)))


def get_config(arg: str = ""):
  c = study_config()
  c.name = "1b"
  c.families = ml_collections.ConfigDict({f: _family(f) for f in ("pythia", "olmo", "olmoe")})
  c.data.task = "circuits.natural"
  c.data.vocab = "spm:data/spm/spm_8192.model"
  c.data.vocab_size = 50304
  c.data.seq_len = 2048
  c.data.n_sequences = 0
  c.train.batch_size = 1024
  c.train.probe_every = 1000
  c.train.probe_n = 256
  c.train.log_every = 10
  c.checkpoint = ml_collections.ConfigDict(dict(log_until=512, every=1000, resume_every=1000))
  c.sweep.probes = ("synthetic",)
  c.sweep.n = 2000
  c.sweep.ablation_examples = 500
  c.sweep.synthetic_ablations = True
  c.sweep.n_detect = 8
  c.sweep.every_nth = 1
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, expert=1))
  c.parallel.cores = ""
  if not arg:
    return c
  from circuits import study
  return study.run_config(c, arg)
