"""Random tiny Hugging Face checkpoints, built locally (never downloaded), for parity and conversion tests.

    from circuits.convert.fixtures import FIXTURES, make_hf_dir, to_old_format
    path = make_hf_dir(tmp_path / "olmoe", "olmoe_gqa_top3")   # save_pretrained'ed, safetensors
    model = load_hf_model(path)                                   # the HF torch model (eval, fp32, eager)
    old = to_old_format(path, tmp_path / "old", bin=True, shard=False, fused_experts=True)

FIXTURES maps a name to (model_type, config kwargs). Every fixture is seeded (torch.manual_seed) and every
parameter -- norms and biases included -- is re-drawn from a normal with std `std` (default 0.2; norm gains 1 + normal), so a
conversion that drops a norm weight or a bias cannot pass parity by accident. Sizes: d_model 32-64,
2 layers, vocab 128. Requires torch and transformers (the tests, launch.demo and circuits.bench's conversion
figures use them; imported lazily, so importing this module needs neither).

Covered: GPT-NeoX (multi-head only: its fused QKV has no GQA) with rotary fraction 0.25 and 1.0,
parallel and sequential residual; OLMo with MHA and GQA, clip_qkv on/off, rotary 1.0; OLMoE with
MHA/GQA, 4-8 experts, top-k 2-3, norm_topk_prob on/off, clip_qkv on/off.

`to_old_format` rewrites a fixture directory the way older exports look: the published Pythia config
spellings (`rotary_pct`, `rotary_emb_base`, top-level `rope_theta` for OLMo/OLMoE), OLMoE experts per
expert (`mlp.experts.{e}.gate_proj.weight` ...) or fused (`mlp.experts.gate_up_proj` [E, 2F, D]),
a sharded `model.safetensors.index.json`, or a single `pytorch_model.bin`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

VOCAB = 128

_NEOX = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=64, layer_norm_eps=1e-5,
             hidden_act="gelu", attention_bias=True, tie_word_embeddings=False)
_OLMO = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=False,
             pad_token_id=1, eos_token_id=2)
_OLMOE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=24, max_position_embeddings=64, rms_norm_eps=1e-5,
              tie_word_embeddings=False, pad_token_id=1, eos_token_id=2)

FIXTURES: dict[str, tuple[str, dict]] = {
    "neox_rot25": ("gpt_neox", dict(_NEOX, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                partial_rotary_factor=0.25))),
    "neox_rot100_seq": ("gpt_neox", dict(_NEOX, use_parallel_residual=False,
                                         rope_parameters=dict(rope_type="default", rope_theta=500.0,
                                                              partial_rotary_factor=1.0))),
    "olmo_mha_clip": ("olmo", dict(_OLMO, clip_qkv=1.0,
                                   rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "olmo_gqa_noclip": ("olmo", dict(_OLMO, num_key_value_heads=2, clip_qkv=None,
                                     rope_parameters=dict(rope_type="default", rope_theta=1000.0))),
    "olmoe_mha_top2": ("olmoe", dict(_OLMOE, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
                                     rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "olmoe_gqa_top3": ("olmoe", dict(_OLMOE, num_key_value_heads=2, num_experts=8, num_experts_per_tok=3,
                                     norm_topk_prob=True, clip_qkv=1.0,
                                     rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
}

FAMILY_OF_TYPE = {"gpt_neox": "pythia", "olmo": "olmo", "olmoe": "olmoe"}


def _classes(model_type: str):
  import transformers as tf

  return {"gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM),
          "olmo": (tf.OlmoConfig, tf.OlmoForCausalLM),
          "olmoe": (tf.OlmoeConfig, tf.OlmoeForCausalLM)}[model_type]


def make_hf_model(name: str, *, seed: int = 0, std: float = 0.2, **overrides):
  """The random HF torch model of fixture `name` (fp32, eval mode, eager attention)."""
  import torch

  model_type, kw = FIXTURES[name]
  config_cls, model_cls = _classes(model_type)
  config = config_cls(**{**kw, **overrides})
  config._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = model_cls(config).to(torch.float32).eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      p.normal_(0.0, std)
      if "norm" in pname and pname.endswith("weight"):  # norm gains around 1, still random
        p.add_(1.0)
  return model


def make_hf_dir(path, name: str, *, seed: int = 0, std: float = 0.2, **overrides) -> Path:
  """save_pretrained a random fixture model into `path` (safetensors, one file). Returns the path."""
  path = Path(path)
  model = make_hf_model(name, seed=seed, std=std, **overrides)
  model.save_pretrained(path, safe_serialization=True)
  return path


def load_hf_model(path):
  """The saved HF model back from `path` (fp32, eval, eager attention) -- the parity reference."""
  import transformers as tf
  import torch

  model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                  attn_implementation="eager")
  return model.eval()


def hf_forward(model, tokens_BxT: np.ndarray):
  """(logits_BxTxV, attentions [L] of [B, H, T, S]) as numpy fp32 arrays."""
  import torch

  with torch.no_grad():
    out = model(torch.as_tensor(np.asarray(tokens_BxT), dtype=torch.long), output_attentions=True)
  return out.logits.float().numpy(), [a.float().numpy() for a in out.attentions]


def read_tensors(path) -> dict[str, np.ndarray]:
  """All tensors of a safetensors checkpoint directory (single file or sharded), by FILE key."""
  from safetensors.numpy import load_file

  path = Path(path)
  out = {}
  for f in sorted(path.glob("*.safetensors")):
    out.update(load_file(str(f)))
  return out


def to_old_format(src, dst, *, old_config: bool = True, fused_experts: bool | None = None,
                  shard: bool = False, bin: bool = False, buffers: bool = False) -> Path:
  """Copy fixture dir `src` to `dst` rewritten into an older export format.

  old_config: published spellings (GPT-NeoX `rotary_pct` / `rotary_emb_base`, no `rope_parameters`;
    OLMo/OLMoE top-level `rope_theta`).
  fused_experts: OLMoE only; True -> `mlp.experts.gate_up_proj` [E, 2F, D] / `mlp.experts.down_proj`
    [E, D, F]; False -> per expert `mlp.experts.{e}.{gate,up,down}_proj.weight`; None -> as saved.
  shard: split the tensors over two files plus `model.safetensors.index.json`.
  bin: write one `pytorch_model.bin` (torch.save of the state dict) instead of safetensors.
  buffers: add the non-parameter buffers old exports carry (GPT-NeoX `attention.bias` causal mask,
    `attention.masked_bias`, `attention.rotary_emb.inv_freq`; OLMo/OLMoE `self_attn.rotary_emb.inv_freq`).
  """
  from safetensors.numpy import save_file

  src, dst = Path(src), Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for f in src.iterdir():
    if f.suffix not in (".safetensors",) and f.name != "model.safetensors.index.json" and f.is_file():
      shutil.copy(f, dst / f.name)
  cfg = json.loads((src / "config.json").read_text())
  if old_config:
    rope = cfg.pop("rope_parameters", None) or {}
    if cfg["model_type"] == "gpt_neox":
      cfg["rotary_pct"] = rope.get("partial_rotary_factor", 0.25)
      cfg["rotary_emb_base"] = rope.get("rope_theta", 10000.0)
    else:
      cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
      cfg["rope_scaling"] = None
  (dst / "config.json").write_text(json.dumps(cfg, indent=2))

  tensors = read_tensors(src)
  if fused_experts is not None:
    tensors = _experts_layout(tensors, fused=fused_experts)
  if buffers:
    tensors = _add_buffers(tensors, cfg)
  if bin:
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
               dst / "pytorch_model.bin")
  elif shard:
    keys = sorted(tensors)
    half = len(keys) // 2
    files = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for fname, ks in files.items():
      save_file({k: np.ascontiguousarray(tensors[k]) for k in ks}, str(dst / fname), metadata={"format": "pt"})
      weight_map.update({k: fname for k in ks})
    total = int(sum(v.nbytes for v in tensors.values()))
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  else:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
  return dst


def _experts_layout(tensors: dict, *, fused: bool) -> dict:
  """Rewrite OLMoE expert tensors between the per-expert and the fused layouts (both directions)."""
  import re

  out = dict(tensors)
  layers = sorted({int(m.group(1)) for k in tensors for m in [re.match(r"model\.layers\.(\d+)\.mlp\.experts", k)] if m})
  for i in layers:
    pre = f"model.layers.{i}.mlp.experts"
    has_fused = f"{pre}.gate_up_proj" in tensors
    if fused and not has_fused:
      n = len({k for k in tensors if re.match(rf"{re.escape(pre)}\.\d+\.gate_proj\.weight$", k)})
      gate = [out.pop(f"{pre}.{e}.gate_proj.weight") for e in range(n)]  # [F, D] each
      up = [out.pop(f"{pre}.{e}.up_proj.weight") for e in range(n)]
      down = [out.pop(f"{pre}.{e}.down_proj.weight") for e in range(n)]  # [D, F]
      out[f"{pre}.gate_up_proj"] = np.stack([np.concatenate([g, u], 0) for g, u in zip(gate, up)])
      out[f"{pre}.down_proj"] = np.stack(down)
    elif not fused and has_fused:
      gu = out.pop(f"{pre}.gate_up_proj")  # [E, 2F, D]
      down = out.pop(f"{pre}.down_proj")  # [E, D, F]
      f = gu.shape[1] // 2
      for e in range(gu.shape[0]):
        out[f"{pre}.{e}.gate_proj.weight"] = gu[e, :f]
        out[f"{pre}.{e}.up_proj.weight"] = gu[e, f:]
        out[f"{pre}.{e}.down_proj.weight"] = down[e]
  return out


def _add_buffers(tensors: dict, cfg: dict) -> dict:
  """The derived buffers an old export stores next to the parameters (a converter must skip them)."""
  import re

  out = dict(tensors)
  layers = sorted({int(m.group(1)) for k in tensors for m in [re.search(r"layers\.(\d+)\.", k)] if m})
  n = cfg.get("max_position_embeddings", 64)
  for i in layers:
    if cfg["model_type"] == "gpt_neox":
      pre = f"gpt_neox.layers.{i}.attention"
      out[f"{pre}.bias"] = np.tril(np.ones((n, n), bool))[None, None]
      out[f"{pre}.masked_bias"] = np.array(-1e9, np.float32)
      out[f"{pre}.rotary_emb.inv_freq"] = np.ones((4,), np.float32)
    else:
      out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = np.ones((4,), np.float32)
  return out
