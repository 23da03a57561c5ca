"""A discovery sweep: every revision -> one measurement pass + ablations -> per-revision files -> report.

    from circuits.discovery import revisions, sweep
    result = sweep.sweep(revisions.from_list("revs.jsonl"), "runs/discovery")

Outputs under `out` (every file written atomically: temp file in the same folder + os.replace):
  revisions/<rev>.csv   per-head table rows of one revision (circuits.discovery.table contract) -- the
                        completion marker of a revision, written after its ablations
  ablations/<rev>.csv   ablation rows of that revision (circuits.discovery.ablate)
  cache/final_topk_idx-<final>.npy   MoE only: a model's final revision's top-k expert sets on the probe's
                        first chunk (the reference of moe_topk_overlap_final; one per model of the list)
  table.csv, ablations.csv   all revisions, canonical order
  summary.json, report.html  circuits.discovery.analysis.summarize / report.write_report (as launch.analyze)
A killed sweep resumes where it stopped (revisions with a table file are skipped) and ends with
byte-identical tables: each revision's numbers depend only on that revision and the (seeded) probes.
The same holds for a sweep spread over processes (each measures its share of the canonical order; process 0
writes the combined files) and for any order of the revision list (circuits.discovery.spread). A list mixing
models gets a `model` column (table and ablations); the default probe is then built per vocabulary (each
model's circuits.data.probes.default_token_range), a given --probe must fit every model's vocabulary.
Within a revision the probe's chunks are spread over the process's local devices; see measure.capture and
ablate.evaluate for why the numbers are the one-device numbers.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from absl import logging
import pandas as pd

from circuits import files
from circuits.discovery import ablate as ablate_lib
from circuits.discovery import measure as measure_lib
from circuits.discovery import spread
from circuits.discovery import table as T
from circuits.errors import CircuitsError

ABLATIONS_DIR = "ablations"
CACHE_DIR = "cache"


def default_probe(vocab_size: int, n: int = 2000, seq_len: int = 256):
  """The paper's synthetic induction batch (RandomState(42)) in the model's token range
  (circuits.data.probes.default_token_range, the trainer's in-loop default too)."""
  from circuits.data import probes  # pylint: disable=import-outside-toplevel
  lo, hi = probes.default_token_range(vocab_size)
  return probes.synthetic_induction_batch(n=n, seq_len=seq_len, lo=lo, hi=hi)


def _atomic_write(path: Path, data: bytes) -> None:
  """Temp file + fsync + os.replace (circuits.files: the project's one atomic writer)."""
  files.atomic_write_bytes(path, data)


def _csv_bytes(df: pd.DataFrame) -> bytes:
  return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def load_ablations(out) -> Optional[pd.DataFrame]:
  """All `<out>/ablations/*.csv` in (tokens, revision, probe) order, or None when there are none."""
  d = Path(out) / ABLATIONS_DIR
  files = sorted(p for p in d.glob("*.csv") if ".tmp-" not in p.name) if d.is_dir() else []
  if not files:
    return None
  df = pd.concat([pd.read_csv(p, dtype={"revision": str}, keep_default_na=False,
                              na_values={"seed": [""], "top1": [""], "top5": [""], "loss": [""],
                                         "target_logit": [""]}) for p in files], ignore_index=True)
  lead = [T.MODEL] if T.MODEL in df.columns else []
  return df.sort_values(lead + ["tokens", "revision"], kind="mergesort").reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """What a sweep measures besides the probe itself."""
  measure: measure_lib.MeasureConfig = measure_lib.MeasureConfig()
  ablations: bool = True
  induction_threshold: float = 50.0  # circuit for the causal check (and the analyses)
  n_seeds: int = 20
  ablation_examples: Optional[int] = None  # first n probe examples in the ablations (None: all)
  analyze: bool = True


def _final_topk(final, probe, out: Path, chunk: int, model=None):
  """The final revision's top-k expert sets on the probe's first chunk ([L, N, K]), cached under
  `<out>/cache/final_topk_idx-<final>.npy`. `model`: the final revision's model when it is already loaded."""
  path = out / CACHE_DIR / f"final_topk_idx-{final.name}.npy"
  if path.exists():
    return np.load(path)
  if model is None:
    _, model = final.load()
  graphdef, state = measure_lib.split(model)
  idx = np.asarray(measure_lib.aux_stats(graphdef, state, probe, chunk)["_topk_idx_LxNxK"])
  import io  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  np.save(buf, idx)
  _atomic_write(path, buf.getvalue())
  return idx


def measure_one(rev, model, probe, natural, cfg: SweepConfig, final_topk=None):
  """(table rows, ablation rows or None) of one loaded revision."""
  df, extras = measure_lib.measure_revision(model, probe, revision=rev.name, step=rev.step, tokens=rev.tokens,
                                            natural=natural, cfg=cfg.measure, final_topk_idx_LxNxK=final_topk)
  abl = None
  if cfg.ablations:
    l, h = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    sel = df["sel_induction"].to_numpy().reshape(l, h)
    probes = {"synthetic": probe} if natural is None else {"synthetic": probe, "natural": natural}
    devices = measure_lib.probe_devices(cfg.measure.devices)
    abl = ablate_lib.ablate_revision(model, probes, sel, revision=rev.name, step=rev.step, tokens=rev.tokens,
                                     threshold=cfg.induction_threshold, n_seeds=cfg.n_seeds,
                                     chunk=cfg.measure.chunk, n_examples=cfg.ablation_examples,
                                     z_means={"synthetic": extras["z_NxLxHxK"].mean(0)},
                                     devices=devices if len(devices) > 1 else None)
  return df, abl


class SweepError(CircuitsError, RuntimeError):
  """Some revisions of a sweep could not be measured; finished revisions keep their files and the combined
  table is not rewritten. The message names each revision, its error and the fix (rerun to resume)."""


def _disk_full(e: BaseException) -> bool:
  while e is not None:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      return True
    e = e.__cause__ or e.__context__
  return False


def _check_tokens(batch, vocab_size: int, what: str, rev) -> None:
  hi = int(np.max(measure_lib.as_probe(batch, keys=("tokens_NxT",))["tokens_NxT"]))
  if hi >= vocab_size:
    raise ValueError(f"the {what} batch holds token id {hi}, outside {rev.name}'s vocabulary of {vocab_size}; "
                     f"give a {what} batch in every listed model's range, or (synthetic) none: the default "
                     "probe is built per vocabulary")


def _is_done(out: Path, name: str, done_before: set, cfg: SweepConfig) -> bool:
  return name in done_before and (not cfg.ablations or (out / ABLATIONS_DIR / f"{name}.csv").exists())


def sweep(revs: Sequence, out, *, probe=None, natural=None, cfg: SweepConfig = SweepConfig(),
          n: int = 2000, seq_len: int = 256, progress: bool = True, analysis_params: Optional[dict] = None,
          process_index: Optional[int] = None, process_count: Optional[int] = None) -> dict:
  """Measure every revision not yet done under `out`, then write the combined tables and the report.

  revs: circuits.discovery.revisions.Revision list, in any order, of one model or several (see
  circuits.discovery.spread: a mixed list gets a `model` column; the MoE router reference is each model's
  final revision). probe: the synthetic induction batch (default: the paper's, n x seq_len, built per
  vocabulary in each model's token range). natural: optional natural-text batch (ICL score and the
  natural-text ablations). Each revision's probe chunks are spread over the process's local devices
  (cfg.measure.devices).

  Processes: with jax.distributed initialized (or process_index / process_count given), process p measures
  positions p, p + P, ... of the canonical order (model, tokens, name); after a barrier process 0 writes the
  combined files. `out` must be one folder that every process sees (a shared file system). Given explicitly
  without jax.distributed (no barrier), process 0 writes the combined files only if every revision is done
  (else SweepError); `finish(out)` writes them later.

  A revision that fails (load or measurement) is reported and the others go on (a full disk stops at
  once); then SweepError names every failure, finished revisions keep their files, and the combined
  table.csv / ablations.csv / report are left as they were. Rerunning resumes.
  Returns {"table", "ablations", "summary", "done", "skipped", "paths", "models"}; on processes other than 0,
  table, ablations and summary are None and paths is empty.
  """
  out = Path(out)
  (out / T.REVISIONS_DIR).mkdir(parents=True, exist_ok=True)
  names = [r.name for r in revs]
  if len(set(names)) != len(names):
    raise ValueError(f"revision names must be unique; got duplicates in {names}")
  p, n_proc = spread.processes() if process_index is None else (process_index, process_count or 1)
  groups = spread.model_groups(revs)
  mixed = any(g is not None for g in groups.values())
  finals = spread.finals(revs, groups)
  mine = spread.assign(spread.canonical(revs, groups), p, n_proc)
  done_before = set(T.completed_revisions(out))
  todo = [r for r in mine if not _is_done(out, r.name, done_before, cfg)]
  probes, final_topk, done, failures = {}, {}, [], []
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="revisions", unit="rev")
  try:
    for rev in todo:
      if bar is not None:
        bar.set_postfix_str(rev.name)
      model = None
      try:
        model_cfg, model = rev.load()
        g = groups[rev.name]
        pr = probe
        if pr is None:
          if model_cfg.vocab_size not in probes:
            probes[model_cfg.vocab_size] = default_probe(model_cfg.vocab_size, n, seq_len)
          pr = probes[model_cfg.vocab_size]
        else:
          _check_tokens(pr, model_cfg.vocab_size, "probe", rev)
        if natural is not None:
          _check_tokens(natural, model_cfg.vocab_size, "natural", rev)
        topk = None
        if model_cfg.is_moe:
          if g not in final_topk:
            fin = finals[g]
            final_topk[g] = _final_topk(fin, pr, out, cfg.measure.chunk, model if fin.name == rev.name else None)
          topk = final_topk[g]
        df, abl = measure_one(rev, model, pr, natural, cfg, topk)
        if mixed:
          df.insert(0, T.MODEL, g)
          if abl is not None:
            abl.insert(0, T.MODEL, g)
        abl_path = out / ABLATIONS_DIR / f"{rev.name}.csv"
        if abl is not None:
          _atomic_write(abl_path, _csv_bytes(abl))
        try:
          T.write_revision(df, out)  # the completion marker, last
        except BaseException:
          abl_path.unlink(missing_ok=True)  # no ablation file without its revision's table file
          raise
        done.append(rev.name)
      except Exception as e:  # pylint: disable=broad-except
        failures.append((rev, e))
        # a log line (the binaries show warnings with --verbosity=0); the SweepError at the end names them all
        logging.warning("sweep: revision %s failed: %s: %s", rev.name, type(e).__name__, e)
        if _disk_full(e):
          break  # every later write would fail too
      finally:
        del model
      if bar is not None:
        bar.update(1)
  finally:
    if bar is not None:
      bar.close()
  spread.barrier("circuits.discovery.sweep")
  if failures:
    raise SweepError(_failure_message(out, failures, done)) from failures[0][1]
  skipped = sorted(r.name for r in mine if r.name not in done)
  if p != 0:
    return {"table": None, "ablations": None, "summary": None, "done": done, "skipped": skipped, "paths": {},
            "models": sorted({g for g in groups.values() if g is not None})}
  complete = set(T.completed_revisions(out))
  missing = [r.name for r in revs if not _is_done(out, r.name, complete, cfg)]
  if missing:
    raise SweepError(f"{len(missing)} revision(s) have no files under {out / T.REVISIONS_DIR}: {missing[:5]}"
                     f"{' ...' if len(missing) > 5 else ''} (measured by other processes, which failed: see "
                     "their logs); table.csv was not rewritten. Fix the cause and rerun to resume.")
  res = finish(out, cfg, analysis_params, done=done, skipped=skipped)
  res["models"] = sorted({g for g in groups.values() if g is not None})
  return res


def _failure_message(out: Path, failures: list, done: list) -> str:
  lines = []
  for rev, e in failures:
    src = f" ({rev.source})" if getattr(rev, "source", "") else ""
    lines.append(f"revision {rev.name}{src}: {type(e).__name__}: {e}")
  if any(_disk_full(e) for _, e in failures):
    lines.append(f"the disk is full: free space under {out} (or the Hugging Face cache) and rerun; no partial "
                 "file was left (every file is written to a temp file and renamed)")
  lines.append(f"{len(done)} revision(s) finished in this run and keep their files under {out / T.REVISIONS_DIR}; "
               "table.csv, ablations.csv and the report were not rewritten. Fix the cause and rerun the same "
               "command: it resumes with the missing revisions.")
  return f"{len(failures)} revision(s) failed: " + "; ".join(lines)


def finish(out, cfg: SweepConfig = SweepConfig(), analysis_params: Optional[dict] = None, done=(), skipped=()) -> dict:
  """Combined table.csv / ablations.csv and (cfg.analyze) summary.json + report.html of a sweep folder."""
  out = Path(out)
  table = T.load_table(out)
  paths = {"table": T.write_table(table, out / "table.csv")}
  abl = load_ablations(out)
  if abl is not None:
    paths["ablations"] = out / "ablations.csv"
    _atomic_write(paths["ablations"], _csv_bytes(abl))
  summary = None
  if cfg.analyze:
    params = dict(induction_threshold=cfg.induction_threshold, **(analysis_params or {}))
    import json  # pylint: disable=import-outside-toplevel

    from circuits.discovery import analysis, report  # pylint: disable=import-outside-toplevel
    summary = analysis.summarize(table, ablations=abl, **params)
    _atomic_write(out / "summary.json", (json.dumps(summary, indent=1, allow_nan=False) + "\n").encode())
    report.write_report(table, out, summary=summary, ablations=abl, **params)
    paths.update(summary=out / "summary.json", report=out / "report.html")
  return {"table": table, "ablations": abl, "summary": summary, "done": list(done), "skipped": list(skipped),
          "paths": paths}


class _CallableModule(type(os)):
  """Makes `circuits.discovery.sweep(...)` call `sweep.sweep(...)` while staying the module."""

  def __call__(self, *args, **kwargs):
    return sweep(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
