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
import re
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

CKPT_DIR = "checkpoints"
FINGERPRINTS = "fingerprints"  # meta key: {array path: uint32 fingerprint} of the saved state


class CheckpointCorruptError(RuntimeError):
  """A committed checkpoint's array cannot be read or does not match the fingerprint written with it."""


def _path_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@jax.jit
def _fingerprint_tree(tree):
  """Per leaf: sum_i bits_i * (i % 65521 + 1) mod 2**32 over the raw bits (exact in any reduction order)."""
  def one(x):
    x = jnp.asarray(x)
    if x.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif x.dtype == jnp.bool_:
      bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 1:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    else:  # 8-byte types: fold the two halves
      halves = jax.lax.bitcast_convert_type(x, jnp.uint32)
      bits = halves[..., 0] ^ (halves[..., 1] * jnp.uint32(2654435761))
    flat = bits.reshape(-1)
    w = (jnp.arange(flat.shape[0], dtype=jnp.uint32) % jnp.uint32(65521)) + jnp.uint32(1)
    return jnp.sum(flat * w, dtype=jnp.uint32)
  return jax.tree.map(one, tree)


def fingerprints(tree) -> dict[str, int]:
  """{array path (e.g. "params.embed.embedding"): fingerprint} of a pytree, computed where it lives."""
  fp = jax.device_get(_fingerprint_tree(tree))
  return {_path_name(p): int(v) for p, v in jax.tree_util.tree_flatten_with_path(fp)[0]}


def verify(tree, meta: dict, step: int, where: str, prefix: str = "") -> None:
  """Raise CheckpointCorruptError naming the step and the first array whose fingerprint differs."""
  want = meta.get(FINGERPRINTS)
  if not want:
    return
  got = fingerprints(tree)
  for name, v in got.items():
    key = prefix + name
    if key in want and int(want[key]) != v:
      raise CheckpointCorruptError(
          f"checkpoint step {step} in {where}: array {key} does not match the fingerprint saved with it "
          f"(expected {want[key]}, found {v}): the file is corrupted; restore an earlier step "
          "(delete this step's folder) or retrain from it")


def _corrupt(e: Exception, step: int, where: str) -> Exception:
  """A CheckpointCorruptError naming the array when `e` (or its cause) is a tensorstore read error, else e."""
  while e is not None:
    m = re.search(r'Error reading "([^"/]+)', str(e))
    if m:
      return CheckpointCorruptError(f"checkpoint step {step} in {where}: array {m.group(1)} cannot be read "
                                    f"(truncated or corrupted file?): {str(e)[:500]}")
    e = e.__cause__ or e.__context__
  return None


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
      enable_async_checkpointing=async_save, create=True,
      cleanup_tmp_directories=True)  # a killed save's *.orbax-checkpoint-tmp dirs go at the next start
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CKPT_DIR), options=options,
                               item_names=("state", "meta"), metadata=metadata)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> bool:
  """Start an (async) save of `state` at `step`; returns whether one was started.

  meta gains the state's per-array fingerprints, which `restore`/`restore_params` check.
  """
  if not mgr.should_save(step) and not force:
    return False
  meta = dict(meta, **{FINGERPRINTS: fingerprints(state)})
  return mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(meta)), force=force)


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), any topology.

  Raises CheckpointCorruptError naming the step and the array when an array is unreadable or its values
  differ from the fingerprint saved with it (never silently wrong values).
  """
  where = str(mgr.directory)
  try:
    r = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                 meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax wraps tensorstore's ValueError in a bare Exception
    if (err := _corrupt(e, step, where)) is None:
      raise
    raise err from e
  meta = dict(r["meta"])
  verify(r["state"], meta, step, where)
  return r["state"], meta


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
    try:
      r = ckptr.restore(path, args=ocp.args.PyTreeRestore(
          item=target, partial_restore=True,
          restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=cpu), target)))
    except Exception as e:  # orbax wraps tensorstore's ValueError in a bare Exception
      if (err := _corrupt(e, step, os.path.dirname(os.path.dirname(path)))) is None:
        raise
      raise err from e
  verify(r["params"], meta, step, os.path.dirname(os.path.dirname(path)), prefix="params.")
  return r["params"], meta
