"""A discovery sweep: every revision -> one measurement pass + ablations -> per-revision files -> report.

    from circuits.discovery import revisions, sweep
    result = sweep.sweep(revisions.from_list("revs.jsonl"), "runs/discovery")

Outputs under `out` (every file written atomically: temp file in the same folder + os.replace):
  revisions/<rev>.csv   per-head table rows of one revision (circuits.discovery.table contract) -- the
                        completion marker of a revision, written after its ablations
  ablations/<rev>.csv   ablation rows of that revision (circuits.discovery.ablate)
  cache/final_topk_idx.npy   MoE only: the final revision's top-k expert sets on the probe's first chunk
  table.csv, ablations.csv   all revisions, canonical order
  summary.json, report.html  circuits.discovery.analysis.summarize / report.write_report (as launch.analyze)
A killed sweep resumes where it stopped (revisions with a table file are skipped) and ends with
byte-identical tables: each revision's numbers depend only on that revision and the (seeded) probes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from circuits.discovery import ablate as ablate_lib
from circuits.discovery import measure as measure_lib
from circuits.discovery import table as T

ABLATIONS_DIR = "ablations"
CACHE_DIR = "cache"


def default_probe(vocab_size: int, n: int = 2000, seq_len: int = 256):
  """The paper's synthetic induction batch (RandomState(42)) in the model's token range
  (circuits.data.probes.default_token_range, the trainer's in-loop default too)."""
  from circuits.data import probes  # pylint: disable=import-outside-toplevel
  lo, hi = probes.default_token_range(vocab_size)
  return probes.synthetic_induction_batch(n=n, seq_len=seq_len, lo=lo, hi=hi)


def _atomic_write(path: Path, data: bytes) -> None:
  """Temp file + fsync + os.replace (the table module's writer: one implementation)."""
  T._atomic_write_bytes(path, data)  # pylint: disable=protected-access


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
  return df.sort_values(["tokens", "revision"], kind="mergesort").reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """What a sweep measures besides the probe itself."""
  measure: measure_lib.MeasureConfig = measure_lib.MeasureConfig()
  ablations: bool = True
  induction_threshold: float = 50.0  # circuit for the causal check (and the analyses)
  n_seeds: int = 20
  ablation_examples: Optional[int] = None  # first n probe examples in the ablations (None: all)
  analyze: bool = True


def _final_topk(revs, probe, out: Path, chunk: int):
  path = out / CACHE_DIR / "final_topk_idx.npy"
  if path.exists():
    return np.load(path)
  final = max(revs, key=lambda r: (r.tokens, r.name))
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
    abl = ablate_lib.ablate_revision(model, probes, sel, revision=rev.name, step=rev.step, tokens=rev.tokens,
                                     threshold=cfg.induction_threshold, n_seeds=cfg.n_seeds,
                                     chunk=cfg.measure.chunk, n_examples=cfg.ablation_examples,
                                     z_means={"synthetic": extras["z_NxLxHxK"].mean(0)})
  return df, abl


def sweep(revs: Sequence, out, *, probe=None, natural=None, cfg: SweepConfig = SweepConfig(),
          n: int = 2000, seq_len: int = 256, progress: bool = True, analysis_params: Optional[dict] = None) -> dict:
  """Measure every revision not yet done under `out`, then write the combined tables and the report.

  revs: circuits.discovery.revisions.Revision list. probe: the synthetic induction batch (default: the
  paper's, n x seq_len, in the first model's token range). natural: optional natural-text batch (ICL score
  and the natural-text ablations). Returns {"table", "ablations", "summary", "done", "skipped", "paths"}.
  """
  out = Path(out)
  (out / T.REVISIONS_DIR).mkdir(parents=True, exist_ok=True)
  names = [r.name for r in revs]
  if len(set(names)) != len(names):
    raise ValueError(f"revision names must be unique; got duplicates in {names}")
  done_before = set(T.completed_revisions(out))
  abl_dir = out / ABLATIONS_DIR
  todo = [r for r in revs if not (r.name in done_before and (not cfg.ablations or (abl_dir / f"{r.name}.csv").exists()))]
  final_topk, done = None, []
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(revs), initial=len(revs) - len(todo), desc="revisions", unit="rev")
  try:
    for rev in todo:
      if bar is not None:
        bar.set_postfix_str(rev.name)
      model_cfg, model = rev.load()
      if probe is None:
        probe = default_probe(model_cfg.vocab_size, n, seq_len)
      if model_cfg.is_moe and final_topk is None:
        final_topk = _final_topk(revs, probe, out, cfg.measure.chunk)
      df, abl = measure_one(rev, model, probe, natural, cfg, final_topk)
      if abl is not None:
        _atomic_write(abl_dir / f"{rev.name}.csv", _csv_bytes(abl))
      T.write_revision(df, out)  # the completion marker, last
      done.append(rev.name)
      del model
      if bar is not None:
        bar.update(1)
  finally:
    if bar is not None:
      bar.close()
  return finish(out, cfg, analysis_params, done=done, skipped=sorted(set(names) - set(done)))


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
