"""The trainer's batch-source interface, an in-memory synthetic source for tests, the cache adapter.

A source gives global batch `step` as numpy arrays (B, T): tokens_BxT, targets_BxT, loss_mask_BxT and,
when data.segment_mask is on, segment_ids_BxT and positions_BxT. Batch `step` depends only on `step`, so
resuming needs only the data position (= the step).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BatchSource(Protocol):
  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Global batch `step` (numpy, int32 tokens, float32 loss mask)."""


class SyntheticRepeatSource:
  """Random tokens with one random span repeated (an induction task), deterministic in (seed, step).

  Row: BOS-free random ids in [lo, vocab); a span of m in [m_lo, m_hi] tokens at offset a is copied at
  offset a + m + g. Next-token targets; every position counts in the loss.
  """

  def __init__(self, vocab_size: int, seq_len: int, batch_size: int, seed: int = 0, lo: int = 3,
               segment_mask: bool = False):
    self.v, self.t, self.b, self.seed, self.lo, self.segment_mask = vocab_size, seq_len, batch_size, seed, lo, segment_mask
    if vocab_size - lo < 2:
      raise ValueError(f"vocab_size={vocab_size} leaves no ids above lo={lo}")

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    t1 = self.t + 1
    rows = rng.integers(self.lo, self.v, size=(self.b, t1), dtype=np.int64)
    m_hi = max(2, t1 // 3)
    for r in range(self.b):
      m = int(rng.integers(2, m_hi + 1))
      a = int(rng.integers(0, t1 - 2 * m + 1))
      g = int(rng.integers(0, t1 - 2 * m - a + 1))
      rows[r, a + m + g:a + 2 * m + g] = rows[r, a:a + m]
    rows = rows.astype(np.int32)
    out = dict(tokens_BxT=rows[:, :-1], targets_BxT=rows[:, 1:], loss_mask_BxT=np.ones((self.b, self.t), np.float32))
    if self.segment_mask:
      out["segment_ids_BxT"] = np.ones((self.b, self.t), np.int32)
      out["positions_BxT"] = np.broadcast_to(np.arange(self.t, dtype=np.int32), (self.b, self.t)).copy()
    return out


class CacheSource:
  """Adapter over circuits.data.reader.TokenCache (global batch i = rows [i*B, (i+1)*B))."""

  def __init__(self, data_cfg, batch_size: int, steps: int):
    from circuits.data.reader import TokenCache, inputs_targets  # imported only when a cache is used

    self._cache = TokenCache.from_config(data_cfg, batch_size=batch_size, steps=steps)
    self._split = inputs_targets
    self.b, self.segment_mask = batch_size, bool(data_cfg.segment_mask)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    d = self._split(self._cache.batch(step, self.b))
    out = dict(tokens_BxT=d["tokens_BxT"], targets_BxT=d["targets_BxT"],
               loss_mask_BxT=d["loss_mask_BxT"].astype(np.float32))
    if self.segment_mask:
      out["segment_ids_BxT"], out["positions_BxT"] = d["segment_ids_BxT"], d["positions_BxT"]
    return out


def check_vocab(config, model_cfg) -> None:
  """Refuse, before any compute, a model whose embedding cannot hold every id of the token cache.

  The cache records its vocabulary in meta.json (`vocab`, and `vocab_size`: ids are in [0, vocab_size)).
  With model.vocab_size < that, token ids index past the embedding and the loss is NaN from step 0 (and
  train.nan_policy=skip would skip every step and save checkpoints of a model that never trained). Raises
  ConfigError naming both sizes and the fix; CacheError (circuits.data.reader) when data.cache is set but
  no cache was built there. Nothing to check without a cache (the synthetic source uses model.vocab_size).
  """
  if not config.data.cache:
    return
  from circuits.data.reader import read_meta  # imported only when a cache is used
  from circuits.models.config import ConfigError

  cache = str(config.data.cache)
  meta = read_meta(cache)
  have = int(meta["vocab_size"])
  if int(model_cfg.vocab_size) < have:
    raise ConfigError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the vocabulary of the token cache "
                      f"{cache!r} ({have} ids, data.vocab={meta.get('vocab')!r}): the model cannot embed "
                      f"its ids; set model.vocab_size >= {have} (e.g. --config.model.vocab_size={have}) or point "
                      "data.cache at a cache built with the model's vocabulary")


def from_config(config, model_cfg) -> BatchSource:
  """The cache at data.cache if set, else the synthetic repeated-span source (for tests and demos)."""
  d = config.data
  if d.cache:
    return CacheSource(d, int(config.train.batch_size), int(config.train.steps))
  return SyntheticRepeatSource(model_cfg.vocab_size, int(d.seq_len), int(config.train.batch_size),
                               seed=int(config.seed), segment_mask=bool(d.segment_mask))
