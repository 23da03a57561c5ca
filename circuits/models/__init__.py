"""The three model families (Flax NNX) and the one attention they share.

    from circuits.models import ModelConfig, build_model
    model = build_model(ModelConfig(family="olmo", ...), rngs=nnx.Rngs(0))
    out = model(tokens_BxT)            # out.logits_BxTxV
    out = model(tokens_BxT, Capture(stats=True, query_pos_B=q_B))  # + attn_stats, rows_BxLxHxS, z_BxLxHxK
"""

from flax import nnx

from circuits.models import olmo, olmoe, pythia
from circuits.models.attention import Capture
from circuits.models.config import ConfigError, ModelConfig
from circuits.models.lm import LM, ModelOutput

# Parameters carry logical-axis names; placement on a mesh is the trainer's job (circuits/train).
nnx.use_eager_sharding(False)

FAMILY_BUILDERS = {"pythia": pythia.build, "olmo": olmo.build, "olmoe": olmoe.build}


def build_model(cfg: ModelConfig, rngs: nnx.Rngs | int = 0) -> LM:
  """Build a freshly initialised model of `cfg.family` (accepts a ModelConfig or a dict of its fields)."""
  if not isinstance(cfg, ModelConfig):
    cfg = ModelConfig.from_dict(cfg)
  if isinstance(rngs, int):
    rngs = nnx.Rngs(rngs)
  return FAMILY_BUILDERS[cfg.family](cfg, rngs)


__all__ = ["Capture", "ConfigError", "LM", "ModelConfig", "ModelOutput", "build_model"]
