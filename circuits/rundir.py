"""The on-disk layout of one training run (a run directory): written by the trainer, read by discovery,
the study and notebooks. Depends only on orbax, jax and numpy -- never on circuits.train or circuits.discovery,
so reading a run does not import the trainer (its loop, optax state, writers).

Layout of <workdir>:
  run.json              RUN_FILE: the validated config, tokens_per_step, permanent_steps, mesh
  metrics.jsonl         METRICS_FILE: one JSON object per logged step (keys: circuits.train.writers)
  tb/                   TB_DIR: TensorBoard events
  checkpoints/<step>/   CKPT_DIR: one Orbax CheckpointManager step, items ITEMS:
    state/   the train state pytree (params, opt_state, step, rng, n_skipped), OCDBT/tensorstore arrays
    meta/    JSON: step, tokens_seen, data_position, n_skipped, tokens_per_step, family, time, config, and
             FINGERPRINTS ({array path: uint32 fingerprint} of the saved state)

    from circuits import rundir
    index = rundir.read_index(workdir)                 # meta of every committed step, no arrays read
    params, meta = rundir.restore_params(workdir, 4)   # params alone, on the host CPU, fingerprint-checked
    rows = rundir.read_metrics(workdir)                # metrics.jsonl, a torn last line skipped

The trainer saves with circuits.train.checkpoint (make_manager / save / restore), built on these names.
jax and Orbax are imported by the functions that touch arrays, so the JSON readers stay cheap to import
(circuits.study.analysis is pure pandas).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Optional
from circuits.errors import CircuitsError

RUN_FILE, METRICS_FILE, TB_DIR, CKPT_DIR = "run.json", "metrics.jsonl", "tb", "checkpoints"
ITEMS = ("state", "meta")  # the items of every checkpoint step
FINGERPRINTS = "fingerprints"  # meta key: {array path: uint32 fingerprint} of the saved state


class CheckpointCorruptError(CircuitsError, RuntimeError):
  """A committed checkpoint's array cannot be read or does not match the fingerprint written with it."""


def checkpoint_dir(workdir) -> str:
  """<workdir>/checkpoints as an absolute path (the Orbax CheckpointManager's directory)."""
  return os.path.join(os.path.abspath(workdir), CKPT_DIR)


def metrics_path(workdir) -> Path:
  """<workdir>/metrics.jsonl."""
  return Path(workdir) / METRICS_FILE


# ----- fingerprints -----

def _path_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@functools.cache
def _fingerprint_fn():
  """The jitted per-leaf fingerprint: sum_i bits_i * (i % 65521 + 1) mod 2**32 over the raw bits (exact in any
  reduction order)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

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
  return jax.jit(lambda tree: jax.tree.map(one, tree))


def fingerprints(tree) -> dict[str, int]:
  """{array path (e.g. "params.embed.embedding"): fingerprint} of a pytree, computed where it lives."""
  import jax  # pylint: disable=import-outside-toplevel
  fp = jax.device_get(_fingerprint_fn()(tree))
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


def corrupt_error(e: Exception, step: int, where: str) -> Optional[CheckpointCorruptError]:
  """A CheckpointCorruptError naming the array when `e` (or its cause) is a tensorstore read error, else None."""
  while e is not None:
    m = re.search(r'Error reading "([^"/]+)', str(e))
    if m:
      return CheckpointCorruptError(f"checkpoint step {step} in {where}: array {m.group(1)} cannot be read "
                                    f"(truncated or corrupted file?): {str(e)[:500]}")
    e = e.__cause__ or e.__context__
  return None


# ----- reading a run -----

def _this_process():
  """Orbax options for reads by this process alone (no barrier with the others: in a multi-process discovery
  sweep each process restores its own revisions)."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def _reader(workdir):
  """A read-only CheckpointManager of the run's checkpoints (close it), read by this process alone."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(
      read_only=True, multiprocessing_options=_this_process()), item_names=ITEMS)


def _meta(mgr, step: int) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return dict(mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def read_index(workdir) -> list[dict]:
  """Per committed checkpoint: its meta JSON (step, tokens_seen, ...), sorted by step. No arrays read."""
  mgr = _reader(workdir)
  try:
    return [_meta(mgr, s) for s in mgr.all_steps()]
  finally:
    mgr.close()


def restore_params(workdir, step: Optional[int] = None) -> tuple[dict, dict]:
  """(params as a pure dict of host arrays, meta) of checkpoint `step` (default: the latest).

  Read-only, on the host CPU (jit places them on whatever devices exist); raises CheckpointCorruptError
  naming the step and the array when an array is unreadable or differs from its saved fingerprint.
  Load them into a model with `nnx.update(model, params)` or `nnx.merge(graphdef, params)`.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  mgr = _reader(workdir)
  try:
    step = mgr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no committed checkpoint under {workdir}/{CKPT_DIR}")
    meta = _meta(mgr, step)
  finally:
    mgr.close()
  path = os.path.join(checkpoint_dir(workdir), str(step), "state")
  where = checkpoint_dir(workdir)
  mp = _this_process()
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=mp), multiprocessing_options=mp) as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree["params"])}
    try:
      r = ckptr.restore(path, args=ocp.args.PyTreeRestore(
          item=target, partial_restore=True,
          restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=cpu), target)))
    except Exception as e:  # orbax wraps tensorstore's ValueError in a bare Exception
      if (err := corrupt_error(e, step, where)) is None:
        raise
      raise err from e
  verify(r["params"], meta, step, where, prefix="params.")
  return r["params"], meta


def read_jsonl(path) -> list[dict]:
  """The objects of a JSON-lines file in file order ([] when absent); blank or torn lines (a killed
  writer's last line) are skipped. metrics.jsonl, and the study's revision_metrics.jsonl."""
  path = Path(path)
  if not path.exists():
    return []
  out = []
  for ln in path.read_text().splitlines():
    try:
      out.append(json.loads(ln))
    except json.JSONDecodeError:
      continue
  return out


def read_metrics(workdir) -> list[dict]:
  """The rows of <workdir>/metrics.jsonl (read_jsonl)."""
  return read_jsonl(metrics_path(workdir))


def steps_logged(workdir) -> int:
  """1 + the step of the last complete row of metrics.jsonl that has one (0 when none), reading only
  the file's last 64 KiB (cheap to poll while a run is writing it)."""
  path = metrics_path(workdir)
  if not path.exists():
    return 0
  with open(path, "rb") as f:
    f.seek(0, 2)
    f.seek(max(0, f.tell() - 65536))
    tail = f.read().decode("utf-8", "replace").splitlines()
  for ln in reversed(tail):
    try:
      return int(json.loads(ln)["step"]) + 1
    except (json.JSONDecodeError, KeyError, ValueError, TypeError):
      continue
  return 0
