"""Conversion errors name the file or key and expected vs found; the CLI round trip keeps the logits."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from circuits.convert import ConversionError, convert_dir, from_hf, load_converted
from circuits.convert import fixtures as fx


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {"olmo": fx.make_hf_dir(root / "olmo", "olmo_gqa_noclip"),
          "olmoe": fx.make_hf_dir(root / "olmoe", "olmoe_mha_top2")}


def _copy(src_dir, dst):
  shutil.copytree(src_dir, dst)
  return dst


def _rewrite(d, fn):
  f = d / "model.safetensors"
  tensors = fn(dict(load_file(str(f))))
  save_file(tensors, str(f), metadata={"format": "pt"})


def test_not_a_checkpoint_directory(tmp_path):
  with pytest.raises(ConversionError, match="not a checkpoint directory") as e:
    from_hf(tmp_path / "nothing_here")
  assert "nothing_here" in str(e.value)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConversionError, match=r"no config\.json"):
    from_hf(tmp_path / "empty")


def test_no_weights(src, tmp_path):
  d = tmp_path / "w"
  d.mkdir()
  shutil.copy(src["olmo"] / "config.json", d / "config.json")
  with pytest.raises(ConversionError, match=r"no weights \(expected model\.safetensors"):
    from_hf(d)


def test_unsupported_model_type(src, tmp_path):
  d = _copy(src["olmo"], tmp_path / "llama")
  cfg = json.loads((d / "config.json").read_text())
  cfg["model_type"] = "llama"
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConversionError, match=r"unsupported model_type 'llama' \(expected one of \['gpt_neox', 'olmo', 'olmoe'\]"):
    from_hf(d)


def test_missing_tensor(src, tmp_path):
  d = _copy(src["olmo"], tmp_path / "missing")
  _rewrite(d, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.self_attn.k_proj.weight"})
  with pytest.raises(ConversionError, match=r"missing tensor model\.layers\.1\.self_attn\.k_proj\.weight "
                                            r"\(for our blocks\.1\.attn\.k, shape \(64, 2, 16\)\)"):
    from_hf(d)


def test_missing_expert(src, tmp_path):
  d = _copy(src["olmoe"], tmp_path / "missing_expert")
  _rewrite(d, lambda t: {k: v for k, v in t.items() if k != "model.layers.0.mlp.experts.3.up_proj.weight"})
  with pytest.raises(ConversionError, match=r"missing tensor model\.layers\.0\.mlp\.experts\.3\.up_proj\.weight "
                                            r"\(expert 3 of n_experts=4\)"):
    from_hf(d)


def test_misshaped_tensor(src, tmp_path):
  d = _copy(src["olmo"], tmp_path / "shape")
  _rewrite(d, lambda t: {**t, "model.layers.0.mlp.up_proj.weight": np.zeros((95, 64), np.float32)})
  with pytest.raises(ConversionError) as e:
    from_hf(d)
  msg = str(e.value)
  assert "model.safetensors" in msg and "model.layers.0.mlp.up_proj.weight" in msg
  assert "shape (95, 64), expected (96, 64)" in msg


def test_misshaped_fused_experts(src, tmp_path):
  old = fx.to_old_format(src["olmoe"], tmp_path / "fused", fused_experts=True)
  _rewrite(old, lambda t: {**t, "model.layers.1.mlp.experts.down_proj": np.zeros((4, 32, 23), np.float32)})
  with pytest.raises(ConversionError, match=r"model\.layers\.1\.mlp\.experts\.down_proj has shape \(4, 32, 23\), "
                                            r"expected \(4, 32, 24\)"):
    from_hf(old)


def test_truncated_safetensors(src, tmp_path):
  d = _copy(src["olmo"], tmp_path / "trunc")
  f = d / "model.safetensors"
  data = f.read_bytes()
  f.write_bytes(data[: len(data) - 1000])
  with pytest.raises(ConversionError) as e:
    from_hf(d)
  msg = str(e.value)
  assert "model.safetensors" in msg and "truncated" in msg
  assert f"expected {len(data)} bytes per its header; found {len(data) - 1000} bytes" in msg


def test_unknown_extra_tensor(src, tmp_path):
  d = _copy(src["olmo"], tmp_path / "extra")
  _rewrite(d, lambda t: {**t, "model.layers.0.self_attn.mystery.weight": np.zeros((2,), np.float32),
                         "model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros((8,), np.float32)})
  with pytest.raises(ConversionError) as e:
    from_hf(d)
  msg = str(e.value)
  assert "model.safetensors" in msg and "unknown tensor(s) ['model.layers.0.self_attn.mystery.weight']" in msg
  assert "inv_freq" not in msg  # a known buffer is skipped, not reported


def test_known_buffers_are_skipped(src, tmp_path):
  d = _copy(src["olmo"], tmp_path / "buffers")
  _rewrite(d, lambda t: {**t, "model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros((8,), np.float32)})
  cfg, _ = from_hf(d)
  assert cfg.family == "olmo" and cfg.kv_heads == 2


def test_sharded_index_names_missing_shard(src, tmp_path):
  old = fx.to_old_format(src["olmo"], tmp_path / "sharded", shard=True)
  (old / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(ConversionError, match=r"shard model-00002-of-00002\.safetensors is listed in weight_map but missing"):
    from_hf(old)


def test_bin_without_torch_says_how_to_convert(src, tmp_path, monkeypatch):
  import builtins

  old = fx.to_old_format(src["olmo"], tmp_path / "bin", bin=True)
  real_import = builtins.__import__

  def no_torch(name, *a, **kw):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("No module named 'torch'")
    return real_import(name, *a, **kw)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(ConversionError) as e:
    from_hf(old)
  msg = str(e.value)
  assert "pytorch_model.bin" in msg and "needs torch" in msg and "save_file" in msg


def test_bad_config_field(src, tmp_path):
  d = _copy(src["olmo"], tmp_path / "act")
  cfg = json.loads((d / "config.json").read_text())
  cfg["hidden_act"] = "relu"
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConversionError, match=r"hidden_act = 'relu' is not supported \(expected one of \['silu'\]\)"):
    from_hf(d)


def test_cli_round_trip(src, tmp_path):
  import subprocess
  import sys

  out = tmp_path / "converted"
  root = Path(__file__).resolve().parents[1]
  r = subprocess.run([sys.executable, "-m", "launch.convert", f"--hf_dir={src['olmoe']}", f"--out={out}"], cwd=root,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  printed = r.stdout
  assert "MB/s" in printed and "olmoe" in printed
  assert (out / "config.json").exists() and (out / "params").is_dir()

  cfg_a, model_a = from_hf(src["olmoe"])
  cfg_b, model_b = load_converted(out)
  assert cfg_a == cfg_b
  tokens_BxT = np.random.RandomState(1).randint(0, cfg_a.vocab_size, (2, 8))
  logits = nnx.jit(lambda m, x: m(x).logits_BxTxV)  # one compile: both models share a graphdef
  np.testing.assert_array_equal(np.asarray(logits(model_b, tokens_BxT)), np.asarray(logits(model_a, tokens_BxT)))
  with pytest.raises(ConversionError, match="already exists"):
    convert_dir(src["olmoe"], out)
  again = subprocess.run([sys.executable, "-m", "launch.convert", f"--hf_dir={src['olmoe']}", f"--out={out}"],
                         cwd=root, capture_output=True, text=True, timeout=300)
  assert again.returncode == 2 and again.stderr.startswith("error: ") and "already exists" in again.stderr
  assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
