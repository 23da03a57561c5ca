"""Synthetic sequence generators (numpy only), vectorised over a chunk of rows.

Legend: N rows, L tokens per row (the generated part, BOS excluded), m span length.

Vocabulary layout shared by every synthetic task (`Layout`): id 0 pad, 1 EOS, 2 BOS, then the task's ids
from `first_id` = 3 upward. The combined task ("both circuits in one model", PILOTS.md) uses
  [first_id, first_id + n_bb)                    Bigram-Backcopy ids; the first n_triggers are triggers
  [first_id + n_bb, first_id + n_bb + n_span)    span ids (never used by the chain)
so with the defaults (64 ids, 256 span ids) the vocabulary needs 3 + 64 + 256 = 323 rows.

Every generator takes a `numpy.random.Generator` and returns int32 tokens_NxL. The cache builder seeds one
generator per chunk from (seed, split, chunk index), so rows are reproducible and chunks independent.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
FIRST_ID = 3


@dataclasses.dataclass(frozen=True)
class RepeatSpanSpec:
  """Random tokens from `n_ids` ids with one span of m in [span_min, span_max] tokens copied twice."""
  n_ids: int = 256
  span_min: int = 16
  span_max: int = 32
  first_id: int = FIRST_ID

  @property
  def vocab_size(self) -> int:
    return self.first_id + self.n_ids


@dataclasses.dataclass(frozen=True)
class BigramBackcopySpec:
  """Guo et al. 2024 Bigram-Backcopy: sparse random bigram chain; after a trigger, copy the pre-trigger token.

  At each step (when the previous token is not a trigger) a trigger is emitted with probability
  `trigger_prob` (uniform over the triggers); otherwise the next token is one of the `bigram_k` successors
  of the previous token (uniform). The successor table over the non-trigger ids is fixed by `table_seed`.
  """
  n_bb: int = 64
  n_triggers: int = 3
  trigger_prob: float = 0.1
  bigram_k: int = 8
  table_seed: int = 0
  first_id: int = FIRST_ID

  @property
  def vocab_size(self) -> int:
    return self.first_id + self.n_bb

  def table(self) -> np.ndarray:
    """Successor table [n_ordinary, bigram_k] of token ids (ordinary ids only)."""
    n_ord = self.n_bb - self.n_triggers
    if not 0 < self.bigram_k <= n_ord:
      raise ValueError(f"bigram_k={self.bigram_k} must be in 1..{n_ord} (the non-trigger ids)")
    rng = np.random.default_rng(self.table_seed)
    succ = np.stack([rng.permutation(n_ord)[:self.bigram_k] for _ in range(n_ord)])
    return (succ + self.first_id + self.n_triggers).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CombinedSpec:
  """PILOTS.md "Both circuits in one model": a Bigram-Backcopy chain with r_1..r_m r_1..r_m inserted."""
  bb: BigramBackcopySpec = BigramBackcopySpec()
  n_span: int = 256
  span_min: int = 8
  span_max: int = 16

  @property
  def span_first_id(self) -> int:
    return self.bb.first_id + self.bb.n_bb

  @property
  def vocab_size(self) -> int:
    return self.span_first_id + self.n_span


def _check_span(span_min, span_max, n_ids, length, copies):
  if not 1 <= span_min <= span_max:
    raise ValueError(f"span lengths must satisfy 1 <= span_min <= span_max (got {span_min}, {span_max})")
  if copies * span_max > length:
    raise ValueError(f"{copies} copies of span_max={span_max} do not fit in {length} tokens: lower "
                     "span_max or raise seq_len")
  if span_max > n_ids:
    raise ValueError(f"span_max={span_max} exceeds the {n_ids} span ids (spans have distinct tokens)")


def _distinct_spans(rng, n, n_ids, m_max, first_id):
  """[n, m_max] distinct ids per row drawn from [first_id, first_id + n_ids)."""
  return (np.argsort(rng.random((n, n_ids)), axis=1)[:, :m_max] + first_id).astype(np.int32)


def repeat_span(rng: np.random.Generator, n: int, length: int, spec: RepeatSpanSpec = RepeatSpanSpec()):
  """tokens_NxL: uniform random filler with a distinct-token span written at two non-overlapping offsets."""
  _check_span(spec.span_min, spec.span_max, spec.n_ids, length, 2)
  toks = rng.integers(spec.first_id, spec.first_id + spec.n_ids, size=(n, length)).astype(np.int32)
  m = rng.integers(spec.span_min, spec.span_max + 1, size=n)
  span = _distinct_spans(rng, n, spec.n_ids, spec.span_max, spec.first_id)
  s1 = (rng.random(n) * (length - 2 * m + 1)).astype(np.int64)           # in [0, L - 2m]
  s2 = s1 + m + (rng.random(n) * (length - m - (s1 + m) + 1)).astype(np.int64)  # in [s1 + m, L - m]
  j = np.arange(length)[None, :]
  for s in (s1, s2):
    off = j - s[:, None]
    inside = (off >= 0) & (off < m[:, None])
    toks = np.where(inside, np.take_along_axis(span, np.clip(off, 0, spec.span_max - 1), axis=1), toks)
  return toks


def bigram_backcopy(rng: np.random.Generator, n: int, length: int,
                    spec: BigramBackcopySpec = BigramBackcopySpec()) -> np.ndarray:
  """tokens_NxL: Bigram-Backcopy chains (the first token is a uniform non-trigger id)."""
  table = spec.table()
  lo_ord = spec.first_id + spec.n_triggers
  n_ord = spec.n_bb - spec.n_triggers
  u = rng.random((n, length))
  trig = rng.integers(0, spec.n_triggers, size=(n, length)) + spec.first_id
  pick = rng.integers(0, spec.bigram_k, size=(n, length))
  toks = np.empty((n, length), np.int32)
  toks[:, 0] = rng.integers(lo_ord, lo_ord + n_ord, size=n)
  for t in range(1, length):
    prev = toks[:, t - 1]
    prev_is_trig = prev < lo_ord
    nxt = np.where(u[:, t] < spec.trigger_prob, trig[:, t],
                   table[np.clip(prev - lo_ord, 0, n_ord - 1), pick[:, t]])
    if t >= 2:
      nxt = np.where(prev_is_trig, toks[:, t - 2], nxt)
    toks[:, t] = nxt
  return toks


def combined(rng: np.random.Generator, n: int, length: int, spec: CombinedSpec = CombinedSpec(),
             return_meta: bool = False):
  """tokens_NxL: a Bigram-Backcopy chain of L - 2m tokens with r_1..r_m r_1..r_m inserted after p of them.

  The insertion point p is uniform over the points in [0, L - 2m] that have no trigger on either side (a
  trigger is always preceded by the token it copies and followed by the copy). With `return_meta`, also returns (p_N, m_N, span_NxM) where the first copy starts at p.
  """
  _check_span(spec.span_min, spec.span_max, spec.n_span, length, 2)
  chain = bigram_backcopy(rng, n, length, spec.bb)
  m = rng.integers(spec.span_min, spec.span_max + 1, size=n)
  span = _distinct_spans(rng, n, spec.n_span, spec.span_max, spec.span_first_id)
  # p is uniform over the valid insertion points in [0, L - 2m]: the chain tokens on either side of the
  # span must not be triggers, so every trigger stays next to the token it copies and the token it follows.
  is_trig = chain < spec.bb.first_id + spec.bb.n_triggers
  cand = np.arange(length + 1)[None, :]
  left_ok = np.concatenate([np.ones((n, 1), bool), ~is_trig], axis=1)     # chain[p - 1] (p = 0: none)
  right_ok = np.concatenate([~is_trig, np.ones((n, 1), bool)], axis=1)    # chain[p] (p = L: none)
  ok = left_ok & right_ok & (cand <= (length - 2 * m)[:, None])
  p = np.argmax(np.where(ok, rng.random((n, length + 1)), -1.0), axis=1).astype(np.int64)
  j = np.arange(length)[None, :]
  off = j - p[:, None]
  in_span = (off >= 0) & (off < 2 * m[:, None])
  span_tok = np.take_along_axis(span, np.clip(off % m[:, None], 0, spec.span_max - 1), axis=1)
  chain_idx = np.where(off < 0, j, j - 2 * m[:, None])
  chain_tok = np.take_along_axis(chain, np.clip(chain_idx, 0, length - 1), axis=1)
  toks = np.where(in_span, span_tok, chain_tok).astype(np.int32)
  if return_meta:
    return toks, p, m, span
  return toks


KINDS = {
    "repeat_span": (repeat_span, RepeatSpanSpec),
    "bigram_backcopy": (bigram_backcopy, BigramBackcopySpec),
    "combined": (combined, CombinedSpec),
}


def chunk_rng(seed: int, split: str, chunk: int) -> np.random.Generator:
  """The generator for one chunk of rows: independent of every other chunk, split and seed."""
  return np.random.default_rng([int(seed), 0 if split == "train" else 1, int(chunk)])
