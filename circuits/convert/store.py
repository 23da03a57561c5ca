"""Converted checkpoints on disk: `<out>/params` (Orbax StandardCheckpointer) + `<out>/config.json`.

    save_converted(out, cfg, params, source={...})   # what launch.convert writes
    cfg, model = load_converted(out)                  # what the rest of the project loads

config.json holds {"model": ModelConfig fields, "source": provenance (HF dir, model_type, ...)}.
Params are our parameter tree as nested dicts with string keys (list indices as "0", "1", ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from circuits.convert.reader import ConversionError
from circuits.models.config import ModelConfig

FORMAT = "circuits.converted/1"


def _str_keys(tree):
  return {str(k): _str_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def int_keys(tree):
  """A nested params dict with digit-string keys (list indices as Orbax stores them) turned into ints."""
  if not isinstance(tree, dict):
    return tree
  return {(int(k) if isinstance(k, str) and k.isdigit() else k): int_keys(v) for k, v in tree.items()}


def save_converted(out, cfg: ModelConfig, params: dict, *, source: dict | None = None) -> Path:
  """Write params (nested dict of arrays) with Orbax and our config as JSON beside them."""
  import orbax.checkpoint as ocp

  out = Path(out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  if (out / "params").exists():
    raise ConversionError(f"{out / 'params'}: already exists (choose a new --out or remove it)")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(out / "params", _str_keys(params))
  ckptr.wait_until_finished()
  ckptr.close()
  meta = {"format": FORMAT, "model": cfg.to_dict(), "source": source or {}}
  (out / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
  return out


def read_converted_config(out) -> ModelConfig:
  f = Path(out) / "config.json"
  if not f.exists():
    raise ConversionError(f"{out}: not a converted checkpoint (no config.json; run python -m launch.convert)")
  meta = json.loads(f.read_text())
  if meta.get("format") != FORMAT:
    raise ConversionError(f"{f}: format {meta.get('format')!r}, expected {FORMAT!r}")
  return ModelConfig.from_dict(meta["model"])


def load_params(out, cfg: ModelConfig | None = None) -> dict:
  """The nested params (int list indices) restored against our abstract parameter tree."""
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx

  from circuits.models import build_model

  out = Path(out).absolute()
  cfg = cfg or read_converted_config(out)
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=0)), nnx.Param))
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _str_keys(abstract))
  # read by this process alone: in a multi-process discovery sweep each process loads its own revisions, so
  # Orbax's default barriers across all processes would pair up different checkpoints (and hang)
  me = jax.process_index()
  ckptr = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))
  try:
    params = ckptr.restore(out / "params", target)
  except Exception as e:
    raise ConversionError(f"{out / 'params'}: cannot restore against {cfg.family} parameters: {e}") from e
  finally:
    ckptr.close()
  return int_keys(params)


def load_converted(out, **overrides):
  """(ModelConfig, model) from a `python -m launch.convert` output folder.

  overrides: ModelConfig fields that do not change parameter shapes (e.g. moe_impl, dtype, attention).
  """
  from circuits.convert.hf import model_from_params

  cfg = read_converted_config(out)
  params = load_params(out, cfg)
  cfg = cfg.replace(**overrides) if overrides else cfg
  return cfg, model_from_params(cfg, params)


def to_numpy(params: dict) -> dict:
  return {k: to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in params.items()}


def convert_dir(hf_dir, out, dtype: str = "float32", revision: str = "") -> dict:
  """Convert the Hugging Face directory `hf_dir` and save it to `out` (what `launch.convert` runs).

  Returns load_hf's info dict (model_type, files, bytes_read, seconds, mb_per_s, ...) plus save_seconds
  and cfg (the ModelConfig). Raises ConversionError naming the file/key, or when `out` holds params/.
  """
  import time

  from circuits.convert.hf import load_hf  # (hf imports this module)

  cfg, params, info = load_hf(hf_dir, dtype=dtype)
  t0 = time.perf_counter()
  save_converted(out, cfg, params, source=dict(hf_dir=str(hf_dir), model_type=info["model_type"],
                                               revision=revision, files=info["files"]))
  info["save_seconds"] = time.perf_counter() - t0
  info["cfg"] = cfg
  return info
