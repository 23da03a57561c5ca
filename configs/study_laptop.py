"""The laptop-scale study: three small models (Pythia, OLMo, OLMoE architecture facts) on the combined task.

  python -m launch.study --config configs/study_laptop.py --workdir runs/laptop     # the whole study
  python -m launch.train --config configs/study_laptop.py:pythia --workdir W        # one family's run

`get_config()` is the study (sections below); `get_config("<family>")` is that family's run config for the
trainer (circuits.study.run_config), so every run of the study is an ordinary `launch.train` run.

Sections:
  families.<f>   per-family recipe: steps, lr, warmup_steps, min_lr_ratio, qk_init_std, init_std, n_layers,
                 d_model, n_heads, d_ff (MoE: n_experts, top_k, d_ff per expert). Architecture facts (norm,
                 residual, rotary fraction, biases, clip_qkv) come from configs/families.py PUBLISHED.
  data           the combined task (PILOTS.md "Both circuits in one model"), one cache shared by the families.
  train          settings common to the families (batch, optimizer, logging, in-loop probe).
  checkpoint     log-spaced early, then every `every` steps: the revisions the sweep measures.
  sweep          the discovery jobs on every checkpoint: the in-distribution probe (combined_induction_batch)
                 and the paper's synthetic probe with token ids in the span range.
  markers        thresholds of the named transition markers (circuits.study.MARKERS documents each).
  parallel       cores: independent jobs run in parallel processes, one per core, single-threaded XLA.
"""

import ml_collections

FAMILIES = ("pythia", "olmo", "olmoe")


def _family(**kw) -> ml_collections.ConfigDict:
  base = dict(steps=3000, lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, qk_init_std=0.1, init_std=0.02,
              n_layers=4, d_model=64, n_heads=4, d_ff=256, n_experts=0, top_k=0, seed=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def study_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "laptop"
  c.families = ml_collections.ConfigDict(dict(
      # Pythia keeps its facts (parallel residual, rotary on 25% of each head); 2 heads of 32 dims give that
      # 25% eight rotary dims (4 heads of 16 would leave it two frequencies).
      pythia=_family(n_heads=2),
      olmo=_family(),
      # dense dispatch (every expert on every token, zero gates elsewhere): the same dropless result as the
      # ragged grouped matmul (tested), and faster on a CPU at 4 experts
      olmoe=_family(n_experts=4, top_k=2, d_ff=128, model=dict(moe_impl="dense")),
  ))
  c.family_order = FAMILIES  # also the scheduling priority (longest first is best; see parallel)
  c.data = ml_collections.ConfigDict(dict(
      task="circuits.combined", vocab="synthetic:384", vocab_size=384, seq_len=64, add_bos=True, pack=True,
      cache="data/cache/study_{name}",  # {name}: c.name; one cache, max(steps) x batch_size rows
      synthetic=ml_collections.ConfigDict(dict(n_bb=64, n_triggers=3, trigger_prob=0.1, bigram_k=8, table_seed=0,
                                               # spans of 16..28 (two copies: 32..56 of the 63 tokens):
                                               # with 12..24 neither Pythia nor OLMo formed induction within
                                               # 3000 steps; with 16..28 both did (2026-12-02 pilots)
                                               n_span=256, span_min=16, span_max=28)),
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, b1=0.9, b2=0.95, weight_decay=0.0, grad_clip=1.0, log_every=10, probe_every=50,
      probe_n=64,
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(log_until=64, every=200, resume_every=200))
  c.sweep = ml_collections.ConfigDict(dict(
      probes=("combined", "synthetic"),  # combined: in-distribution (ablations on); synthetic: the paper's
      n=256,                 # probe examples
      ablation_examples=128,  # first n probe examples in the ablations
      ablate_every_nth=4,    # causal checks at every n-th measured checkpoint and the last (1: all)
      n_seeds=20,            # matched-random control seeds
      n_detect=2,            # examples whose every query row feeds the TL detectors / Gu sink metric
      chunk=64,
      synthetic_ablations=False,  # ablations on the synthetic probe as well (doubles the sweep)
      every_nth=1,           # measure every n-th checkpoint (plus the last)
      n_heldout=256,         # held-out combined rows for the span-copy loss and first-token mass
  ))
  c.markers = ml_collections.ConfigDict(dict(
      sel_induction=50.0,      # paper: induction circuit = heads with sel_induction >= 50
      min_induction_heads=1,   # ... at least this many (the paper's milestone uses 3: also reported)
      sel_first=30.0,          # paper: first-token (BOS) head = sel_first >= 30
      induction_attention=0.5,  # attention on the induction target (ab+1) at the query, best head
      span_copy_loss=2.0,      # loss (nats) on the second copy of the span (r_2..r_m), held-out rows
      first_mass=0.5,          # trainer JSONL: mean attention on key 0 of one head (batch and queries)
  ))
  c.parallel = ml_collections.ConfigDict(dict(cores="0,1", pin=True, single_thread=True))
  return c


def get_config(arg: str = ""):
  """The study (no argument) or one family's trainer config ("pythia", "olmo", "olmoe")."""
  c = study_config()
  if not arg:
    return c
  from circuits import study
  return study.run_config(c, arg)
