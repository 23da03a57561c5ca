"""Hugging Face checkpoint directory -> (ModelConfig, params) for model_type gpt_neox, olmo, olmoe.

    cfg, model = from_hf("path/to/pythia-1b-step3000")   # model(tokens_BxT).logits_BxTxV

config.json is read in both spellings: published Pythia (`rotary_pct`, `rotary_emb_base`) and
transformers 5 (`rope_parameters.partial_rotary_factor`, `rope_parameters.rope_theta`); OLMo/OLMoE may
carry `rope_theta` at the top level. Tensors are read by FILE key (circuits.convert.reader) and mapped by
the key tables of circuits.convert.tables; anything missing, mis-shaped or unknown is a ConversionError.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from circuits.convert import tables
from circuits.convert.reader import Checkpoint, ConversionError
from circuits.models.config import ConfigError, ModelConfig

SUPPORTED = tuple(tables.TABLES)


def read_hf_config(path) -> dict:
  path = Path(path)
  if not path.is_dir():
    found = "a file" if path.exists() else "nothing"
    raise ConversionError(f"{path}: not a checkpoint directory (expected a folder with config.json and "
                          f"weights; found {found})")
  f = path / "config.json"
  if not f.exists():
    raise ConversionError(f"{path}: not a checkpoint directory (no config.json; found "
                          f"{sorted(x.name for x in path.iterdir())})")
  try:
    return json.loads(f.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{f}: not valid JSON ({e})") from e


def _rope(hf: dict, default_pct: float) -> tuple[float, float]:
  """(rotary fraction, theta) from either spelling; rejects rope scaling we do not implement."""
  rp = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  for d in (rp, scaling):
    kind = d.get("rope_type", d.get("type", "default"))
    if kind not in ("default", None):
      raise ConversionError(f"config.json: rope_type {kind!r} is not supported (expected 'default')")
  pct = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", default_pct)))
  theta = rp.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
  return float(pct), float(theta)


def _expect(hf: dict, field: str, allowed, default):
  got = hf.get(field, default)
  if got not in allowed:
    raise ConversionError(f"config.json: {field} = {got!r} is not supported (expected one of {list(allowed)})")


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """Our ModelConfig from a HF config.json dict (gpt_neox / olmo / olmoe)."""
  mt = hf.get("model_type")
  if mt not in SUPPORTED:
    raise ConversionError(f"config.json: unsupported model_type {mt!r} (expected one of {list(SUPPORTED)})")
  try:
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    common = dict(vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["num_hidden_layers"]),
                  n_heads=h, d_ff=int(hf["intermediate_size"]))
  except KeyError as e:
    raise ConversionError(f"config.json: missing field {e.args[0]!r} for model_type {mt!r}") from e
  _expect(hf, "tie_word_embeddings", (False,), False)
  if hf.get("head_dim") not in (None, d // h):
    raise ConversionError(f"config.json: head_dim = {hf['head_dim']} (expected hidden_size // heads = {d // h})")
  if mt == "gpt_neox":
    pct, theta = _rope(hf, 0.25)
    _expect(hf, "hidden_act", ("gelu",), "gelu")
    _expect(hf, "attention_bias", (True,), True)
    fields = dict(common, family="pythia", rotary_pct=pct, rope_theta=theta,
                  norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
                  parallel_residual=bool(hf.get("use_parallel_residual", True)), qkv_bias=True, fused_qkv=True,
                  qk_norm=False)
  else:
    pct, theta = _rope(hf, 1.0)
    _expect(hf, "hidden_act", ("silu",), "silu")
    _expect(hf, "attention_bias", (False, None), False)
    clip = hf.get("clip_qkv")
    fields = dict(common, family="olmo", n_kv_heads=int(hf.get("num_key_value_heads") or h), rotary_pct=pct,
                  rope_theta=theta, norm_eps=1e-5, clip_qkv=None if clip is None else float(clip), fused_qkv=False,
                  qk_norm=False)
    if mt == "olmoe":
      fields.update(family="olmoe", qk_norm=True, norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
                    n_experts=int(hf.get("num_experts", hf.get("num_local_experts", 64))),
                    top_k=int(hf.get("num_experts_per_tok", 8)),
                    norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
                    router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.01)))
  fields.update(overrides)
  try:
    return ModelConfig(**fields)
  except ConfigError as e:
    raise ConversionError(f"config.json: {e}") from e


def _abstract_params(cfg: ModelConfig) -> dict:
  """Our parameter tree as a flat {dotted path: shape} (nothing allocated)."""
  import jax
  from flax import nnx

  from circuits.models import build_model

  model = nnx.eval_shape(lambda: build_model(cfg, rngs=0))
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
    flat[".".join(str(getattr(p, "key", p)) for p in path)] = tuple(leaf.shape)
  return flat


def _ours_for(path: str, cfg: ModelConfig) -> list[tuple[str, dict]]:
  if "{layer}" in path:
    return [(path.format(layer=i), {"layer": i}) for i in range(cfg.n_layers)]
  return [(path, {})]


def convert_tensors(ckpt: Checkpoint, model_type: str, cfg: ModelConfig, *, dtype="float32", place=None) -> dict:
  """Flat {our dotted path: np.ndarray} from the checkpoint's tensors, by the family's key table.

  place: optional fn applied to each converted array as soon as it is ready (e.g. jax.device_put), so the
  host copy is freed tensor by tensor instead of holding the whole model twice."""
  table = tables.TABLES[model_type]
  shapes = _abstract_params(cfg)
  out, used = {}, set()
  np_dtype = np.dtype(dtype) if dtype != "bfloat16" else None

  def cast(x):
    if np_dtype is None:
      import ml_dtypes
      return np.asarray(x, dtype=ml_dtypes.bfloat16)
    return np.asarray(x, dtype=np_dtype)

  for template, alternatives in table.items():
    for ours, fmt in _ours_for(template, cfg):
      if ours not in shapes:
        raise ConversionError(f"internal: key table names {ours}, which is not a parameter of {cfg.family}")
      shape = shapes[ours]
      chosen = None
      for key_t, tr in alternatives:
        probe = key_t.format(**fmt, expert=0)
        if probe in ckpt:
          chosen = (key_t, tr)
          break
      if chosen is None:
        tried = " or ".join(k.format(**fmt, expert=0) for k, _ in alternatives)
        raise ConversionError(f"{ckpt.path}: missing tensor {tried} (for our {ours}, shape {shape})")
      key_t, tr = chosen
      if "{expert}" in key_t:
        parts = []
        for e in range(cfg.n_experts):
          key = key_t.format(**fmt, expert=e)
          if key not in ckpt:
            raise ConversionError(f"{ckpt.path}: missing tensor {key} (expert {e} of n_experts={cfg.n_experts})")
          parts.append(tr.fn(_checked(ckpt, key, tr.hf_shape(shape)), shape))
          used.add(key)
        value = np.stack(parts)
      else:
        key = key_t.format(**fmt)
        value = tr.fn(_checked(ckpt, key, tr.hf_shape(shape)), shape)
        used.add(key)
      assert value.shape == shape, (ours, value.shape, shape)
      out[ours] = cast(value) if place is None else place(cast(value))
      del value
  extra = [k for k in ckpt.keys() if k not in used and not tables.is_skipped(k)]
  if extra:
    raise ConversionError(f"{ckpt.file_of(extra[0])}: unknown tensor(s) {extra[:5]} (expected only the "
                          f"{model_type} keys of circuits/convert/tables.py and skipped buffers)")
  missing = sorted(set(shapes) - set(out))
  if missing:
    raise ConversionError(f"internal: no key-table entry fills our parameter(s) {missing}")
  return out


def _checked(ckpt: Checkpoint, key: str, expected: tuple) -> np.ndarray:
  found = ckpt.shape(key)
  if tuple(found) != tuple(expected):
    raise ConversionError(f"{ckpt.file_of(key)}: tensor {key} has shape {tuple(found)}, expected "
                          f"{tuple(expected)} from config.json")
  return ckpt.get(key)


def nest(flat: dict) -> dict:
  """{'blocks.0.attn.q': x} -> {'blocks': {0: {'attn': {'q': x}}}} (list indices as ints)."""
  root: dict = {}
  for path, v in flat.items():
    node = root
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return root


def model_from_params(cfg: ModelConfig, params: dict):
  """Our model with `params` (nested pure dict, as nnx.to_pure_dict gives) and nothing random allocated."""
  import jax.numpy as jnp
  from flax import nnx

  from circuits.models import build_model

  abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=0))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, _tree_map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def _tree_map(fn, tree):
  if isinstance(tree, dict):
    return {k: _tree_map(fn, v) for k, v in tree.items()}
  return fn(tree)


def load_hf(path, *, dtype="float32", place=None, **overrides) -> tuple[ModelConfig, dict, dict]:
  """(cfg, nested params of numpy arrays -- or of `place`'s results --, info) from a HF checkpoint directory.

  info: model_type, bytes_read, seconds (open + read + transform), mb_per_s, files.
  """
  hf = read_hf_config(path)
  cfg = config_from_hf(hf, param_dtype=dtype, **overrides)
  t0 = time.perf_counter()
  ckpt = Checkpoint(path)
  flat = convert_tensors(ckpt, hf["model_type"], cfg, dtype=dtype, place=place)
  dt = time.perf_counter() - t0
  info = dict(model_type=hf["model_type"], bytes_read=ckpt.bytes_read, seconds=dt,
              mb_per_s=ckpt.bytes_read / 1e6 / max(dt, 1e-9),
              files=sorted({ckpt.file_of(k).name for k in ckpt.keys()}))
  return cfg, nest(flat), info


def from_hf(path, *, dtype="float32", **overrides):
  """(ModelConfig, model) from a HF checkpoint directory; `model(tokens_BxT).logits_BxTxV`.

  dtype: parameter dtype of the converted model (float32 for parity; bfloat16 halves memory).
  overrides: ModelConfig fields to set on top of config.json (e.g. moe_impl='dense').
  """
  import jax  # pylint: disable=import-outside-toplevel
  # each tensor goes to the device as soon as it is converted: peak host memory is about the model once
  cfg, params, _ = load_hf(path, dtype=dtype, place=jax.device_put, **overrides)
  return cfg, model_from_params(cfg, params)
