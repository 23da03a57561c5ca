"""The shape of every run config (ml_collections). Family files fill `model`; studies override the rest.

Sections: model (circuits.models.ModelConfig fields), data, train, mesh, checkpoint, probe.
"""

import ml_collections


def model_fields(**kw) -> ml_collections.ConfigDict:
  from circuits.models.config import ModelConfig

  d = ModelConfig(**kw).to_dict()
  for f in ("fused_qkv", "qk_norm"):  # unset: left to the family, so a later change of model.family applies
    if kw.get(f) is None:
      d[f] = None
  return ml_collections.ConfigDict(d)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_fields()
  c.data = ml_collections.ConfigDict(dict(
      cache="",          # path of a packed-token tensorstore cache (launch.build_data writes it)
      task="",           # seqio task or mixture name the cache is built from
      vocab="",          # vocabulary spec ("byte", "spm:<path>", "synthetic:<size>")
      seq_len=256,       # T; cache rows are T+1 tokens (inputs and shifted targets)
      n_sequences=0,     # rows in the cache (0: enough for the run)
      add_bos=True,
      pack=True,
      segment_mask=False,  # mask attention between packed documents (Pythia/OLMo default: off)
      corpora="data/corpora",  # launch.get_corpora output (natural-text tasks)
      split="train",     # "train" (repeats, reshuffled each epoch) or "heldout"/"validation"
      synthetic=ml_collections.ConfigDict(dict(  # circuits.data.synthetic generator parameters
          n_bb=64, n_triggers=3, trigger_prob=0.1, bigram_k=8, table_seed=0,  # Bigram-Backcopy
          n_span=256, span_min=8, span_max=16,  # combined task: span r_1..r_m r_1..r_m, m in [min, max]
          repeat_n_ids=256, repeat_span_min=16, repeat_span_max=32,  # repeat_span task
      )),
  ))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=32,     # global batch, sequences
      lr=3e-4,
      min_lr_ratio=0.1,  # cosine decays to lr * min_lr_ratio
      warmup_steps=50,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip=1.0,
      z_loss=0.0,        # output (logit) z-loss coefficient
      nan_policy="abort",  # "abort" or "skip"
      log_every=10,
      diagnostics=True,  # per-head attention reductions returned by every step
      remat="none",      # circuits.models.remat policy per block: none, full, dots, minimal, save_dot_except_mlp
      scan_layers=False,  # the blocks as one lax.scan over stacked params (compiles one block; per-layer backward)
      microbatches=1,    # m: gradient accumulation inside the step (rows i::m); must divide the per-device batch
      loss_chunk=0,      # C > 0: the cross-entropy forms the logits C positions at a time (0: whole logits)
      progress=True,     # tqdm progress bar (loss, tokens/s, ETA)
      host_sleep_s=0.0,  # host pause per step (only for interruption tests and demos)
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))  # -1: all remaining devices
  c.checkpoint = ml_collections.ConfigDict(dict(
      log_spaced=True,    # keep 0, 1, 2, 4, ..., up to log_until, then every `every` (Pythia-style)
      log_until=512,
      every=1000,
      resume_every=100,   # frequent resume checkpoints ...
      keep_resume=2,      # ... of which only the latest few are kept
      async_save=True,
      enabled=True,       # False: no checkpoints at all (benchmarks)
  ))
  c.probe = ml_collections.ConfigDict(dict(
      every=0,           # K: run the in-loop probe every K steps (0: never)
      n=32,              # probe examples (bench 2026-12-02, K = 100: 0.63-0.94% of a 10M step, 0.74-1.17% at 50M)
      seq_len=0,         # 0: data.seq_len
      token_lo=0,        # 0: derived from the vocabulary
      token_hi=0,
      seed=42,           # numpy RandomState seed of the synthetic induction batch (paper: 42)
      n_baseline=50,     # fixed baseline positions (paper: 50; capped by what seq_len admits)
  ))
  return c
