"""Pythia (GPT-NeoX) family.

Facts (METHODS.md): parallel residual x + attn(ln1(x)) + mlp(ln2(x)); rotary on the first rotary_pct of
each head (Pythia: 25%), base 10000, rotate-half; fused per-head [q, k, v] projection with biases and an
output projection with bias; LayerNorm with weight and bias (eps 1e-5); exact-erf GELU MLP with biases;
untied embeddings. Legend: B batch, T length, D d_model, S keys.
"""

from flax import nnx

from circuits.models import layers as L
from circuits.models.attention import Attention
from circuits.models.config import ModelConfig
from circuits.models.lm import LM


def norm(cfg: ModelConfig):
  return L.LayerNorm(cfg.d_model, cfg.norm_eps, affine=True, dtype=cfg.param_dtype)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.parallel = cfg.parallel_residual
    self.ln1, self.ln2 = norm(cfg), norm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp = L.GeluMLP(cfg.d_model, cfg.d_ff, std=cfg.init_std, rngs=rngs, dtype=cfg.param_dtype)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, probe):
    a_BxTxD, aux = self.attn(self.ln1(x_BxTxD), positions_BxT, segment_ids_BxT, probe)
    if self.parallel:
      return x_BxTxD + a_BxTxD + self.mlp(self.ln2(x_BxTxD)), aux, None
    x_BxTxD = x_BxTxD + a_BxTxD
    return x_BxTxD + self.mlp(self.ln2(x_BxTxD)), aux, None


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> LM:
  return LM(cfg, Block, norm, rngs=rngs)
