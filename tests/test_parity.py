"""Parity: converted checkpoints vs the Hugging Face torch models they came from, in fp32.

Random tiny HF models (circuits/convert/fixtures.py: every weight random, norms and biases included) for each
family and config; logits within 1e-4 and attention probabilities (HF eager, output_attentions) within
1e-5 of our rows at every query position. Old-format exports (published config spellings, fused or
per-expert OLMoE experts, sharded index, pytorch_model.bin) convert to the same parameters and logits.
"""

import numpy as np
import pytest
from flax import nnx

from circuits.convert import from_hf, load_hf
from circuits.convert import fixtures as fx
from circuits.models import Capture

B, T = 2, 12
LOGIT_TOL, ATTN_TOL = 1e-4, 1e-5


@nnx.jit
def _forward(model, tokens_NxT, query_N):
  out = model(tokens_NxT, Capture(query_pos_B=query_N))
  return out.logits_BxTxV, out.rows_BxLxHxS


def parity_figures(path, seed=0):
  """(max |logit diff|, max |attention diff|) of the converted model at `path` vs HF, all queries."""
  hf = fx.load_hf_model(path)
  cfg, model = from_hf(path)
  tokens_BxT = np.random.RandomState(seed).randint(0, cfg.vocab_size, (B, T))
  logits_ref_BxTxV, attn_ref = fx.hf_forward(hf, tokens_BxT)
  # example b*T + q captures query q of example b: every row of every head in one call
  logits_NxTxV, rows_NxLxHxS = _forward(model, np.repeat(tokens_BxT, T, 0), np.tile(np.arange(T), B))
  rows_BxTxLxHxS = np.asarray(rows_NxLxHxS).reshape(B, T, cfg.n_layers, cfg.n_heads, T)
  ref_BxTxLxHxS = np.stack(attn_ref).transpose(1, 3, 0, 2, 4)
  d_logit = np.abs(np.asarray(logits_NxTxV)[::T] - logits_ref_BxTxV).max()
  return float(d_logit), float(np.abs(rows_BxTxLxHxS - ref_BxTxLxHxS).max())


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {name: fx.make_hf_dir(root / name, name) for name in fx.FIXTURES}


@pytest.mark.parametrize("name", list(fx.FIXTURES))
def test_parity(hf_dirs, name):
  d_logit, d_attn = parity_figures(hf_dirs[name])
  assert d_logit <= LOGIT_TOL, f"{name}: max |logit diff| {d_logit:.2e} > {LOGIT_TOL}"
  assert d_attn <= ATTN_TOL, f"{name}: max |attention diff| {d_attn:.2e} > {ATTN_TOL}"


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


OLD_FORMATS = [
    ("neox_rot25", dict(old_config=True)),
    ("neox_rot100_seq", dict(old_config=True, bin=True, buffers=True)),
    ("olmo_gqa_noclip", dict(old_config=True, shard=True, buffers=True)),
    ("olmoe_gqa_top3", dict(old_config=True, fused_experts=True)),
    ("olmoe_mha_top2", dict(old_config=True, fused_experts=True, shard=True)),
    ("olmoe_mha_top2", dict(old_config=False, fused_experts=False, bin=True)),
]


@pytest.mark.parametrize("name,fmt", OLD_FORMATS, ids=[f"{n}-{'-'.join(k for k, v in f.items() if v)}"
                                                      for n, f in OLD_FORMATS])
def test_old_format_converts_the_same(hf_dirs, tmp_path, name, fmt):
  old = fx.to_old_format(hf_dirs[name], tmp_path / "old", **fmt)
  cfg_new, params_new, _ = load_hf(hf_dirs[name])
  cfg_old, params_old, _ = load_hf(old)
  assert cfg_old == cfg_new
  flat_new, flat_old = _flat(params_new), _flat(params_old)
  assert sorted(flat_new) == sorted(flat_old)
  for k in flat_new:
    np.testing.assert_array_equal(flat_old[k], flat_new[k], err_msg=k)
  d_logit, d_attn = parity_figures(old)  # the old directory against HF loading that same directory
  assert d_logit <= LOGIT_TOL and d_attn <= ATTN_TOL, (d_logit, d_attn)
