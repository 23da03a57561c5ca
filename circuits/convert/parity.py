"""Parity of our conversion against Hugging Face on random tiny local models (what `launch.demo` prints).

    from circuits.convert import parity
    rows = [parity.parity(name, tmp_dir) for name in fixtures.FIXTURES]
    print(parity.table(rows, seconds))

parity(name, root) builds the seeded random HF model of fixture `name` (circuits.convert.fixtures; never
downloads), saves it under root, converts it with circuits.convert.from_hf and returns
  d_logit = max |logit difference| over the B examples' logits (every position, vocabulary), and
  d_attn  = max |attention probability difference| (HF eager attention vs our captured rows) over all
            layers, heads and query positions,
both in fp32. TOLERANCES are the limits the table checks (logits 1e-4, attention 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOLERANCES = dict(d_logit=1e-4, d_attn=1e-5)


def parity(name: str, root: Path, *, seed: int = 0, batch: int = 2, seq_len: int = 16) -> dict:
  """Parity figures of one fixture: max |logit diff|, max |attention diff| over all layers/heads/queries."""
  from flax import nnx

  from circuits.convert import fixtures as fx
  from circuits.convert import from_hf
  from circuits.models import Capture

  path = fx.make_hf_dir(Path(root) / name, name, seed=seed)
  hf = fx.load_hf_model(path)
  cfg, model = from_hf(path)
  tokens_BxT = np.random.RandomState(seed).randint(0, cfg.vocab_size, (batch, seq_len))
  logits_ref, attn_ref = fx.hf_forward(hf, tokens_BxT)
  attn_LxBxHxTxS = np.stack(attn_ref)
  # one call: example b*T + q asks for query position q of example b
  tiled_NxT = np.repeat(tokens_BxT, seq_len, axis=0)
  query_N = np.tile(np.arange(seq_len), batch)
  out = nnx.jit(lambda m, t, q: m(t, Capture(query_pos_B=q)))(model, tiled_NxT, query_N)
  rows_BxTxLxHxS = np.asarray(out.rows_BxLxHxS).reshape(batch, seq_len, *out.rows_BxLxHxS.shape[1:])
  ref_BxTxLxHxS = attn_LxBxHxTxS.transpose(1, 3, 0, 2, 4)
  d_attn = float(np.abs(rows_BxTxLxHxS - ref_BxTxLxHxS).max())
  d_logit = float(np.abs(np.asarray(out.logits_BxTxV)[::seq_len] - logits_ref).max())
  return dict(fixture=name, family=cfg.family, heads=f"{cfg.n_heads}/{cfg.kv_heads}",
              rotary=cfg.rotary_pct, clip=cfg.clip_qkv, experts=f"{cfg.n_experts}/{cfg.top_k}" if cfg.is_moe else "-",
              d_logit=d_logit, d_attn=d_attn)


def ok(row: dict) -> bool:
  return row["d_logit"] <= TOLERANCES["d_logit"] and row["d_attn"] <= TOLERANCES["d_attn"]


def table(rows, seconds: float) -> str:
  """The demo's text table of parity rows (one line per fixture, tolerances and wall time last)."""
  lines = ["HF (transformers, torch fp32, eager attention) vs circuits (JAX fp32), random tokens B=2, T=16",
           f"{'fixture':<18}{'family':<8}{'H/G':<6}{'rotary':<8}{'clip':<6}{'E/k':<6}"
           f"{'max|dlogit|':>13}{'max|dattn|':>13}  ok"]
  for r in rows:
    lines.append(f"{r['fixture']:<18}{r['family']:<8}{r['heads']:<6}{r['rotary']:<8}{str(r['clip']):<6}"
                 f"{r['experts']:<6}{r['d_logit']:>13.2e}{r['d_attn']:>13.2e}  {'yes' if ok(r) else 'NO'}")
  lines.append(f"tolerances: logits 1e-4, attention 1e-5; {seconds:.1f} s")
  return "\n".join(lines)


def run_all(root) -> list[dict]:
  """parity() of every fixture, built under `root`."""
  from circuits.convert.fixtures import FIXTURES
  return [parity(name, Path(root)) for name in FIXTURES]
