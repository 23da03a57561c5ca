"""OLMo (v1, 1B-0724) family.

Facts (METHODS.md): sequential pre-norm blocks; LayerNorm with NO weight and NO bias, eps 1e-5, in fp32;
separate q/k/v/o projections without bias, clip_qkv (clamp q, k, v to [-8, 8] in 1B-0724); rotary on the
full head, theta 10000, rotate-half; SwiGLU MLP without bias; untied embeddings.
Legend: B batch, T length, D d_model, S keys.
"""

from flax import nnx

from circuits.models import layers as L
from circuits.models.attention import Attention
from circuits.models.config import ModelConfig
from circuits.models.lm import LM


def norm(cfg: ModelConfig):
  return L.LayerNorm(cfg.d_model, cfg.norm_eps, affine=False)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.ln1, self.ln2 = norm(cfg), norm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp = L.SwiGLU(cfg.d_model, cfg.d_ff, std=cfg.init_std, rngs=rngs, dtype=cfg.param_dtype)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, probe):
    a_BxTxD, aux = self.attn(self.ln1(x_BxTxD), positions_BxT, segment_ids_BxT, probe)
    x_BxTxD = x_BxTxD + a_BxTxD
    return x_BxTxD + self.mlp(self.ln2(x_BxTxD)), aux, None


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> LM:
  return LM(cfg, Block, norm, rngs=rngs)
