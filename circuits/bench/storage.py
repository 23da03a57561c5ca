"""I/O benchmarks: Hugging Face conversion MB/s; Orbax train-state checkpoint save (blocking, total) and
restore MB/s."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np

from circuits.bench.harness import Settings, _median, _now
from circuits.bench.train import run_config

def _nbytes(tree) -> int:
  return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes for x in jax.tree.leaves(tree)))


def bench_conversion(st: Settings, tmp: Path) -> dict:
  """load_hf (read + transform) MB/s of a random GPT-NeoX checkpoint; save_converted / load_converted MB/s."""
  from circuits.convert import load_converted, load_hf, save_converted
  from circuits.convert import fixtures as F

  dims = dict(st.conv_dims)
  if dims:
    dims.setdefault("max_position_embeddings", 2048)
  hf_dir = F.make_hf_dir(tmp / "conv_hf", "neox_rot25", std=0.02, **dims)
  read, save, load = [], [], []
  info = None
  for i in range(1 + st.io_repeats):
    t0 = _now()
    cfg, params, info = load_hf(hf_dir)
    read.append(_now() - t0)
    out = tmp / f"conv_out_{i}"
    t0 = _now()
    save_converted(out, cfg, params)
    save.append(_now() - t0)
    t0 = _now()
    _, model = load_converted(out)
    jax.block_until_ready(jax.tree.leaves(model))
    load.append(_now() - t0)
    shutil.rmtree(out)
  mb_file, mb_params = info["bytes_read"] / 1e6, _nbytes(params) / 1e6
  r, s, l = _median(read[1:]), _median(save[1:]), _median(load[1:])
  return dict(model=f"GPT-NeoX fixture {dims or 'tiny'}", file_mb=mb_file, params_mb=mb_params, warmup=1,
              repeats=st.io_repeats, read_convert_s=r, save_s=s, load_s=l,
              ratios=dict(read_convert_mb_per_s=mb_file / r, save_converted_mb_per_s=mb_params / s,
                          load_converted_mb_per_s=mb_params / l))


def bench_checkpoint(st: Settings, tmp: Path) -> dict:
  """Orbax train-state checkpoint (circuits.train.checkpoint): async save blocking part and total; restore."""
  from circuits.train import checkpoint as ckpt
  from circuits.train import setup

  s = setup(run_config("pythia", st.ckpt_size, 1, 16))
  state = s.init()
  jax.block_until_ready(state)
  mb = _nbytes(state) / 1e6
  steps = list(range(1, 2 + st.io_repeats))
  mgr = ckpt.make_manager(tmp / "ckpt", permanent=steps, resume_every=0, keep_resume=1, async_save=True)
  block, total, restore = [], [], []
  try:
    for step in steps:
      t0 = _now()
      ckpt.save(mgr, step, state, dict(step=step), force=True)
      block.append(_now() - t0)
      mgr.wait_until_finished()
      total.append(_now() - t0)
    for step in steps:
      t0 = _now()
      restored, _ = ckpt.restore(mgr, step, s.abstract_state)
      jax.block_until_ready(restored)
      restore.append(_now() - t0)
      del restored
  finally:
    mgr.close()
  b, t, r = _median(block[1:]), _median(total[1:]), _median(restore[1:])
  return dict(state=f"pythia {st.ckpt_size} train state (params + AdamW moments)", state_mb=mb, warmup=1,
              repeats=st.io_repeats, save_blocking_s=b, save_total_s=t, restore_s=r,
              ratios=dict(save_blocking_mb_per_s=mb / b, save_total_mb_per_s=mb / t, restore_mb_per_s=mb / r,
                          blocking_over_total=b / t))
