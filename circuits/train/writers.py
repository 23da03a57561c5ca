"""Metrics sinks: JSONL (one line per logged step; per-head arrays as nested lists) and TensorBoard.

Metric names (keys of a JSONL line; TensorBoard tags use the same names):
  step, tokens_seen, loss (next-token CE), loss_total (with z/MoE losses), z_loss (output, unscaled),
  grad_norm (before clipping), lr, finite, n_skipped, tokens_per_s, time_s;
  attn/first_mass, attn/entropy, attn/prev_mass, attn/self_mass    [L][H]  (train.diagnostics)
  moe/load [L][E], moe/imbalance [L], moe/router_entropy [L], moe/lb_loss [L], moe/z_loss [L] (unscaled)
  probe/sel_induction, probe/sel_previous, probe/sel_first (+ _uniform: the 1/(q+1) baseline),
  probe/pr, probe/pr_classic  [L][H]  -- only on lines where the probe ran (probe_ran true).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


def flatten(metrics: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in metrics.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _json_value(v):
  a = np.asarray(v)
  if a.ndim == 0:
    x = a.item()
    if isinstance(x, float) and not math.isfinite(x):
      return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    return x
  return [_json_value(r) for r in a]


class JsonlWriter:
  """Appends one JSON object per logged step; `truncate_from(step)` drops lines of steps >= step."""

  def __init__(self, path: str):
    self.path = path
    self._f = open(path, "a", buffering=1)

  @staticmethod
  def truncate_from(path: str, step: int) -> None:
    if not os.path.exists(path):
      return
    with open(path) as f:
      keep = [l for l in f if l.strip() and json.loads(l).get("step", -1) < step]
    with open(path, "w") as f:
      f.writelines(keep)

  def write(self, row: dict) -> None:
    self._f.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")

  def close(self) -> None:
    self._f.close()


class TensorBoardWriter:
  """Scalars for every scalar metric; per-layer means and a histogram for [L][H] (and [L][E]) arrays,
  plus per-head scalars (tag/L{l}H{h}) when L*H <= 64."""

  def __init__(self, logdir: str, purge_step: int | None = None):
    from tensorboardX import SummaryWriter

    self._w = SummaryWriter(logdir=logdir, purge_step=purge_step, flush_secs=10)

  def write(self, step: int, row: dict) -> None:
    for k, v in row.items():
      if k == "step" or v is None:
        continue
      a = np.asarray(v, dtype=np.float64)
      if a.ndim == 0:
        self._w.add_scalar(k, float(a), step)
        continue
      finite = a[np.isfinite(a)]
      if finite.size:
        self._w.add_histogram(k, finite, step)
      if a.ndim == 2:
        for l in range(a.shape[0]):
          self._w.add_scalar(f"{k}/layer{l}_mean", float(np.nanmean(a[l])), step)
        if a.size <= 64:
          for l in range(a.shape[0]):
            for h in range(a.shape[1]):
              self._w.add_scalar(f"{k}/L{l}H{h}", float(a[l, h]), step)
      elif a.ndim == 1:
        for l in range(a.shape[0]):
          self._w.add_scalar(f"{k}/layer{l}", float(a[l]), step)

  def close(self) -> None:
    self._w.flush()
    self._w.close()
