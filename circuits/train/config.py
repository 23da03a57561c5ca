"""Validation of a run config before anything is computed: every error names the field and the fix."""

from __future__ import annotations

import ml_collections

from circuits.models.config import ConfigError, ModelConfig

NAN_POLICIES = ("abort", "skip")


def _check_fields(have, want, prefix=""):
  for key in have.keys():
    if key not in want:
      raise ConfigError(f"{prefix}{key}: unknown config field; known fields here: {sorted(want.keys())}")
    if prefix == "" and key == "model":
      continue  # ModelConfig.from_dict names unknown model fields
    if isinstance(want[key], ml_collections.ConfigDict):
      if not isinstance(have[key], (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"{prefix}{key}: must be a section, got {have[key]!r}")
      _check_fields(have[key], want[key], f"{prefix}{key}.")


def validate(config) -> tuple[ml_collections.ConfigDict, ModelConfig]:
  """Check a run config against configs.base (unknown fields, sizes, policies); returns (config, model).

  Mesh/batch divisibility is checked in `check_mesh`, once the devices are known.
  """
  from configs.base import base_config

  if isinstance(config, dict):
    config = ml_collections.ConfigDict(config)
  _check_fields(config, base_config())
  full = base_config()
  full.update_from_flattened_dict({k: v for k, v in _flatten(config).items() if not k.startswith("model.")})
  full.model = ml_collections.ConfigDict(config.model.to_dict() if hasattr(config.model, "to_dict")
                                         else dict(config.model))
  model_cfg = ModelConfig.from_dict(full.model)
  tr, ck, pr, data = full.train, full.checkpoint, full.probe, full.data
  if tr.steps <= 0:
    raise ConfigError(f"train.steps: must be positive (got {tr.steps})")
  if tr.batch_size <= 0:
    raise ConfigError(f"train.batch_size: must be positive (got {tr.batch_size})")
  if not 0 <= tr.warmup_steps < tr.steps:
    raise ConfigError(f"train.warmup_steps: must be in [0, train.steps={tr.steps}) (got {tr.warmup_steps})")
  if tr.lr <= 0:
    raise ConfigError(f"train.lr: must be positive (got {tr.lr})")
  if tr.nan_policy not in NAN_POLICIES:
    raise ConfigError(f"train.nan_policy: must be one of {NAN_POLICIES} (got {tr.nan_policy!r})")
  from circuits.models import remat as remat_lib
  if tr.remat not in remat_lib.POLICIES:
    raise ConfigError(f"train.remat: must be one of {tuple(remat_lib.POLICIES)} (got {tr.remat!r})")
  if not isinstance(tr.microbatches, int) or tr.microbatches < 1:
    raise ConfigError(f"train.microbatches: must be a positive integer (got {tr.microbatches!r})")
  if tr.batch_size % tr.microbatches:
    raise ConfigError(f"train.microbatches={tr.microbatches} must divide train.batch_size={tr.batch_size} (and the "
                      "per-device batch, train.batch_size / (mesh.data x mesh.fsdp)); change either")
  if not isinstance(tr.scan_layers, bool):
    raise ConfigError(f"train.scan_layers: must be True or False (got {tr.scan_layers!r})")
  if not isinstance(tr.loss_chunk, int) or tr.loss_chunk < 0:
    raise ConfigError(f"train.loss_chunk: must be an integer >= 0 (got {tr.loss_chunk!r})")
  if tr.loss_chunk and data.seq_len % tr.loss_chunk:
    raise ConfigError(f"train.loss_chunk={tr.loss_chunk} must divide data.seq_len={data.seq_len} (or be 0: "
                      "whole logits)")
  if tr.log_every <= 0:
    raise ConfigError(f"train.log_every: must be positive (got {tr.log_every})")
  if data.seq_len < 2:
    raise ConfigError(f"data.seq_len: must be at least 2 (got {data.seq_len})")
  for f in ("resume_every", "keep_resume", "every", "log_until"):
    if ck[f] < 0:
      raise ConfigError(f"checkpoint.{f}: must be >= 0 (got {ck[f]})")
  if ck.resume_every and ck.keep_resume < 1:
    raise ConfigError("checkpoint.keep_resume: must be >= 1 when checkpoint.resume_every > 0")
  if pr.every < 0:
    raise ConfigError(f"probe.every: must be >= 0 (got {pr.every})")
  if pr.every:
    t = pr.seq_len or data.seq_len
    if t < 16:
      raise ConfigError(f"probe.seq_len: the induction probe needs at least 16 tokens (got {t}); set "
                        "probe.seq_len or data.seq_len")
    if pr.n < 2:
      raise ConfigError(f"probe.n: needs at least 2 examples (got {pr.n})")
    lo, hi = probe_token_range(full, model_cfg)
    if not 0 <= lo < hi - 1 or hi > model_cfg.vocab_size:
      raise ConfigError(f"probe.token_lo/token_hi: [{lo}, {hi}) must hold >= 2 ids inside the vocabulary "
                        f"(model.vocab_size={model_cfg.vocab_size})")
  return full, model_cfg


def probe_token_range(config, model_cfg: ModelConfig) -> tuple[int, int]:
  """The probe's token ids [lo, hi): the config's (probe.token_lo/token_hi), else
  circuits.data.probes.default_token_range(model.vocab_size) (the one default discovery uses too)."""
  from circuits.data.probes import default_token_range

  pr = config.probe
  if pr.token_hi:
    return int(pr.token_lo), int(pr.token_hi)
  return default_token_range(model_cfg.vocab_size)


def check_mesh(config, mesh_sizes: dict) -> None:
  """The global batch must split evenly over the batch axes of the mesh, and each device's part of it evenly
  into train.microbatches (microbatch i takes rows i::m, so every device keeps its own rows)."""
  from circuits.train.sharding import BATCH_AXES

  n = 1
  for a in BATCH_AXES:
    n *= mesh_sizes[a]
  if config.train.batch_size % n:
    raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by the mesh's batch axes "
                      f"({' x '.join(f'{a}={mesh_sizes[a]}' for a in BATCH_AXES)} = {n}); change "
                      "train.batch_size or mesh.data/mesh.fsdp")
  per_device, m = config.train.batch_size // n, int(config.train.get("microbatches", 1))
  if per_device % m:
    raise ConfigError(f"train.microbatches={m} must divide the per-device batch train.batch_size / {n} = "
                      f"{per_device} (the mesh's batch axes hold {n} shards); change train.microbatches, "
                      "train.batch_size or mesh.data/mesh.fsdp")


def _flatten(c, prefix=""):
  out = {}
  for k, v in c.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
