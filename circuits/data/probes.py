"""Probe batches (numpy only; sentencepiece is imported lazily by the corpus helper).

Legend: N examples, T tokens per example. Every batch is a `ProbeBatch` with tokens_NxT (int32),
query_pos_N, target_N (the token the model should predict at the query) and ab_N (position of the first A,
so the METHODS.md class targets are: induction ab+1, duplicate ab, previous q-1, self q, first 0,
local q-3..q-6).

- `synthetic_induction_batch`: the paper's batch, bit-exact at the defaults (T=256, lo=100, hi=10000,
  RandomState(42), METHODS.md call order).
- `baseline_positions`: the paper code's 50 fixed baseline positions (RandomState(0)).
- `default_token_range`: the synthetic batch's token ids for a model's vocabulary (trainer and discovery).
- `natural_induction_batch`: METHODS.md's rule on documents of exactly T tokens.
- `combined_induction_batch`: the in-distribution probe for the PILOTS.md combined task.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from circuits.data import synthetic

PAPER_T, PAPER_LO, PAPER_HI = 256, 100, 10000
PAPER_AB = (20, 128)  # ab = randint(20, 128) at T = 256


@dataclasses.dataclass
class ProbeBatch:
  """tokens_NxT int32; query_pos_N, target_N, ab_N int32; `name` says which probe made it."""
  tokens_NxT: np.ndarray
  query_pos_N: np.ndarray
  target_N: np.ndarray
  ab_N: np.ndarray
  name: str = ""

  def __len__(self) -> int:
    return int(self.tokens_NxT.shape[0])

  def as_dict(self) -> dict:
    return dict(tokens_NxT=self.tokens_NxT, query_pos_N=self.query_pos_N, target_N=self.target_N,
                ab_N=self.ab_N)


def default_token_range(vocab_size: int) -> tuple[int, int]:
  """The synthetic probe's token ids [lo, hi) when none are given (the trainer's in-loop probe and the
  discovery sweep's default probe): the paper's [100, 10000) when the vocabulary has >= 10000 ids, else
  [3, vocab_size) (ids 0-2 are pad/EOS/BOS in circuits.data.synthetic)."""
  if vocab_size >= PAPER_HI:
    return PAPER_LO, PAPER_HI
  return synthetic.FIRST_ID, int(vocab_size)


def ab_range(seq_len: int) -> tuple[int, int]:
  """randint bounds [lo, hi) of the first-A position: (20, 128) at T=256, scaled linearly otherwise."""
  if seq_len == PAPER_T:
    return PAPER_AB
  lo = max(1, round(PAPER_AB[0] * seq_len / PAPER_T))
  hi = min(seq_len - 3, round(PAPER_AB[1] * seq_len / PAPER_T))
  if hi <= lo:
    raise ValueError(f"seq_len={seq_len} is too short for a planted A B pair (need seq_len >= 8)")
  return lo, hi


def synthetic_induction_batch(n: int = 2000, seq_len: int = PAPER_T, lo: int = PAPER_LO, hi: int = PAPER_HI,
                              seed: int = 42, ab: tuple[int, int] | None = None) -> ProbeBatch:
  """The paper's synthetic induction batch: random tokens in [lo, hi), A B planted at ab, A again at T-1.

  Call order per example (numpy RandomState(seed)): seq = randint(lo, hi, size=T); a, b = choice(arange(lo,
  hi), 2, replace=False); ab = randint(*ab_range(T)); seq[ab], seq[ab+1] = a, b; every other position
  equal to a is re-drawn once with randint(lo, hi) (ascending), then every other position equal to b;
  seq[-1] = a. Query T-1, target b. No BOS. For small vocabularies pass the model's (lo, hi).
  """
  if hi - lo < 2:
    raise ValueError(f"token range [lo={lo}, hi={hi}) needs at least 2 ids")
  ab_lo, ab_hi = ab if ab is not None else ab_range(seq_len)
  rng = np.random.RandomState(seed)
  toks = np.empty((n, seq_len), np.int32)
  abs_ = np.empty(n, np.int32)
  targets = np.empty(n, np.int32)
  pool = np.arange(lo, hi)
  for e in range(n):
    seq = rng.randint(lo, hi, size=seq_len)
    a, b = rng.choice(pool, 2, replace=False)
    p = rng.randint(ab_lo, ab_hi)
    seq[p] = a
    seq[p + 1] = b
    for i in np.flatnonzero(seq == a):
      if i != p:
        seq[i] = rng.randint(lo, hi)
    for i in np.flatnonzero(seq == b):
      if i != p + 1:
        seq[i] = rng.randint(lo, hi)
    seq[-1] = a
    toks[e] = seq
    abs_[e] = p
    targets[e] = b
  return ProbeBatch(toks, np.full(n, seq_len - 1, np.int32), targets, abs_, name="synthetic_induction")


def baseline_positions(seq_len: int = PAPER_T, n: int = 50, seed: int = 0) -> np.ndarray:
  """The paper code's fixed baseline positions, in draw order (int32 [n]).

  RandomState(seed); repeat randint(1, T-1) (scalar draws), rejecting 0, the last six positions
  T-6..T-1 (250..255 at T=256) and duplicates, until n are kept.
  """
  excluded = {0, *range(seq_len - 6, seq_len)}
  n_ok = len(set(range(1, seq_len - 1)) - excluded)
  if n > n_ok:
    raise ValueError(f"seq_len={seq_len} has only {n_ok} admissible baseline positions; ask for n <= {n_ok}")
  rng = np.random.RandomState(seed)
  out: list[int] = []
  while len(out) < n:
    p = int(rng.randint(1, seq_len - 1))
    if p in excluded or p in out:
      continue
    out.append(p)
  return np.asarray(out, np.int32)


def natural_induction_example(ids: Sequence[int], min_id: int = 100, min_gap: int = 21):
  """METHODS.md rule on one document of T tokens: (query k, target ids[i+1], ab i) or None.

  i is the first position with ids[i], ids[i+1] both >= min_id and different, such that ids[i] reappears at
  some k >= i + min_gap (k <= T-1); k is the latest such reappearance.
  """
  ids = np.asarray(ids)
  t = len(ids)
  for i in range(t - 1):
    a, b = ids[i], ids[i + 1]
    if a < min_id or b < min_id or a == b:
      continue
    later = np.flatnonzero(ids[i + min_gap:] == a)
    if later.size:
      return int(i + min_gap + later[-1]), int(b), i
  return None


def natural_induction_batch(docs: Iterable[Sequence[int]], seq_len: int = PAPER_T, n: int | None = None,
                            min_id: int = 100, min_gap: int = 21) -> ProbeBatch:
  """One example per document: each document with >= seq_len tokens is cut to its first seq_len tokens.

  Documents that are shorter, or have no qualifying pair, are skipped; stops after n examples.
  """
  rows, q, tgt, ab = [], [], [], []
  for doc in docs:
    if len(doc) < seq_len:
      continue
    ids = np.asarray(doc[:seq_len], np.int32)
    ex = natural_induction_example(ids, min_id=min_id, min_gap=min_gap)
    if ex is None:
      continue
    rows.append(ids)
    q.append(ex[0])
    tgt.append(ex[1])
    ab.append(ex[2])
    if n is not None and len(rows) >= n:
      break
  if not rows:
    raise ValueError(f"no document of >= {seq_len} tokens has a qualifying induction pair (min_id={min_id}, "
                     f"min_gap={min_gap})")
  i32 = lambda x: np.asarray(x, np.int32)
  return ProbeBatch(np.stack(rows), i32(q), i32(tgt), i32(ab), name="natural_induction")


def natural_induction_from_corpus(corpora_dir: str, spm_model: str, seq_len: int = PAPER_T,
                                  n: int | None = None, split: str = "heldout",
                                  corpora: Sequence[str] = ("shakespeare", "bible"), add_bos: bool = False,
                                  min_id: int = 100, min_gap: int = 21) -> ProbeBatch:
  """The natural-text batch from our corpora (launch.get_corpora output), tokenised with `spm_model`.

  With add_bos, each document starts with BOS (the position of every target shifts by one).
  """
  import json
  import os

  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=spm_model)

  def docs():
    for name in corpora:
      path = os.path.join(corpora_dir, name, f"{split}.jsonl")
      if not os.path.exists(path):
        raise FileNotFoundError(f"corpus file {path} is missing: run `make corpora` "
                                f"(python -m launch.get_corpora --out {corpora_dir})")
      with open(path) as f:
        for line in f:
          ids = sp.encode(json.loads(line)["text"])
          yield ([sp.bos_id()] + ids) if add_bos else ids

  return natural_induction_batch(docs(), seq_len=seq_len, n=n, min_id=min_id, min_gap=min_gap)


def combined_induction_batch(n: int = 500, seq_len: int = 64, spec: synthetic.CombinedSpec | None = None,
                             add_bos: bool = True, seed: int = 1234, query_min: int = 1) -> ProbeBatch:
  """In-distribution induction probe for the combined task: the span inside Bigram-Backcopy text.

  Each row is [BOS]? + chain + r_1..r_m + r_1..r_(j+1), ending at the query q = T-1, which holds r_(j+1)
  of the second copy (j uniform in [query_min, m-2], 0-based); the target is r_(j+2), the next token of
  the span; ab = position of r_(j+1) in the first copy (the "first A"), so the induction target is ab+1.
  """
  spec = spec or synthetic.CombinedSpec()
  rng = np.random.default_rng(seed)
  off = 1 if add_bos else 0
  body = seq_len - off
  if body < 2 * spec.span_max + 2:
    raise ValueError(f"seq_len={seq_len} is too short for spans of {spec.span_max} (need "
                     f">= {2 * spec.span_max + 2 + off})")
  if query_min > spec.span_min - 2:
    raise ValueError(f"query_min={query_min} must be <= span_min - 2 = {spec.span_min - 2}")
  chain = synthetic.bigram_backcopy(rng, n, body, spec.bb)
  m = rng.integers(spec.span_min, spec.span_max + 1, size=n)
  j = query_min + (rng.random(n) * (m - 1 - query_min)).astype(np.int64)  # in [query_min, m-2]
  span = synthetic._distinct_spans(rng, n, spec.n_span, spec.span_max, spec.span_first_id)  # pylint: disable=protected-access
  s = body - 1 - m - j  # start of the first copy within the body, so the query lands at the body's end
  n_trig_hi = spec.bb.first_id + spec.bb.n_triggers
  toks = np.empty((n, seq_len), np.int32)
  q, tgt, ab = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int32)
  for e in range(n):
    me, se, je = int(m[e]), int(s[e]), int(j[e])
    # a window chain[o:o+se] that neither starts nor ends with a trigger (every trigger keeps the token
    # it copies before it and its copy after it)
    o = 0
    while se and (chain[e, o] < n_trig_hi or chain[e, o + se - 1] < n_trig_hi):
      o += 1
    r = span[e, :me]
    toks[e, off:] = np.concatenate([chain[e, o:o + se], r, r[:je + 1]])
    q[e] = off + se + me + je
    tgt[e] = r[je + 1]
    ab[e] = off + se + je
  if add_bos:
    toks[:, 0] = synthetic.BOS_ID
  return ProbeBatch(toks, q, tgt, ab, name="combined_induction")


def load_npz(path) -> ProbeBatch:
  """A ProbeBatch from an .npz file holding tokens_NxT, query_pos_N, target_N and ab_N (int32)."""
  z = np.load(path)
  missing = [k for k in ("tokens_NxT", "query_pos_N", "target_N", "ab_N") if k not in z.files]
  if missing:
    from circuits.errors import CircuitsError
    raise CircuitsError(f"probe file {str(path)!r} lacks {', '.join(missing)}: it needs the arrays tokens_NxT, "
                        "query_pos_N, target_N and ab_N (np.savez)")
  return ProbeBatch(*(np.asarray(z[k], np.int32) for k in ("tokens_NxT", "query_pos_N", "target_N", "ab_N")),
                    name=str(path))
