"""Multi-process training: `jax.distributed.initialize` and a batch source where each process reads only
its own slice of the global batch from the token cache.

    from circuits.study import distributed
    distributed.initialize(coordinator_address="localhost:12355", num_processes=2, process_id=i)
    source = distributed.ProcessSliceSource(cfg)      # then circuits.train.train(cfg, w, source=source)

`initialize()` without arguments lets JAX detect the cluster (TPU pod workers, SLURM); on CPU it selects
the gloo collectives first. The source returns global jax.Arrays built with
`jax.make_array_from_process_local_data`, so the trainer's `jax.device_put(batch, batch_sharding)` is a
no-op and no process ever reads another process's rows: process p of P reads rows
[step*B + p*B/P, step*B + (p+1)*B/P) (circuits.data.reader.batch_rows).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Start JAX's distributed runtime (idempotent). Arguments default to JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID; with none set, JAX auto-detects (TPU pods, SLURM)."""
  import jax
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms in ("", "cpu") and not _has_accelerator_env():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kw = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                              process_id=process_id).items() if v is not None}
  jax.distributed.initialize(**kw)


def _has_accelerator_env() -> bool:
  return bool(os.environ.get("TPU_NAME") or os.environ.get("CUDA_VISIBLE_DEVICES") or
              os.environ.get("TPU_WORKER_HOSTNAMES"))


class ProcessSliceSource:
  """This process's rows of every global batch, assembled into global arrays on the trainer's batch sharding."""

  def __init__(self, config, devices=None):
    import jax

    from circuits.data.reader import TokenCache, inputs_targets
    from circuits.train import sharding as shd

    self.b = int(config.train.batch_size)
    self.segment_mask = bool(config.data.segment_mask)
    self.cache = TokenCache.from_config(config.data, batch_size=self.b, steps=int(config.train.steps))
    self.split = inputs_targets
    self.sharding = shd.batch_sharding(shd.make_mesh(config.mesh, devices))
    self.p, self.n = jax.process_index(), jax.process_count()

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    d = self.split(self.cache.batch(step, self.b, self.p, self.n))
    out = dict(tokens_BxT=d["tokens_BxT"], targets_BxT=d["targets_BxT"],
               loss_mask_BxT=d["loss_mask_BxT"].astype(np.float32))
    if self.segment_mask:
      out["segment_ids_BxT"], out["positions_BxT"] = d["segment_ids_BxT"], d["positions_BxT"]
    return out

  def batch(self, step: int):
    import jax
    return {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in self.local_batch(step).items()}
