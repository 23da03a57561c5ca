"""Random checkpoints in the Hugging Face file format at any size, written tensor by tensor (no torch model).

    from circuits.convert import random_hf
    random_hf.write("ckpt/pythia-1b-random", random_hf.PUBLISHED["EleutherAI/pythia-1b"], dtype="float16")

For benchmarks and memory measurements of the 1B-shaped discovery path on a machine without the Hub: the
key names and HF shapes come from the same key tables the converter reads (circuits/convert/tables.py, the
first alternative of each entry: per-expert OLMoE keys), so a written checkpoint converts exactly as a
published one with the same config.json. Values: normal(0, std) for matrices, 1 + normal(0, std) for norm
gains, normal(0, std) for biases. Files are sharded (`model-0000i-of-0000n.safetensors` plus
`model.safetensors.index.json`) at about `shard_bytes` each; peak memory is about one shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from circuits.convert import tables
from circuits.convert.hf import _abstract_params, _ours_for, config_from_hf

# config.json fields of the published checkpoints (METHODS.md; the Hub's own files use these spellings).
PUBLISHED = {
    "EleutherAI/pythia-1b": dict(
        architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", vocab_size=50304, hidden_size=2048,
        num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192, rotary_pct=0.25,
        rotary_emb_base=10000, layer_norm_eps=1e-5, use_parallel_residual=True, hidden_act="gelu",
        max_position_embeddings=2048, tie_word_embeddings=False, torch_dtype="float16"),
    "allenai/OLMo-1B-0724-hf": dict(
        architectures=["OlmoForCausalLM"], model_type="olmo", vocab_size=50304, hidden_size=2048,
        num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16, intermediate_size=8192,
        clip_qkv=8.0, rope_theta=10000.0, hidden_act="silu", attention_bias=False,
        max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=1, eos_token_id=50279,
        torch_dtype="float32"),
    "allenai/OLMoE-1B-7B-0924": dict(
        architectures=["OlmoeForCausalLM"], model_type="olmoe", vocab_size=50304, hidden_size=2048,
        num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16, intermediate_size=1024,
        num_experts=64, num_experts_per_tok=8, norm_topk_prob=False, rms_norm_eps=1e-5, rope_theta=10000.0,
        hidden_act="silu", clip_qkv=None, router_aux_loss_coef=0.01, max_position_embeddings=4096,
        tie_word_embeddings=False, pad_token_id=1, eos_token_id=50279, torch_dtype="bfloat16"),
}


def tensor_specs(hf_config: dict) -> list[tuple[str, tuple]]:
  """(HF file key, HF shape) of every tensor of a checkpoint with this config.json, in layer order."""
  cfg = config_from_hf(hf_config)
  shapes = _abstract_params(cfg)
  table = tables.TABLES[hf_config["model_type"]]
  out = []
  for template, alternatives in table.items():
    key_t, tr = alternatives[0]
    for ours, fmt in _ours_for(template, cfg):
      shape = shapes[ours]
      if "{expert}" in key_t:
        out += [(key_t.format(**fmt, expert=e), tuple(tr.hf_shape(shape))) for e in range(cfg.n_experts)]
      else:
        out.append((key_t.format(**fmt), tuple(tr.hf_shape(shape))))
  layer = lambda k: int(k.split("layers.")[1].split(".")[0]) if "layers." in k else -1
  return sorted(out, key=lambda kv: layer(kv[0]))  # stable: embeddings first, then layer by layer


def _save(tensors: dict, f: Path, dtype: str) -> None:
  if dtype == "bfloat16":  # numpy's safetensors writer has no bfloat16; jax's has
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from safetensors.flax import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: jnp.asarray(v) for k, v in tensors.items()}, str(f), metadata={"format": "pt"})
  else:
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file(tensors, str(f), metadata={"format": "pt"})


def write(path, hf_config: dict, *, dtype: str = "float32", std: float = 0.02, seed: int = 0,
          shard_bytes: int = 2 * 2**30) -> Path:
  """Writes config.json and random sharded safetensors weights for `hf_config` into `path`. Returns path."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  specs = tensor_specs(hf_config)
  itemsize = np.dtype(np_dtype).itemsize
  shards, cur, size = [], [], 0
  for key, shape in specs:
    n = int(np.prod(shape)) * itemsize
    if cur and size + n > shard_bytes:
      shards.append(cur)
      cur, size = [], 0
    cur.append((key, shape))
    size += n
  shards.append(cur)
  rng = np.random.default_rng(seed)
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    tensors = {}
    for key, shape in shard:
      x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
      if "norm" in key and key.endswith("weight"):
        x += 1.0
      tensors[key] = x.astype(np_dtype)
      weight_map[key] = name
    _save(tensors, path / name, dtype)
    del tensors
  total = sum(int(np.prod(s)) * itemsize for _, s in specs)
  (path / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
  (path / "config.json").write_text(json.dumps(dict(hf_config, torch_dtype=dtype), indent=1))
  return path
