"""Saving the train state: Orbax checkpoints on a schedule that is data (circuits.train.schedule).

The layout of a run (names, meta, fingerprints) and its readers (read_index, restore_params) live in
circuits.rundir, which discovery reads without importing the trainer; this module writes that layout:
<workdir>/checkpoints/<step>/{state, meta} via one CheckpointManager, and restores the whole state for a
resume. Root metadata (<workdir>/checkpoints/_ROOT_METADATA... via the manager) and <workdir>/run.json hold
the config.
"""

from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from circuits import rundir


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
  return ocp.CheckpointManager(rundir.checkpoint_dir(workdir), options=options, item_names=rundir.ITEMS,
                               metadata=metadata)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> bool:
  """Start an (async) save of `state` at `step`; returns whether one was started.

  meta gains the state's per-array fingerprints (rundir.FINGERPRINTS), which `restore`/`restore_params` check.
  """
  if not mgr.should_save(step) and not force:
    return False
  meta = dict(meta, **{rundir.FINGERPRINTS: rundir.fingerprints(state)})
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
    if (err := rundir.corrupt_error(e, step, where)) is None:
      raise
    raise err from e
  meta = dict(r["meta"])
  rundir.verify(r["state"], meta, step, where)
  return r["state"], meta
