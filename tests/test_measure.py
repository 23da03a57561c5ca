"""discovery.measure against an INDEPENDENT torch implementation on random tiny HF models, and planted heads.

The reference is the paper's way of measuring: HF eager attention with output_attentions=True (full
[B, H, T, T] maps) and forward pre-hooks on each layer's output projection to capture z; selectivities,
PR, null floor, TL detectors, Gu alpha and the ICL score are recomputed here in torch (float64) from
those, without calling circuits.diagnostics. N = 64, T = 32.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from circuits import diagnostics as D  # noqa: E402
from circuits.data.probes import baseline_positions, natural_induction_batch, synthetic_induction_batch  # noqa: E402
from circuits.discovery import measure  # noqa: E402
from circuits.convert import fixtures as F  # noqa: E402

N, T = 64, 32
RTOL = 1e-4
CFG = measure.MeasureConfig(chunk=48, main_chunk=48, n_detect=3, null_draws=500, keep_rows=True)  # 64 = 48 + padded 16
CLASSES = ("induction", "duplicate", "previous", "self", "first", "local")


def _probe():
  return synthetic_induction_batch(n=N, seq_len=T, lo=3, hi=F.VOCAB)


def _natural():
  rng = np.random.RandomState(5)
  docs = [rng.randint(3, 40, size=T) for _ in range(200)]  # small id range so pairs recur
  return natural_induction_batch(docs, seq_len=T, n=16, min_id=3)


def _reference(hf_model, probe, natural):
  """Paper-style measurement in torch: returns dict of [L, H] numpy float64 arrays (and scalars)."""
  outs = [m for name, m in hf_model.named_modules() if name.endswith(("attention.dense", "self_attn.o_proj"))]
  cap = []
  hooks = [m.register_forward_pre_hook(lambda mod, args: cap.append(args[0].detach().double())) for m in outs]
  tok = torch.as_tensor(probe.tokens_NxT, dtype=torch.long)
  with torch.no_grad():
    o = hf_model(tok, output_attentions=True)
  for h in hooks:
    h.remove()
  att = torch.stack([a.double() for a in o.attentions], 1)  # [N, L, H, T, S]
  n, l, h, t, _ = att.shape
  z = torch.stack(cap, 1).reshape(n, l, t, h, -1)[:, :, -1]  # [N, L, H, K] at q = T-1
  rows = att[:, :, :, -1, :]  # [N, L, H, S]
  ab = torch.as_tensor(probe.ab_N, dtype=torch.long)
  idx = torch.arange(n)
  base_pos = torch.as_tensor(baseline_positions(t, n=min(50, t - 7)), dtype=torch.long)
  base = rows[:, :, :, base_pos].mean((0, 3))
  mass = {"induction": rows[idx, :, :, ab + 1].mean(0), "duplicate": rows[idx, :, :, ab].mean(0),
          "previous": rows[..., t - 2].mean(0), "self": rows[..., t - 1].mean(0), "first": rows[..., 0].mean(0),
          "local": rows[..., t - 6:t - 2].mean((0, 3))}
  ref = {}
  for c in CLASSES:
    ref[f"sel_{c}"] = mass[c] / base
    ref[f"sel_{c}_uniform"] = mass[c] / (1.0 / t)
  for key, m in (("", 500), ("_2000", 2000)):
    s = torch.linalg.svdvals(z[:m].permute(1, 2, 0, 3))
    s2 = s ** 2
    p = s2 / s2.sum(-1, keepdim=True)
    ref[f"pr{key}"] = torch.exp(-(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1))
    ref[f"pr_classic{key}"] = s2.sum(-1) ** 2 / (s2 ** 2).sum(-1)
  null_pos = torch.as_tensor(measure.null_positions(probe.ab_N, t, CFG.null_draws, CFG.null_seed))  # [N, D]
  null = torch.stack([rows[idx, :, :, null_pos[:, d]].mean(0) / base for d in range(null_pos.shape[1])])
  ref["null_sel_p95"] = np.percentile(null.numpy().ravel(), 95)
  ref["null_sel_p99"] = np.percentile(null.numpy().ravel(), 99)
  ref["null_sel_max"] = null.max().item()
  # TransformerLens detect_head ("mul"), written out from its pattern definitions, on full maps
  tl = {k: torch.zeros(l, h, dtype=torch.float64) for k in ("previous", "duplicate", "induction")}
  nd = CFG.n_detect
  for e in range(nd):
    tk = probe.tokens_NxT[e]
    eq = (tk[None, :] == tk[:, None]).astype(float)
    np.fill_diagonal(eq, 0)
    dup = np.tril(eq)
    ind = np.zeros_like(dup)
    ind[:, 1:] = dup[:, :-1]
    ind = np.tril(ind, -1)
    prev = np.tril(np.ones((t, t)), -1) - np.tril(np.ones((t, t)), -2)
    a = att[e]
    for k, pat in (("previous", prev), ("duplicate", dup), ("induction", ind)):
      tl[k] += (a * torch.as_tensor(pat)).sum((-1, -2)) / a.sum((-1, -2))
  for k in tl:
    ref[f"tl_{k}"] = tl[k] / nd
  ref["gu_alpha"] = att[:nd, :, :, :, 0].mean((0, 3))
  ntok = torch.as_tensor(natural.tokens_NxT, dtype=torch.long)
  with torch.no_grad():
    logits = hf_model(ntok).logits.double()
  nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ntok[:, 1:].reshape(-1),
                                          reduction="none").reshape(ntok.shape[0], -1)
  early, late = D.icl_positions(t)
  ref["icl_score"] = (nll[:, late - 1].mean() - nll[:, early - 1].mean()).item()
  return {k: (v.numpy() if torch.is_tensor(v) else np.float64(v)) for k, v in ref.items()}


@pytest.mark.parametrize("fixture", ["neox_rot25", "olmo_gqa_noclip"])
def test_matches_independent_torch_reference(tmp_path, fixture):
  from circuits.convert import from_hf

  path = F.make_hf_dir(tmp_path / fixture, fixture, std=0.3)
  _, model = from_hf(path)
  hf_model = F.load_hf_model(path)
  probe, natural = _probe(), _natural()
  df, extras = measure.measure_revision(model, probe, revision="r", step=0, tokens=0.0, natural=natural, cfg=CFG)
  ref = _reference(hf_model, probe, natural)
  l, h = ref["sel_first"].shape
  assert len(df) == l * h and list(df["layer"]) == [i // h for i in range(l * h)]
  for k, v in ref.items():
    ours = df[k].to_numpy() if np.ndim(v) == 0 else df[k].to_numpy().reshape(l, h)
    ours = ours[0] if np.ndim(v) == 0 else ours
    np.testing.assert_allclose(ours, v, rtol=RTOL, atol=1e-7, err_msg=k)
  assert (df["pr_examples"] == N).all() and (df["pr_2000_examples"] == N).all()
  # the chunked sums (padded last chunk) equal diagnostics.selectivity / participation_ratio on kept rows
  rows, z = extras["rows_NxLxHxS"], extras["z_NxLxHxK"]
  assert rows.shape == (N, l, h, T)
  want = D.selectivity(rows, probe.ab_N, baseline_positions(T, n=25), T - 1)
  want.update(D.participation_ratio(z))
  for k, v in want.items():
    np.testing.assert_allclose(df[k].to_numpy().reshape(l, h), np.asarray(v), rtol=1e-5, err_msg=k)


def _planted_rows(probe):
  """[N, 1, 5, T] rows: head 0 induction (ab+1), 1 previous (T-2), 2 first (0), 3 uniform, 4 duplicate."""
  n, t = probe.tokens_NxT.shape
  rows = np.full((n, 1, 5, t), 0.2 / (t - 1), np.float32)
  for hd, pos in ((0, probe.ab_N + 1), (1, np.full(n, t - 2)), (2, np.zeros(n, int)), (4, probe.ab_N)):
    rows[np.arange(n), 0, hd, pos] += 0.8
  rows[:, 0, 3] = 1.0 / t
  return rows / rows.sum(-1, keepdims=True)


def test_planted_heads_are_classified_exactly():
  import pandas as pd

  from circuits.discovery import analysis

  probe = synthetic_induction_batch(n=N, seq_len=256)  # paper size: 50 baseline keys of 249
  sel = D.selectivity(_planted_rows(probe), probe.ab_N, baseline_positions(256), 255)
  df = pd.DataFrame({"revision": "r", "step": 0, "tokens": 1.0, "layer": 0, "head": np.arange(5),
                     **{k: np.asarray(v)[0] for k, v in sel.items()}, "pr": 1.0, "pr_classic": 1.0})
  cl = analysis.classify(df)
  best = dict(zip(cl["head"], cl["best_class"]))
  assert best[0] == "induction" and best[1] == "previous" and best[2] == "first" and best[4] == "duplicate"
  assert not cl.loc[cl["head"] == 3, "classified"].item()
  assert cl.loc[cl["head"] != 3, "classified"].all()
  np.testing.assert_allclose(df.loc[3, [f"sel_{c}" for c in CLASSES]].to_numpy(float), 1.0, rtol=1e-5)


def test_detectors_on_planted_full_patterns():
  """Full rows of a previous-token head and a pure induction head score 1 on their own detector. The masses
  on the masks are reduced here as the attention op reduces them (sum_{t,s} A[t, s] * mask[t, s])."""
  t = 12
  tok = np.array([[5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10]])
  rows = np.zeros((1, 1, 2, t, t), np.float32)  # [N, L, H, T, S]
  for i in range(t):
    rows[0, 0, 0, i, max(i - 1, 0)] = 1.0
    rows[0, 0, 1, i, (i - 5) if i >= 6 else 0] = 1.0  # induction: token after the earlier copy
  masks = np.asarray(D.detector_masks(tok, exclude_bos=True))
  assert masks.shape == (1, len(D.DETECTOR_MASKS), t, t) and not masks[0, D.DETECTOR_MASKS.index("kept"), :, 0].any()
  mass = np.einsum("nlhts,npts->nlph", rows, masks.astype(np.float32))
  s = D.detector_scores(mass, t)
  np.testing.assert_allclose(np.asarray(s["tl_previous"])[0, 0], 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s["tl_induction"])[0, 1], 1.0, rtol=1e-6)
  assert float(np.asarray(s["tl_duplicate"])[0, 1]) == 0.0
  alpha = s["gu_alpha"]  # Gu's alpha uses the raw rows (no TL exclusions): the induction head's 6 rows on key 0
  assert float(alpha[0, 1]) == pytest.approx(6 / t) and float(D.sink_rate(alpha, 0.3)) == 50.0


def test_topk_overlap_and_icl_positions():
  a = np.array([[[0, 1], [2, 3]]])
  b = np.array([[[1, 0], [2, 5]]])
  assert float(D.topk_overlap(a, b)[0]) == pytest.approx(0.75)
  assert D.icl_positions(256) == (25, 250) and D.icl_positions(1024) == (50, 500)
