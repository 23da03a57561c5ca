"""Probe batches: the paper's synthetic batch bit for bit, baseline positions, the natural-text rule."""

import numpy as np
import pytest

from circuits.data import probes, synthetic


def _paper_reference(n):
  """Independent re-implementation of the METHODS.md call order (plain loops over every position)."""
  rng = np.random.RandomState(42)
  out = []
  for _ in range(n):
    seq = rng.randint(100, 10000, size=256)
    a, b = rng.choice(np.arange(100, 10000), 2, replace=False)
    ab = rng.randint(20, 128)
    seq[ab] = a
    seq[ab + 1] = b
    for i in range(256):
      if i != ab and seq[i] == a:
        seq[i] = rng.randint(100, 10000)
    for i in range(256):
      if i != ab + 1 and seq[i] == b:
        seq[i] = rng.randint(100, 10000)
    seq[-1] = a
    out.append((seq.copy(), ab, b))
  return out


def test_synthetic_matches_reference():
  batch = probes.synthetic_induction_batch(n=40)
  assert batch.tokens_NxT.shape == (40, 256) and batch.tokens_NxT.dtype == np.int32
  for e, (seq, ab, b) in enumerate(_paper_reference(40)):
    np.testing.assert_array_equal(batch.tokens_NxT[e], seq)
    assert batch.ab_N[e] == ab and batch.target_N[e] == b and batch.query_pos_N[e] == 255
  toks = batch.tokens_NxT
  rows = np.arange(40)
  assert (toks[rows, batch.ab_N] == toks[:, -1]).all()
  assert (toks[rows, batch.ab_N + 1] == batch.target_N).all()


def test_synthetic_small_vocab_and_length():
  batch = probes.synthetic_induction_batch(n=50, seq_len=64, lo=3, hi=323)
  assert batch.tokens_NxT.shape == (50, 64)
  assert batch.tokens_NxT.min() >= 3 and batch.tokens_NxT.max() < 323
  lo, hi = probes.ab_range(64)
  assert (lo, hi) == (5, 32) and probes.ab_range(256) == (20, 128)
  assert ((batch.ab_N >= lo) & (batch.ab_N < hi)).all()
  assert (batch.query_pos_N == 63).all()
  # A occurs only at ab and T-1; B only at ab+1
  for e in range(50):
    row = batch.tokens_NxT[e]
    a, b = row[-1], batch.target_N[e]
    assert set(np.flatnonzero(row == b)) == {batch.ab_N[e] + 1}
    assert batch.ab_N[e] in set(np.flatnonzero(row == a)) and (row == a).sum() <= 3


def test_baseline_positions():
  rng = np.random.RandomState(0)
  ref = []
  while len(ref) < 50:
    p = rng.randint(1, 255)
    if p == 0 or 250 <= p <= 255 or p in ref:
      continue
    ref.append(p)
  np.testing.assert_array_equal(probes.baseline_positions(), ref)
  pos64 = probes.baseline_positions(64)
  assert len(set(pos64.tolist())) == 50 and pos64.min() >= 1 and pos64.max() < 58
  with pytest.raises(ValueError, match="admissible"):
    probes.baseline_positions(32)


def _natural_brute(ids, min_id=100, gap=21):
  for i in range(len(ids) - 1):
    if ids[i] >= min_id and ids[i + 1] >= min_id and ids[i] != ids[i + 1]:
      ks = [k for k in range(i + gap, len(ids)) if ids[k] == ids[i]]
      if ks:
        return ks[-1], ids[i + 1], i
  return None


def test_natural_rule():
  doc = [5] * 64
  doc[3], doc[4] = 150, 151      # i = 3 is the first qualifying pair ...
  doc[30], doc[50] = 150, 150    # ... A reappears at 30 and 50 (>= 3 + 21): the latest, 50, is the query
  doc[1], doc[2] = 120, 120      # equal pair: not eligible
  batch = probes.natural_induction_batch([doc, [7] * 64, doc[:40]], seq_len=64)
  assert len(batch) == 1  # the second has no pair, the third is too short
  assert (batch.query_pos_N[0], batch.target_N[0], batch.ab_N[0]) == (50, 151, 3)
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 300, size=int(rng.integers(200, 300))).tolist() for _ in range(60)]
  batch = probes.natural_induction_batch(docs, seq_len=256)
  want = [r for r in (_natural_brute(d[:256]) for d in docs if len(d) >= 256) if r is not None]
  assert len(batch) == len(want) > 0
  for e, (k, tgt, i) in enumerate(want):
    assert (batch.query_pos_N[e], batch.target_N[e], batch.ab_N[e]) == (k, tgt, i)
  assert batch.tokens_NxT.shape[1] == 256


def test_combined_probe_in_distribution():
  spec = synthetic.CombinedSpec()
  batch = probes.combined_induction_batch(n=200, seq_len=64, spec=spec)
  toks, q, ab = batch.tokens_NxT, batch.query_pos_N, batch.ab_N
  rows = np.arange(200)
  assert toks.shape == (200, 64) and (toks[:, 0] == synthetic.BOS_ID).all() and (q == 63).all()
  assert (toks[rows, ab] == toks[rows, q]).all() and (toks[rows, ab + 1] == batch.target_N).all()
  assert (batch.target_N >= spec.span_first_id).all()
  trig_hi = spec.bb.first_id + spec.bb.n_triggers
  for e in range(200):  # the chain part keeps the Bigram-Backcopy rule
    row = toks[e]
    for t in range(2, 63):
      if row[t] < trig_hi and row[t] >= spec.bb.first_id and t + 1 < 64 and row[t + 1] < spec.span_first_id:
        assert row[t + 1] == row[t - 1]
