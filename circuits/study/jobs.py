"""The jobs of a study and their graph: names, dependencies, done-markers (a job is done when its marker
holds the config's fingerprint and is newer than its dependencies'), run_job (one job in this process),
the data job (token cache, probes, held-out rows) and an in-memory combined-task batch source."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from circuits.files import atomic_write_json
from circuits.study.config import (Paths, StudyError, cache_rows, caches, combined_spec, fingerprint, run_config,
                                   span_ids, study_paths)
from circuits.study.measure import job_metrics, job_sweep

def job_names(study) -> list[str]:
  names = ["data"]
  for stage in ("train", "sweep", "metrics"):
    names += [f"{stage}:{f}" for f in study.family_order]
  return names + ["report"]


def deps(job: str, study) -> list[str]:
  stage, _, fam = job.partition(":")
  if stage == "data":
    return []
  if stage == "train":
    return ["data"]
  if stage in ("sweep", "metrics"):
    return [f"train:{fam}"]
  return [f"{s}:{f}" for s in ("sweep", "metrics") for f in study.family_order]


def run_job(study, workdir, job: str, progress: bool = True) -> dict:
  """Runs one job in this process (the runner's subprocesses call this) and returns its info dict."""
  p = study_paths(workdir)
  stage, _, fam = job.partition(":")
  t0 = time.time()
  if stage == "data":
    info = job_data(study, p, progress)
  elif stage == "train":
    from circuits.train import train
    info = train(run_config(study, fam, str(p.root)), str(p.run(fam)))
    if info.get("interrupted"):
      raise StudyError(f"{job}: interrupted at step {info['steps_done']} (rerun to resume)")
  elif stage == "sweep":
    info = job_sweep(study, p, fam, progress)
  elif stage == "metrics":
    info = job_metrics(study, p, fam, progress)
  elif stage == "report":
    from circuits.study import report
    info = report.write(study, p)
  else:
    raise StudyError(f"unknown job {job!r}; jobs: {job_names(study)}")
  info = {"job": job, "wall_s": round(time.time() - t0, 2), **_plain(info)}
  _write_json(p.stages / f"{job.replace(':', '_')}.json", dict(info, fingerprint=fingerprint(study),
                                                               finished=time.time()))
  return info


def _plain(d):
  return json.loads(json.dumps(d, default=str))


def _write_json(path: Path, obj) -> None:
  atomic_write_json(path, obj, indent=1, default=str)


def _marker(p: Paths, job: str) -> Optional[dict]:
  m = p.stages / f"{job.replace(':', '_')}.json"
  try:
    return json.loads(m.read_text()) if m.exists() else None
  except json.JSONDecodeError:
    return None


def is_done(study, p: Paths, job: str) -> bool:
  """Done: the job's marker holds this config's fingerprint and is newer than every dependency's marker."""
  m = _marker(p, job)
  if m is None or m.get("fingerprint") != fingerprint(study):
    return False
  for d in deps(job, study):
    if not is_done(study, p, d) or float(_marker(p, d).get("finished", 0)) > float(m.get("finished", 0)):
      return False
  return True




def job_data(study, p: Paths, progress: bool = True) -> dict:
  """The token cache(s) (one per data seed: config.caches; each skipped when a matching one exists), the probes,
  the held-out rows (from the first run's model seed: one instrument for every run of the study)."""
  from circuits.data import probes, reader, synthetic

  rc = run_config(study, study.family_order[0], str(p.root))
  n_rows = cache_rows(study)
  built = []
  for name, seed in caches(study).items():
    path = p.cache_at(name)
    try:
      meta = reader.read_meta(str(path))
      reader.check_meta(meta, str(path), seq_len=int(rc.data.seq_len), vocab=str(rc.data.vocab),
                        task=meta.get("task") if not str(rc.data.task).startswith("circuits.") else str(rc.data.task),
                        add_bos=bool(rc.data.add_bos), pack=bool(rc.data.pack), n_sequences=n_rows, seed=seed)
      if meta.get("data_config", {}).get("synthetic") != rc.data.synthetic.to_dict():
        raise reader.CacheError("synthetic parameters differ")
    except reader.CacheError:
      from circuits.data import cache_builder
      cache_builder.build_cache(rc.data, seed=seed, n_rows=n_rows, path=str(path), progress=progress)
      built.append(name)
  sw, t = study.sweep, int(study.data.seq_len)
  spec = combined_spec(study)
  lo, hi = span_ids(study)
  p.probes.mkdir(parents=True, exist_ok=True)
  comb = probes.combined_induction_batch(n=int(sw.n), seq_len=t, spec=spec, add_bos=bool(study.data.add_bos))
  syn = probes.synthetic_induction_batch(n=int(sw.n), seq_len=t, lo=lo, hi=hi)
  for name, b in (("combined", comb), ("synthetic", syn)):
    np.savez(p.probes / f"{name}.npz", **b.as_dict())
  rng = synthetic.chunk_rng(int(rc.seed) + 7919, "validation", 0)  # not the train split's generator
  body, span_p, span_m, _ = synthetic.combined(rng, int(sw.n_heldout), t, spec, return_meta=True)
  rows = np.concatenate([np.full((body.shape[0], 1), synthetic.BOS_ID, np.int32), body], axis=1) \
      if study.data.add_bos else body
  np.savez(p.probes / "heldout.npz", rows_NxT1=rows.astype(np.int32), p_N=span_p.astype(np.int32),
           m_N=span_m.astype(np.int32), offset=np.int32(int(bool(study.data.add_bos))))
  names = caches(study)
  return dict(cache=str(p.cache_at(next(iter(names)))), caches=names, rows=n_rows, built=bool(built),
              built_caches=built)


class CombinedSource:
  """In-memory batches of the combined task (no cache, no seqio): BOS + combined(T) rows, batch `step` seeded
  by (seed, step). For notebooks and tests; the study itself trains from the token cache."""

  def __init__(self, study, batch_size: Optional[int] = None, seq_len: Optional[int] = None, seed: int = 0):
    self.spec = combined_spec(study)
    self.b = int(batch_size or study.train.batch_size)
    self.t = int(seq_len or study.data.seq_len)
    self.seed = int(seed)

  def batch(self, step: int) -> dict:
    from circuits.data import synthetic
    body = synthetic.combined(np.random.default_rng([self.seed, int(step)]), self.b, self.t, self.spec)
    rows = np.concatenate([np.full((self.b, 1), synthetic.BOS_ID, np.int32), body], axis=1)
    return dict(tokens_BxT=rows[:, :-1], targets_BxT=rows[:, 1:], loss_mask_BxT=np.ones((self.b, self.t), np.float32))
