"""The study pipeline: run configs per family, the jobs of each stage, and a resumable parallel runner.

Jobs (a rerun skips every job whose marker <workdir>/stages/<job>.json holds the same config fingerprint;
a killed job resumes: training from its newest checkpoint, sweeps from their completed revisions):
  data            the token cache (circuits.data.cache_builder), the probes and the held-out rows
  train:<f>       circuits.train.train(run_config(study, f), <workdir>/<f>/run)
  sweep:<f>       circuits.discovery.sweep on every checkpoint, once per probe (<workdir>/<f>/sweep_<probe>)
  metrics:<f>     per checkpoint: span-copy loss, induction attention, first-token mass (revision_metrics.jsonl)
  report          circuits.study.analysis + circuits.study.report -> <workdir>/study/

Layout of a study workdir:
  study_config.json            the resolved study config (what the jobs read)
  cache/                       the packed-token cache shared by the families
  probes/combined.npz, probes/synthetic.npz, probes/heldout.npz
  <family>/run/                the trainer's workdir (metrics.jsonl, checkpoints/, tb/)
  <family>/sweep_<probe>/      discovery tables, ablations, summary.json, report.html
  <family>/revision_metrics.jsonl
  logs/<job>.log, stages/<job>.json
  study/report.html, report.md, summary.json, *.png
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import ml_collections
import numpy as np

STAGES = ("data", "train", "sweep", "metrics", "report")
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


class StudyError(RuntimeError):
  """A study config is inconsistent or a job failed; the message names the field or the job's log."""


# ------------------------------------------------------------------------------------------- config


def load(path: str, overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The study config of a Python config file (its get_config()), with dotted-key overrides."""
  mod = runpy.run_path(str(path))
  cfg = mod["get_config"]()
  for k, v in (overrides or {}).items():
    _set(cfg, k, v)
  return resolve(cfg)


def _set(cfg, key: str, value) -> None:
  parts = key.split(".")
  node = cfg
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = value


def resolve(cfg) -> ml_collections.ConfigDict:
  """Checks a study config (families known, sizes consistent) and returns a copy."""
  cfg = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  from configs.families import PUBLISHED  # pylint: disable=import-outside-toplevel
  order = [f for f in cfg.family_order if f in cfg.families]
  unknown = sorted({architecture(cfg, f) for f in cfg.families} - set(PUBLISHED))
  if unknown:
    raise StudyError(f"families: unknown family {unknown}; known: {sorted(PUBLISHED)} (a run named otherwise "
                     "sets `family`)")
  if not order:
    raise StudyError("family_order: names no family of `families`")
  cfg.family_order = tuple(order)
  need = 3 + int(cfg.data.synthetic.n_bb) + int(cfg.data.synthetic.n_span)
  if str(cfg.data.task).endswith("combined") and int(cfg.data.vocab_size) < need:
    raise StudyError(f"data.vocab_size={cfg.data.vocab_size}: the combined task needs >= {need} ids "
                     f"(3 specials + n_bb + n_span)")
  for f in order:
    fc = cfg.families[f]
    if architecture(cfg, f) == "olmoe" and not (fc.n_experts and fc.top_k):
      raise StudyError(f"families.{f}: set n_experts and top_k (the MoE family needs experts)")
    if architecture(cfg, f) != "olmoe" and fc.n_experts:
      raise StudyError(f"families.{f}.n_experts: only the olmoe family has experts")
  bad = [p for p in cfg.sweep.probes if p not in ("combined", "synthetic")]
  if bad:
    raise StudyError(f"sweep.probes: unknown probe(s) {bad}; known: combined, synthetic")
  return cfg


def architecture(cfg, run: str) -> str:
  """The model family of a study run: its `family` field, else the run's name (pythia, olmo, olmoe)."""
  return str(cfg.families[run].get("family", "") or run)


def fingerprint(cfg) -> str:
  """sha1 of the study config without the parallel section (scheduling does not change results)."""
  d = cfg.to_dict()
  d.pop("parallel", None)
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def span_ids(cfg) -> tuple[int, int]:
  """[lo, hi) of the span ids of the combined task (the paper's synthetic probe draws from them)."""
  s = cfg.data.synthetic
  lo = 3 + int(s.n_bb)
  return lo, lo + int(s.n_span)


def combined_spec(cfg):
  from circuits.data import synthetic  # pylint: disable=import-outside-toplevel
  s = cfg.data.synthetic
  bb = synthetic.BigramBackcopySpec(n_bb=int(s.n_bb), n_triggers=int(s.n_triggers),
                                    trigger_prob=float(s.trigger_prob), bigram_k=int(s.bigram_k),
                                    table_seed=int(s.table_seed))
  return synthetic.CombinedSpec(bb=bb, n_span=int(s.n_span), span_min=int(s.span_min), span_max=int(s.span_max))


@dataclasses.dataclass(frozen=True)
class Paths:
  root: Path

  @property
  def config(self) -> Path:
    return self.root / "study_config.json"

  @property
  def cache(self) -> Path:
    return self.root / "cache"

  @property
  def probes(self) -> Path:
    return self.root / "probes"

  def run(self, family: str) -> Path:
    return self.root / family / "run"

  def sweep(self, family: str, probe: str) -> Path:
    return self.root / family / f"sweep_{probe}"

  def metrics(self, family: str) -> Path:
    return self.root / family / "revision_metrics.jsonl"

  @property
  def logs(self) -> Path:
    return self.root / "logs"

  @property
  def stages(self) -> Path:
    return self.root / "stages"

  @property
  def report(self) -> Path:
    return self.root / "study"


def study_paths(workdir) -> Paths:
  return Paths(Path(workdir).absolute())


def run_config(study, family: str, workdir: Optional[str] = None) -> ml_collections.ConfigDict:
  """The trainer config of one family: configs/families.py facts, the family recipe, the study's data."""
  from configs.base import model_fields  # pylint: disable=import-outside-toplevel
  from configs.families import family_config  # pylint: disable=import-outside-toplevel

  study = resolve(study)
  if family not in study.family_order:
    raise StudyError(f"{family!r} is not a family of this study (family_order: {list(study.family_order)})")
  f = study.families[family]
  size = str(f.get("size", "small"))
  arch = architecture(study, family)
  c = family_config(arch, size)
  fields = dict(c.model.to_dict(), vocab_size=int(study.data.vocab_size), d_model=int(f.d_model),
                n_layers=int(f.n_layers), n_heads=int(f.n_heads), d_ff=int(f.d_ff), qk_init_std=float(f.qk_init_std),
                init_std=float(f.init_std), attention=str(f.get("attention", "softmax")))
  extra = f.get("model", None)
  for k, v in (extra.to_dict() if hasattr(extra, "to_dict") else dict(extra or {})).items():  # e.g. moe_impl
    fields[k] = v
  if arch == "olmoe":
    fields.update(n_experts=int(f.n_experts), top_k=int(f.top_k))
  c.model = model_fields(**fields)
  c.seed = int(f.seed)
  root = Path(workdir or study.get("workdir", f"runs/{study.name}"))
  d = study.data
  c.data.cache = str(root / "cache")
  c.data.task, c.data.vocab = str(d.task), str(d.vocab)
  c.data.seq_len = int(f.get("seq_len", 0) or d.seq_len)
  c.data.add_bos, c.data.pack = bool(d.add_bos), bool(d.pack)
  c.data.n_sequences = cache_rows(study)
  for k, v in d.synthetic.items():
    c.data.synthetic[k] = v
  tr = study.train
  c.train.update(dict(steps=int(f.steps), lr=float(f.lr), warmup_steps=int(f.warmup_steps),
                      min_lr_ratio=float(f.min_lr_ratio), batch_size=int(f.get("batch_size", 0) or tr.batch_size),
                      b1=float(tr.b1), b2=float(tr.b2),
                      weight_decay=float(tr.weight_decay if f.get("weight_decay") is None else f.weight_decay),
                      grad_clip=float(tr.grad_clip),
                      log_every=int(tr.log_every), progress=True))
  ck = study.checkpoint
  c.checkpoint.update(dict(log_spaced=True, log_until=int(ck.log_until), every=int(ck.every),
                           resume_every=int(ck.resume_every), keep_resume=2))
  lo, hi = span_ids(study) if str(d.task).endswith("combined") else (0, 0)  # (0, 0): the trainer's default
  c.probe.update(dict(every=int(tr.probe_every), n=int(tr.probe_n), token_lo=lo, token_hi=hi))
  if "mesh" in study:
    c.mesh.update(study.mesh.to_dict())
  return c


def cache_rows(study) -> int:
  """Rows of the shared cache: the longest family's steps x the global batch."""
  if int(study.data.get("n_sequences", 0) or 0):
    return int(study.data.n_sequences)
  return max(int(study.families[f].steps) * int(study.families[f].get("batch_size", 0) or study.train.batch_size)
             for f in study.family_order)


# --------------------------------------------------------------------------------------------- jobs


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
    from circuits.train import train  # pylint: disable=import-outside-toplevel
    info = train(run_config(study, fam, str(p.root)), str(p.run(fam)))
    if info.get("interrupted"):
      raise StudyError(f"{job}: interrupted at step {info['steps_done']} (rerun to resume)")
  elif stage == "sweep":
    info = job_sweep(study, p, fam, progress)
  elif stage == "metrics":
    info = job_metrics(study, p, fam, progress)
  elif stage == "report":
    from circuits.study import report  # pylint: disable=import-outside-toplevel
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
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
  os.replace(tmp, path)


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
  """The shared token cache (skipped when a matching one exists), the probes, the held-out rows."""
  from circuits.data import probes, reader, synthetic  # pylint: disable=import-outside-toplevel

  rc = run_config(study, study.family_order[0], str(p.root))
  n_rows = cache_rows(study)
  built = False
  try:
    meta = reader.read_meta(str(p.cache))
    reader.check_meta(meta, str(p.cache), seq_len=int(rc.data.seq_len), vocab=str(rc.data.vocab),
                      task=meta.get("task") if not str(rc.data.task).startswith("circuits.") else str(rc.data.task),
                      add_bos=bool(rc.data.add_bos), pack=bool(rc.data.pack), n_sequences=n_rows)
    if meta.get("data_config", {}).get("synthetic") != rc.data.synthetic.to_dict():
      raise reader.CacheError("synthetic parameters differ")
  except reader.CacheError:
    from circuits.data import cache_builder  # pylint: disable=import-outside-toplevel
    cache_builder.build_cache(rc.data, seed=int(rc.seed), n_rows=n_rows, path=str(p.cache), progress=progress)
    built = True
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
  return dict(cache=str(p.cache), rows=n_rows, built=built)


def load_probe(p: Paths, name: str):
  from circuits.data.probes import ProbeBatch  # pylint: disable=import-outside-toplevel
  z = np.load(p.probes / f"{name}.npz")
  return ProbeBatch(*(np.asarray(z[k], np.int32) for k in ("tokens_NxT", "query_pos_N", "target_N", "ab_N")),
                    name=name)


def select_revisions(revs, every_nth: int):
  """Every n-th revision in step order, and always the last."""
  revs = sorted(revs, key=lambda r: r.step)
  keep = revs[::max(1, int(every_nth))]
  if revs and revs[-1] not in keep:
    keep.append(revs[-1])
  return keep


def job_sweep(study, p: Paths, family: str, progress: bool = True) -> dict:
  """The discovery sweep of every (selected) checkpoint, once per probe."""
  from circuits.discovery import measure, revisions, sweep  # pylint: disable=import-outside-toplevel
  sw, m = study.sweep, study.markers
  revs = select_revisions(revisions.from_run(str(p.run(family))), int(sw.every_nth))
  out = {}
  for name in sw.probes:
    ablations = name == "combined" or bool(sw.synthetic_ablations)
    cfg = sweep.SweepConfig(
        measure=measure.MeasureConfig(chunk=int(sw.chunk), n_detect=int(sw.n_detect)),
        ablations=ablations, induction_threshold=float(m.sel_induction), n_seeds=int(sw.n_seeds),
        ablation_examples=int(sw.ablation_examples) or None)
    kw = dict(probe=load_probe(p, name), progress=progress, analysis_params=dict(sel_threshold=float(m.sel_first)))
    every = int(sw.get("ablate_every_nth", 1))
    if ablations and every > 1:  # ablations at every n-th measured revision (and the last), then the rest without
      sweep.sweep(select_revisions(revs, every), p.sweep(family, name), cfg=dataclasses.replace(cfg, analyze=False),
                  **kw)
      cfg = dataclasses.replace(cfg, ablations=False)
    res = sweep.sweep(revs, p.sweep(family, name), cfg=cfg, **kw)
    out[name] = dict(done=len(res["done"]), revisions=len(revs))
  return out


def job_metrics(study, p: Paths, family: str, progress: bool = True) -> dict:
  """Per checkpoint: span-copy loss on held-out rows, induction attention and first-token mass per head.

  Appends one JSON line per revision to <family>/revision_metrics.jsonl (resumes: steps already there are
  skipped). Definitions:
    span_copy_loss        mean over held-out rows of the mean next-token cross-entropy (nats) on the second
                          copy's r_2..r_m (tokens predictable only by copying from the first copy)
    span_first_copy_loss  the same on the first copy's r_2..r_m (not predictable: ~ln(n_span - j))
    chain_loss            mean cross-entropy on the Bigram-Backcopy positions
    induction_attention   [L][H] mean over the combined probe of A[q, ab+1] (attention of the query, the
                          second-copy token, on the token after its first occurrence)
    first_mass            [L][H] mean over held-out rows and all query positions of A[t, 0] (BOS mass)
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from circuits import losses  # pylint: disable=import-outside-toplevel
  from circuits.discovery import revisions  # pylint: disable=import-outside-toplevel

  revs = sorted(revisions.from_run(str(p.run(family))), key=lambda r: r.step)
  path = p.metrics(family)
  have = set()
  if path.exists():
    for ln in path.read_text().splitlines():
      try:
        have.add(int(json.loads(ln)["step"]))
      except (json.JSONDecodeError, KeyError):
        pass  # a torn last line from a killed job: rewritten below
    _rewrite_complete(path)
  comb = load_probe(p, "combined")
  h = np.load(p.probes / "heldout.npz")
  rows = h["rows_NxT1"]
  inp, tgt = rows[:, :-1], rows[:, 1:]
  n, t = inp.shape
  off, sp, sm = int(h["offset"]), h["p_N"], h["m_N"]
  j = np.arange(t)[None, :]
  # target index i predicts rows[:, i+1]; the second copy occupies rows [off+p+m, off+p+2m)
  tpos = j + 1
  second = (tpos >= (off + sp + sm + 1)[:, None]) & (tpos < (off + sp + 2 * sm)[:, None])
  first = (tpos >= (off + sp + 1)[:, None]) & (tpos < (off + sp + sm)[:, None])
  chain = ~((tpos >= (off + sp)[:, None]) & (tpos < (off + sp + 2 * sm)[:, None]))
  masks = {k: jnp.asarray(v, jnp.float32) for k, v in
           (("span_copy_loss", second), ("span_first_copy_loss", first), ("chain_loss", chain))}

  @functools.partial(jax.jit, static_argnums=(0,))
  def measure(graphdef, state):
    model = nnx.merge(graphdef, state)
    out = model(jnp.asarray(inp), stats=True)
    ce, _ = losses.cross_entropy(jnp.asarray(tgt), out.logits_BxTxV)
    res = {k: jnp.mean(jnp.sum(ce * mk, 1) / jnp.maximum(jnp.sum(mk, 1), 1.0)) for k, mk in masks.items()}
    res["first_mass"] = out.attn_stats["first_mass"]
    q = jnp.asarray(comb.query_pos_N)
    o2 = model(jnp.asarray(comb.tokens_NxT), query_pos_B=q)
    rows_NxLxHxS = o2.rows_BxLxHxS
    idx = jnp.asarray(comb.ab_N + 1)[:, None, None, None]
    res["induction_attention"] = jnp.take_along_axis(rows_NxLxHxS, jnp.broadcast_to(
        idx, rows_NxLxHxS.shape[:3] + (1,)), -1)[..., 0].mean(0)
    logits_q = o2.logits_BxTxV[jnp.arange(q.shape[0]), q]
    res["combined_probe_top1"] = jnp.mean(jnp.argmax(logits_q, -1) == jnp.asarray(comb.target_N))
    return res

  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(revs), initial=len(have & {r.step for r in revs}), desc=f"metrics {family}", unit="rev")
  with open(path, "a") as f:
    for r in revs:
      if r.step in have:
        continue
      _, model = r.load()
      graphdef, state = nnx.split(model)
      res = jax.device_get(measure(graphdef, state))
      line = {"step": r.step, "tokens": r.tokens, "revision": r.name}
      line.update({k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in res.items()})
      f.write(json.dumps(line) + "\n")
      f.flush()
      if bar is not None:
        bar.update(1)
  if bar is not None:
    bar.close()
  return dict(revisions=len(revs), measured=len(revs) - len(have))


def _rewrite_complete(path: Path) -> None:
  good = []
  for ln in path.read_text().splitlines():
    try:
      json.loads(ln)
      good.append(ln)
    except json.JSONDecodeError:
      pass
  path.write_text("".join(g + "\n" for g in good))


# ------------------------------------------------------------------------------------------- runner


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
  from circuits.train import schedule  # pylint: disable=import-outside-toplevel
  f, ck = study.families[fam], study.checkpoint
  n_rev = len(schedule.permanent_steps(int(f.steps), log_until=int(ck.log_until), every=int(ck.every)))
  n_sweep = len(select_revisions([_R(s) for s in range(n_rev)], int(study.sweep.every_nth)))
  total = int(f.steps) + n_sweep * len(study.sweep.probes) + n_rev
  done = min(_last_step(p.run(fam) / "metrics.jsonl"), int(f.steps))
  for name in study.sweep.probes:
    d = p.sweep(fam, name) / "revisions"
    done += len([x for x in d.glob("*.csv") if ".tmp-" not in x.name]) if d.is_dir() else 0
  mp = p.metrics(fam)
  done += len(mp.read_text().splitlines()) if mp.exists() else 0
  return min(done, total), total


@dataclasses.dataclass(frozen=True)
class _R:
  step: int


def _last_step(path: Path) -> int:
  if not path.exists():
    return 0
  with open(path, "rb") as f:
    f.seek(0, 2)
    size = f.tell()
    f.seek(max(0, size - 65536))
    tail = f.read().decode("utf-8", "replace").splitlines()
  for ln in reversed(tail):
    try:
      return int(json.loads(ln)["step"]) + 1
    except (json.JSONDecodeError, KeyError, ValueError):
      continue
  return 0


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
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
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


class CombinedSource:
  """In-memory batches of the combined task (no cache, no seqio): BOS + combined(T) rows, batch `step` seeded
  by (seed, step). For notebooks and tests; the study itself trains from the token cache."""

  def __init__(self, study, batch_size: Optional[int] = None, seq_len: Optional[int] = None, seed: int = 0):
    self.spec = combined_spec(study)
    self.b = int(batch_size or study.train.batch_size)
    self.t = int(seq_len or study.data.seq_len)
    self.seed = int(seed)

  def batch(self, step: int) -> dict:
    from circuits.data import synthetic  # pylint: disable=import-outside-toplevel
    body = synthetic.combined(np.random.default_rng([self.seed, int(step)]), self.b, self.t, self.spec)
    rows = np.concatenate([np.full((self.b, 1), synthetic.BOS_ID, np.int32), body], axis=1)
    return dict(tokens_BxT=rows[:, :-1], targets_BxT=rows[:, 1:], loss_mask_BxT=np.ones((self.b, self.t), np.float32))
