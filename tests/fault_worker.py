"""Subprocess host for the fault tests (tests/test_faults.py): cheap SIGKILL trials of checkpoint saves.

    python tests/fault_worker.py ckpt <root> <sync|async> <trials> <seed>
    python tests/fault_worker.py fsize <root>

`ckpt`: this process imports jax and Orbax once and never touches a device itself; each trial is a forked
child that (1) opens the project's checkpoint manager (circuits.train.checkpoint.make_manager) on the
state the previous child left, checks it, and (2) saves a small state at steps latest+1, latest+2, ...
until this process SIGKILLs it at a delay drawn from RandomState(seed). A last child only checks. One
JSON line per child on stdout: {"trial", "latest", "committed_seen", "tmp_before", "tmp_after" (after
the first save of the restarted manager), "ok", "error"}. The parent knows which steps a child reported as committed (after wait_until_finished), so the
check is: the restart's latest step is >= every reported one, is a committed directory, restores to the
exact values of that step, no temporary directory is left, and the step after it can be saved again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np


def state_at(step: int) -> dict:
  """The small state saved at `step` (about 1 MB; values identify the step)."""
  return {"params": {"w": np.full((256, 512), step, np.float32), "b": np.arange(4096, dtype=np.float32) + step},
          "step": np.asarray(step, np.int32)}


def tmp_dirs(ckdir: str) -> list[str]:
  return sorted(n for n in os.listdir(ckdir) if "tmp" in n) if os.path.isdir(ckdir) else []


def _child(root: str, async_save: bool, pipe_w: int, trial: int, check_only: bool) -> None:
  """Check what the killed predecessor left, then save until killed (or exit after the check)."""
  import jax
  from circuits import rundir
  from circuits.train import checkpoint as ckpt

  ckdir = rundir.checkpoint_dir(root)
  rec = dict(trial=trial, tmp_before=tmp_dirs(ckdir), ok=False, error=None)
  out = os.fdopen(pipe_w, "w", buffering=1)
  try:
    mgr = ckpt.make_manager(root, permanent=[], resume_every=1, keep_resume=3, async_save=async_save)
    latest = mgr.latest_step()
    rec["latest"] = latest
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state_at(0))
    if latest is not None:
      got, meta = ckpt.restore(mgr, latest, abstract)
      want = state_at(latest)
      same = all(np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
      if not same or meta["step"] != latest:
        raise AssertionError(f"step {latest} restored wrong values (meta {meta})")
    step = (latest or 0) + 1
    # the step the predecessor was killed in: saving it again must work
    ckpt.save(mgr, step, state_at(step), {"step": step}, force=True)
    mgr.wait_until_finished()
    got, _ = ckpt.restore(mgr, step, abstract)
    if not np.array_equal(np.asarray(got["params"]["w"]), state_at(step)["params"]["w"]):
      raise AssertionError(f"re-saved step {step} restored wrong values")
    rec.update(ok=True, resaved=step, tmp_after=tmp_dirs(ckdir))
    out.write(json.dumps(rec) + "\n")
    if check_only:
      mgr.close()
      out.close()
      os._exit(0)
    out.write(json.dumps({"committed": step}) + "\n")
    out.write("READY\n")
    while True:
      step += 1
      ckpt.save(mgr, step, state_at(step), {"step": step}, force=True)
      mgr.wait_until_finished()
      out.write(json.dumps({"committed": step}) + "\n")
  except BaseException as e:  # noqa: BLE001 -- reported to the parent, which fails the test
    rec["error"] = f"{type(e).__name__}: {e}"
    out.write(json.dumps(rec) + "\n")
    out.close()
    os._exit(1)


def ckpt_trials(root: str, mode: str, trials: int, seed: int) -> int:
  """Run `trials` killed children and a final checking child; print one JSON line per child."""
  import jax  # noqa: F401 -- imported once here, initialized only in the children
  import orbax.checkpoint  # noqa: F401
  from circuits.train import checkpoint  # noqa: F401

  rng = np.random.RandomState(seed)
  committed_seen, failures = 0, 0
  for trial in range(trials + 1):
    last = trial == trials
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
      os.close(r)
      _child(root, mode == "async", w, trial, last)
    os.close(w)
    rd = os.fdopen(r)
    rec = json.loads(rd.readline() or '{"error": "child died before reporting"}')
    rec["committed_seen"] = committed_seen
    if rec.get("latest") is not None and rec["latest"] < committed_seen:
      rec["ok"], rec["error"] = False, f"resumed from {rec['latest']} < committed {committed_seen}"
    if rec.get("tmp_after"):
      rec["ok"], rec["error"] = False, f"temporary directories left: {rec['tmp_after']}"
    failures += not rec.get("ok")
    print(json.dumps(rec), flush=True)
    if last or not rec.get("ok"):
      if not last:
        os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      break
    line = rd.readline()
    while line and line.strip() != "READY":
      committed_seen = max(committed_seen, json.loads(line)["committed"])
      line = rd.readline()
    time.sleep(float(rng.uniform(0.0, 0.15)))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    for line in rd:  # commits reported before the kill
      if line.startswith("{"):
        committed_seen = max(committed_seen, json.loads(line)["committed"])
    rd.close()
  return 1 if failures else 0


def fsize(root: str) -> int:
  """A "full disk" via RLIMIT_FSIZE (no mount needed): commit step 1, then cap file sizes at 4 KiB (SIGXFSZ
  ignored, so writes fail with EFBIG) and try to save step 2 and to start in a fresh workdir. Prints one
  JSON line: the errors seen and what the latest checkpoint holds afterwards."""
  import resource

  import jax
  from circuits import rundir
  from circuits.train import checkpoint as ckpt
  from circuits.train.loop import WorkdirError, check_workdir

  rec = {}
  mgr = ckpt.make_manager(root, permanent=[], resume_every=1, keep_resume=3, async_save=True)
  ckpt.save(mgr, 1, state_at(1), {"step": 1}, force=True)
  mgr.wait_until_finished()
  big = state_at(2)
  big["params"]["w"] = np.random.RandomState(0).standard_normal((256, 512)).astype(np.float32)  # incompressible
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
  try:
    try:
      ckpt.save(mgr, 2, big, {"step": 2}, force=True)
      mgr.wait_until_finished()
      rec["save_error"] = None
    except Exception as e:  # noqa: BLE001
      rec["save_error"] = f"{type(e).__name__}: {e}"[:600]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    try:
      check_workdir(os.path.join(root, "fresh"))
      rec["workdir_error"] = None
    except WorkdirError as e:
      rec["workdir_error"] = str(e)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  try:
    mgr.close()
  except Exception:  # noqa: BLE001 -- the failed save may be re-raised here
    pass
  mgr = ckpt.make_manager(root, permanent=[], resume_every=1, keep_resume=3, async_save=True)
  rec["latest"] = mgr.latest_step()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state_at(0))
  got, _ = ckpt.restore(mgr, rec["latest"], abstract)
  rec["latest_ok"] = bool(np.array_equal(np.asarray(got["params"]["b"]), state_at(rec["latest"])["params"]["b"]))
  ckpt.save(mgr, 2, big, {"step": 2}, force=True)  # with space again, the failed step saves
  mgr.wait_until_finished()
  rec["resaved_latest"] = mgr.latest_step()
  rec["tmp_after"] = tmp_dirs(rundir.checkpoint_dir(root))
  mgr.close()
  print(json.dumps(rec), flush=True)
  return 0


if __name__ == "__main__":  # run with PYTHONPATH=<repository root> (tests/test_faults.py's env)
  if sys.argv[1] == "ckpt":
    sys.exit(ckpt_trials(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
  if sys.argv[1] == "fsize":
    sys.exit(fsize(sys.argv[2]))
  raise SystemExit(f"unknown mode {sys.argv[1]!r} (expected: ckpt, fsize)")
