"""Temporary `make run`: random tiny HF models of each family -> convert -> parity table (< 1 min).

  python -m launch.demo

Builds one seeded random HF model per fixture of tests/hf_fixtures.py (never downloads), saves it, converts
it with circuits.convert.from_hf and prints max |logit difference| and max |attention probability
difference| (HF eager attention vs our rows at every query position) in fp32.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hf_fixtures lives beside launch/


def parity(name: str, root: Path, *, seed: int = 0, batch: int = 2, seq_len: int = 16) -> dict:
  """Parity figures of one fixture: max |logit diff|, max |attention diff| over all layers/heads/queries."""
  from circuits.convert import from_hf
  from tests import hf_fixtures as fx

  path = fx.make_hf_dir(root / name, name, seed=seed)
  hf = fx.load_hf_model(path)
  cfg, model = from_hf(path)
  tokens_BxT = np.random.RandomState(seed).randint(0, cfg.vocab_size, (batch, seq_len))
  logits_ref, attn_ref = fx.hf_forward(hf, tokens_BxT)
  attn_LxBxHxTxS = np.stack(attn_ref)
  # one call: example b*T + q asks for query position q of example b
  tiled_NxT = np.repeat(tokens_BxT, seq_len, axis=0)
  query_N = np.tile(np.arange(seq_len), batch)
  from flax import nnx

  out = nnx.jit(lambda m, t, q: m(t, query_pos_B=q))(model, tiled_NxT, query_N)
  rows_BxTxLxHxS = np.asarray(out.rows_BxLxHxS).reshape(batch, seq_len, *out.rows_BxLxHxS.shape[1:])
  ref_BxTxLxHxS = attn_LxBxHxTxS.transpose(1, 3, 0, 2, 4)
  d_attn = float(np.abs(rows_BxTxLxHxS - ref_BxTxLxHxS).max())
  d_logit = float(np.abs(np.asarray(out.logits_BxTxV)[::seq_len] - logits_ref).max())
  return dict(fixture=name, family=cfg.family, heads=f"{cfg.n_heads}/{cfg.kv_heads}",
              rotary=cfg.rotary_pct, clip=cfg.clip_qkv, experts=f"{cfg.n_experts}/{cfg.top_k}" if cfg.is_moe else "-",
              d_logit=d_logit, d_attn=d_attn)


def main():
  import os

  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  import transformers

  transformers.utils.logging.disable_progress_bar()
  from tests.hf_fixtures import FIXTURES

  t0 = time.perf_counter()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in FIXTURES:
      rows.append(parity(name, Path(tmp)))
  print("HF (transformers, torch fp32, eager attention) vs circuits (JAX fp32), random tokens B=2, T=16")
  print(f"{'fixture':<18}{'family':<8}{'H/G':<6}{'rotary':<8}{'clip':<6}{'E/k':<6}"
        f"{'max|dlogit|':>13}{'max|dattn|':>13}  ok")
  ok_all = True
  for r in rows:
    ok = r["d_logit"] <= 1e-4 and r["d_attn"] <= 1e-5
    ok_all &= ok
    print(f"{r['fixture']:<18}{r['family']:<8}{r['heads']:<6}{r['rotary']:<8}{str(r['clip']):<6}{r['experts']:<6}"
          f"{r['d_logit']:>13.2e}{r['d_attn']:>13.2e}  {'yes' if ok else 'NO'}")
  print(f"tolerances: logits 1e-4, attention 1e-5; {time.perf_counter() - t0:.1f} s")
  return 0 if ok_all else 1


if __name__ == "__main__":
  sys.exit(main())
