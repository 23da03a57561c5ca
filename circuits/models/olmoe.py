"""OLMoE (1B-7B-0924) family.

Facts (METHODS.md): sequential pre-norm blocks with RMSNorm (weight, eps 1e-5); OLMo-style attention
(separate q/k/v/o, no bias) plus QK-norm: RMSNorm over the FULL q and k projection widths, before the
head split and before rotary; rotary on the full head, theta 10000; a dropless top-k MoE in every layer
(64 SwiGLU experts, top-8, router softmax in fp32, gates not renormalised); load-balancing (0.01) and
router z (0.001) losses in training; untied embeddings. Legend: B batch, T length, D d_model, S keys.
"""

from flax import nnx

from circuits.models import layers as L
from circuits.models.attention import Attention
from circuits.models.config import ModelConfig
from circuits.models.lm import LM
from circuits.models.moe import MoE


def norm(cfg: ModelConfig):
  return L.RMSNorm(cfg.d_model, cfg.norm_eps, dtype=cfg.param_dtype)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.ln1, self.ln2 = norm(cfg), norm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.moe = MoE(cfg, rngs=rngs)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, probe):
    a_BxTxD, aux = self.attn(self.ln1(x_BxTxD), positions_BxT, segment_ids_BxT, probe)
    x_BxTxD = x_BxTxD + a_BxTxD
    m_BxTxD, moe_aux = self.moe(self.ln2(x_BxTxD))
    return x_BxTxD + m_BxTxD, aux, moe_aux


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> LM:
  return LM(cfg, Block, norm, rngs=rngs)
