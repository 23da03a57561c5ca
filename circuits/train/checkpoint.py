"""Orbax checkpoints of the whole train state, on a schedule that is data (circuits.train.schedule).

Layout: <workdir>/checkpoints/<step>/
  state/   the train state pytree (params, opt_state, step, rng, n_skipped), OCDBT/tensorstore arrays
  meta/    JSON: step, tokens_seen, data_position, n_skipped, tokens_per_step, family, time, config
Root metadata (<workdir>/checkpoints/_ROOT_METADATA... via the manager) and <workdir>/run.json hold the
config. Discovery reads steps and tokens from `read_index(workdir)` (meta/ of every committed step) without
touching arrays; `restore_params(workdir, step)` returns the params alone.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

CKPT_DIR = "checkpoints"


def make_manager(workdir: str, *, permanent: list[int], resume_every: int, keep_resume: int,
                 async_save: bool = True, metadata: dict | None = None) -> ocp.CheckpointManager:
  """Saves at `permanent` steps (kept forever) and every `resume_every` (only the latest `keep_resume`)."""
  save = [cm.SpecificStepsPolicy(steps=list(permanent))]
  keep = [cm.CustomSteps(steps=list(permanent))]
  if resume_every:
    save.append(cm.FixedIntervalPolicy(int(resume_every)))
    keep.append(cm.LatestN(n=int(keep_resume)))
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=cm.AnySavePolicy(save), preservation_policy=cm.AnyPreservationPolicy(keep),
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CKPT_DIR), options=options,
                               item_names=("state", "meta"), metadata=metadata)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> bool:
  """Start an (async) save of `state` at `step`; returns whether one was started."""
  return mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(meta)), force=force)


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), any topology."""
  r = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                               meta=ocp.args.JsonRestore()))
  return r["state"], dict(r["meta"])


def read_index(workdir: str) -> list[dict]:
  """Per committed checkpoint: its meta JSON (step, tokens_seen, ...), sorted by step. No arrays read."""
  mgr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CKPT_DIR),
                              options=ocp.CheckpointManagerOptions(read_only=True), item_names=("state", "meta"))
  try:
    return [dict(mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            for s in mgr.all_steps()]
  finally:
    mgr.close()


def restore_params(workdir: str, step: int | None = None) -> tuple[dict, dict]:
  """(params as a pure dict of host arrays, meta) of checkpoint `step` (default: the latest).

  Load them into a model with `nnx.update(model, params)` or `nnx.merge(graphdef, params)`.
  """
  mgr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CKPT_DIR),
                              options=ocp.CheckpointManagerOptions(read_only=True), item_names=("state", "meta"))
  try:
    step = mgr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no committed checkpoint under {workdir}/{CKPT_DIR}")
    meta = dict(mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
  finally:
    mgr.close()
  path = os.path.join(os.path.abspath(workdir), CKPT_DIR, str(step), "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree["params"])}
    r = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=target, partial_restore=True,
        restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=cpu), target)))
  return r["params"], meta
