"""Random HF-format checkpoints at any size (circuits.convert.random_hf) and the reader's large-file behaviour:
bfloat16 safetensors (numpy has no bfloat16), sharded files, handles released once read.

The published 1B configs give the published parameter counts (1,011,781,632 / 1,279,787,008 /
6,919,161,856; nothing allocated). Written checkpoints of reduced configs, in float32, float16 and bfloat16,
load in transformers (the reference) and in our converter to the same logits (fp32 compute, 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest

from circuits.convert import Checkpoint, config_from_hf, convert_tensors, from_hf, random_hf

PUBLISHED_PARAMS = {"EleutherAI/pythia-1b": 1_011_781_632, "allenai/OLMo-1B-0724-hf": 1_279_787_008,
                    "allenai/OLMoE-1B-7B-0924": 6_919_161_856}


@pytest.mark.parametrize("repo", sorted(PUBLISHED_PARAMS))
def test_published_configs_shapes(repo):
  from configs.families import family_config
  specs = random_hf.tensor_specs(random_hf.PUBLISHED[repo])
  assert sum(int(np.prod(s)) for _, s in specs) == PUBLISHED_PARAMS[repo]
  ours = config_from_hf(random_hf.PUBLISHED[repo])
  cfg = family_config(ours.family, "1b").model
  for field in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "rotary_pct", "clip_qkv", "n_experts",
                "top_k", "norm_topk_prob", "parallel_residual", "qkv_bias"):
    assert getattr(ours, field) == cfg[field], field


def _small(repo):
  c = dict(random_hf.PUBLISHED[repo], hidden_size=32, num_hidden_layers=2, intermediate_size=48, vocab_size=96)
  c["num_attention_heads"] = 4
  if "num_key_value_heads" in c:
    c["num_key_value_heads"] = 4
  if c["model_type"] == "olmoe":
    c.update(num_experts=4, num_experts_per_tok=2)
  return c


@pytest.mark.parametrize("repo,dtype", [("EleutherAI/pythia-1b", "float16"), ("allenai/OLMo-1B-0724-hf", "float32"),
                                        ("allenai/OLMoE-1B-7B-0924", "bfloat16")])
def test_written_checkpoint_matches_transformers(tmp_path, repo, dtype):
  torch = pytest.importorskip("torch")
  import transformers
  path = random_hf.write(tmp_path / "ck", _small(repo), dtype=dtype, std=0.2, shard_bytes=20_000)
  assert len(list(path.glob("model-*.safetensors"))) > 2  # really sharded
  ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
  tokens = np.random.RandomState(0).randint(0, 96, (2, 10))
  with torch.no_grad():
    want = ref(torch.tensor(tokens)).logits.numpy()
  _, model = from_hf(path)
  got = np.asarray(model(tokens.astype(np.int32)).logits_BxTxV)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_reader_releases_handles_and_reads_bf16(tmp_path):
  c = _small("allenai/OLMoE-1B-7B-0924")
  path = random_hf.write(tmp_path / "ck", c, dtype="bfloat16", shard_bytes=20_000)
  ck = Checkpoint(path)
  x = ck.get("model.layers.0.self_attn.q_proj.weight")
  assert str(x.dtype) == "bfloat16" and float(np.abs(x.astype(np.float32)).max()) > 0
  flat = convert_tensors(ck, "olmoe", config_from_hf(c), dtype="bfloat16")
  assert not ck._handles  # pylint: disable=protected-access  # every shard released after its last tensor
  assert all(str(v.dtype) == "bfloat16" for v in flat.values())


@pytest.mark.parametrize("moe_impl", [None, "dense"])
def test_discovery_loader_bf16_and_moe_impl_match_transformers(tmp_path, moe_impl):
  """What `launch.discover --hf_revisions F --dtype bfloat16 [--moe_impl dense]` loads (OLMoE on a CPU machine):
  bfloat16 parameters, the chosen expert computation (None: the config's, ragged), and the logits of transformers
  on the same bfloat16 file (read exactly into fp32) within 1e-4; compute is fp32 either way."""
  torch = pytest.importorskip("torch")
  import transformers
  from flax import nnx

  from circuits.discovery import revisions
  path = random_hf.write(tmp_path / "ck", _small("allenai/OLMoE-1B-7B-0924"), dtype="bfloat16", std=0.2,
                         shard_bytes=20_000)
  cfg, model = revisions.load_checkpoint_dir(path, dtype="bfloat16", moe_impl=moe_impl)
  assert cfg.moe_impl == (moe_impl or "ragged") and cfg.param_dtype == "bfloat16"
  import jax
  assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {"bfloat16"}
  ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
  tokens = np.random.RandomState(1).randint(0, 96, (2, 10))
  with torch.no_grad():
    want = ref(torch.tensor(tokens)).logits.numpy()
  got = np.asarray(model(tokens.astype(np.int32)).logits_BxTxV)
  assert got.dtype == np.float32 and np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
