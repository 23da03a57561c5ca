"""The stage runner: every job not yet done, in dependency order, in this process or as a pool of
subprocesses (`python -m launch.study --job ...`), one per core, pinned with taskset, single-threaded XLA."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from circuits import rundir
from circuits.study.config import SINGLE_THREAD_XLA, Paths, StudyError, resolve, study_paths
from circuits.study.jobs import _write_json, deps, is_done, job_names, run_job
from circuits.study.measure import select_revisions

def _cores(study) -> list[int]:
  c = str(study.parallel.cores).strip()
  if not c:
    return [0]
  return [int(x) for x in c.split(",") if x.strip()]


def _priority(job: str, study) -> float:
  stage, _, fam = job.partition(":")
  if stage == "train":
    f = study.families[fam]
    return -float(f.steps) * (1.6 if f.n_experts else 1.0)  # longest first
  return {"data": -1e12, "sweep": 0.0, "metrics": 1.0, "report": 2.0}[stage]


def _progress_units(study, p: Paths, fam: str) -> tuple[int, int]:
  """(done, total) work units of a family: train steps + revisions x (probes + metrics)."""
  from circuits.train import schedule
  f, ck = study.families[fam], study.checkpoint
  n_rev = len(schedule.permanent_steps(int(f.steps), log_until=int(ck.log_until), every=int(ck.every)))
  n_sweep = len(select_revisions([_R(s) for s in range(n_rev)], int(study.sweep.every_nth)))
  total = int(f.steps) + n_sweep * len(study.sweep.probes) + n_rev
  done = min(rundir.steps_logged(p.run(fam)), int(f.steps))
  for name in study.sweep.probes:
    d = p.sweep(fam, name) / "revisions"
    done += len([x for x in d.glob("*.csv") if ".tmp-" not in x.name]) if d.is_dir() else 0
  mp = p.metrics(fam)
  done += len(mp.read_text().splitlines()) if mp.exists() else 0
  return min(done, total), total


@dataclasses.dataclass(frozen=True)
class _R:
  step: int


def _command(job: str, p: Paths, core: Optional[int], study) -> tuple[list[str], dict]:
  cmd = [sys.executable, "-m", "launch.study", f"--resolved={p.config}", f"--workdir={p.root}", f"--job={job}"]
  env = dict(os.environ)
  if study.parallel.single_thread:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
  if study.parallel.pin and core is not None and shutil.which("taskset"):
    cmd = ["taskset", "-c", str(core)] + cmd
  return cmd, env


def run(study, workdir, *, parallel: bool = True, jobs: Optional[Sequence[str]] = None, force: Sequence[str] = (),
        progress: bool = True, poll_s: float = 1.0) -> dict:
  """Runs every job not yet done (or `jobs`), in dependency order; returns {job: info} of this call.

  parallel: jobs run as subprocesses (`python -m launch.study --job ...`), one per core of
  parallel.cores, pinned with taskset and single-threaded XLA; otherwise in this process, one by one.
  `force`: jobs to rerun even when done. A failed job stops the study (running jobs get SIGTERM, which
  makes the trainer checkpoint) and raises StudyError naming its log.
  """
  study = resolve(study)
  p = study_paths(workdir)
  p.root.mkdir(parents=True, exist_ok=True)
  _write_json(p.config, study.to_dict())
  p.logs.mkdir(exist_ok=True)
  all_jobs = job_names(study)
  wanted = list(jobs) if jobs else all_jobs
  unknown = sorted(set(wanted) - set(all_jobs))
  if unknown:
    raise StudyError(f"unknown job(s) {unknown}; jobs of this study: {all_jobs}")
  for j in force:
    m = p.stages / f"{j.replace(':', '_')}.json"
    if m.exists():
      m.unlink()
  todo = [j for j in wanted if not is_done(study, p, j)]
  done_info: dict = {}
  if not todo:
    return done_info
  if not parallel:
    for j in all_jobs:
      if j in todo:
        if progress:
          print(f"[study] {j}", flush=True)
        done_info[j] = run_job(study, p.root, j, progress=progress)
    return done_info
  return _run_parallel(study, p, todo, progress, poll_s)


def _run_parallel(study, p: Paths, todo: list[str], progress: bool, poll_s: float) -> dict:
  cores = _cores(study)
  free = list(cores)
  running: dict[str, tuple] = {}
  pending = list(todo)
  out: dict = {}
  bars = {}
  if progress:
    from tqdm.auto import tqdm
    for i, fam in enumerate(study.family_order):
      d, tot = _progress_units(study, p, fam)
      bars[fam] = tqdm(total=tot, initial=d, desc=f"{fam:>6}", unit="u", position=i, dynamic_ncols=True,
                       mininterval=2.0)
  t0 = time.time()

  def on_term(*_):
    raise KeyboardInterrupt("SIGTERM")

  old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None

  def ready(j):
    return all(d not in pending and d not in running for d in deps(j, study) if d in todo or d in running)

  try:
    while pending or running:
      for j in sorted([j for j in pending if ready(j)], key=lambda j: _priority(j, study)):
        if not free:
          break
        core = free.pop(0)
        cmd, env = _command(j, p, core, study)
        log = open(p.logs / f"{j.replace(':', '_')}.log", "ab")
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_repo_root())
        running[j] = (proc, core, log, time.time())
        pending.remove(j)
        if progress:
          bars[study.family_order[0]].write(f"[study] start {j} on core {core} ({time.time() - t0:.0f} s)")
      time.sleep(poll_s)
      for j, (proc, core, log, ts) in list(running.items()):
        rc = proc.poll()
        if rc is None:
          continue
        log.close()
        del running[j]
        free.append(core)
        if rc != 0:
          raise StudyError(f"job {j} failed (exit {rc}); see {p.logs / (j.replace(':', '_') + '.log')}:\n"
                           + _tail(p.logs / f"{j.replace(':', '_')}.log"))
        out[j] = dict(wall_s=round(time.time() - ts, 1))
        if progress:
          bars[study.family_order[0]].write(f"[study] done  {j} in {time.time() - ts:.0f} s")
      for fam, b in bars.items():
        d, _ = _progress_units(study, p, fam)
        b.update(d - b.n)
  finally:
    for j, (proc, core, log, ts) in running.items():
      proc.terminate()
    for j, (proc, core, log, ts) in running.items():
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
      log.close()
    for b in bars.values():
      b.close()
    if old is not None:
      signal.signal(signal.SIGTERM, old)
  return out


def _tail(path: Path, n: int = 30) -> str:
  try:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
  except OSError:
    return ""


def _repo_root() -> str:
  return str(Path(__file__).resolve().parents[2])
