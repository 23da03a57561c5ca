"""report.html with PNG figures, from a per-head table (one or several models) and an optional ablation
table. Every number shown names its definition (column headers are the summary.json keys).

Figures (PNG, matplotlib Agg):
  bos_fraction.png             BOS fraction (b) solid and (a) dashed vs tokens (log x), one line per model
  per_layer_bos_<model>.png    first-token heads (sel_first >= T) per layer x revision (heatmap)
  final_circuit_<model>.png    sel_induction and PR trajectories of the final induction-circuit heads
  recall.png                   recall of the final induction circuit vs tokens (fraction of final, log x)
  ablations_<model>.png        ablation top-1 per condition vs tokens, mean over seeds with its 95% interval
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from circuits.discovery import analysis as A
from circuits.discovery import table as T


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _safe(name: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _save(fig, out: Path, name: str) -> str:
  fig.tight_layout()
  fig.savefig(out / name, dpi=110, metadata={"Software": None})
  _plt().close(fig)
  return name


def _fig_bos(models: dict, p: dict, out: Path) -> str:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.4, 4))
  kb, ka = A.key_bos_b(p["sel_threshold"], p["baseline"]), A.key_bos_a(p["sel_threshold"], p["baseline"])
  for i, (m, s) in enumerate(models.items()):
    tr = pd.DataFrame(s["trajectory"])
    color = f"C{i}"
    ax.plot(tr[T.TOKENS], 100 * tr[kb], "o-", color=color, label=f"{m}: {kb}")
    ax.plot(tr[T.TOKENS], 100 * tr[ka], "s--", color=color, alpha=0.6, label=f"{m}: {ka}")
  ax.set_xscale("log")
  ax.set_xlabel("tokens seen")
  ax.set_ylabel("BOS fraction (% of heads)")
  ax.set_title("BOS fraction: (b) sel_first >= T solid, (a) best class first dashed", fontsize=9)
  ax.legend(fontsize=6)
  ax.grid(alpha=0.3)
  return _save(fig, out, "bos_fraction.png")


def _fig_layers(m: str, s: dict, p: dict, out: Path) -> str:
  plt = _plt()
  pl = pd.DataFrame(s["per_layer_counts"])
  col = f"n_heads_{A.first_col(p['baseline'])}_ge_{A.fmt(p['sel_threshold'])}"
  revs = s["revisions"]
  mat = pl.pivot(index=T.LAYER, columns=T.REVISION, values=col).reindex(columns=revs)
  fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(revs) + 2), 4.2))
  im = ax.imshow(mat.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="viridis")
  ax.set_xticks(range(len(revs)))
  ax.set_xticklabels(revs, rotation=60, ha="right", fontsize=6)
  ax.set_yticks(range(len(mat.index)))
  ax.set_yticklabels(mat.index, fontsize=6)
  ax.set_ylabel("layer")
  ax.set_title(f"{m}: {col} per layer", fontsize=9)
  fig.colorbar(im, ax=ax)
  return _save(fig, out, f"per_layer_bos_{_safe(m)}.png")


def _fig_circuit(m: str, df: pd.DataFrame, s: dict, p: dict, out: Path) -> str:
  plt = _plt()
  col = T.sel_columns(p["baseline"])[T.CLASSES.index("induction")]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
  for l, h in s["final_induction_circuit"]:
    x = df[(df[T.LAYER] == l) & (df[T.HEAD] == h)].sort_values(T.TOKENS)
    a1.plot(x[T.TOKENS], x[col], "o-", label=f"L{l}_H{h}")
    a2.plot(x[T.TOKENS], x[T.PR], "o-", label=f"L{l}_H{h}")
  a1.axhline(p["induction_threshold"], color="k", ls=":", lw=1, label=f"threshold {A.fmt(p['induction_threshold'])}")
  for a, yl in ((a1, col), (a2, "pr (exp-entropy participation ratio)")):
    a.set_xscale("log")
    a.set_xlabel("tokens seen")
    a.set_ylabel(yl, fontsize=8)
    a.grid(alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=6)
  if not s["final_induction_circuit"]:  # say so on the figure rather than leave an empty panel
    a2.text(0.5, 0.5, "no head reaches the threshold at the last revision", transform=a2.transAxes, ha="center",
            fontsize=8)
  a1.set_yscale("log", nonpositive="clip")
  fig.suptitle(f"{m}: final induction circuit heads ({col} >= {A.fmt(p['induction_threshold'])} at the last revision)",
               fontsize=9)
  return _save(fig, out, f"final_circuit_{_safe(m)}.png")


def _fig_recall(models: dict, out: Path) -> str:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.4, 4))
  for i, (m, s) in enumerate(models.items()):
    c = pd.DataFrame(s["recall_curve"])
    ax.plot(c["tokens_fraction_of_final"], c["recall_of_final_induction_circuit"], "o-", label=m)
  ax.set_xscale("log")
  ax.axhline(2 / 3, color="k", ls=":", lw=1, label="2/3")
  ax.set_xlabel("tokens / tokens at final revision")
  ax.set_ylabel("|S(t) ∩ S(final)| / |S(final)|")
  ax.set_title("recall_of_final_induction_circuit", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, out, "recall.png")


def _fig_ablations(m: str, ab: pd.DataFrame, out: Path) -> str:
  plt = _plt()
  probes = sorted(ab["probe"].unique())
  fig, axes = plt.subplots(1, len(probes), figsize=(5 * len(probes), 3.6), squeeze=False)
  lo = [c for c in ab.columns if c.startswith("top1_mean_ci") and c.endswith("_low")][0]
  hi = lo[:-4] + "_high"
  for ax, pr in zip(axes[0], probes):
    g = ab[ab["probe"] == pr]
    for cond, gc in g.groupby("condition", sort=True):
      gc = gc.sort_values(T.TOKENS)
      y = gc["top1_mean"].to_numpy()
      err = np.vstack([y - gc[lo].to_numpy(), gc[hi].to_numpy() - y])
      ax.errorbar(gc[T.TOKENS], y, yerr=err, marker="o", capsize=3, label=cond)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("top-1 accuracy at q (mean over seeds, 95% t-interval)", fontsize=7)
    ax.set_title(f"{m}: probe {pr}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  return _save(fig, out, f"ablations_{_safe(m)}.png")


def _table(rows, columns: Optional[Sequence[str]] = None) -> str:
  df = pd.DataFrame(rows)
  if columns is not None:
    df = df[[c for c in columns if c in df.columns]]
  if df.empty:
    return "<p><i>(empty)</i></p>"
  return df.to_html(index=False, na_rep="—", float_format=lambda v: f"{v:.6g}", border=0, classes="t")


def _kv(d: dict) -> str:
  rows = []
  for k, v in d.items():
    if isinstance(v, dict):
      v = ", ".join(f"{a}={b}" for a, b in v.items())
    rows.append(f"<tr><td><code>{html.escape(str(k))}</code></td><td>{html.escape(str(v))}</td></tr>")
  return "<table class='t'>" + "".join(rows) + "</table>"


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;font-size:13px}
table.t{border-collapse:collapse;margin:.5em 0;font-size:11px}table.t td,table.t th{border:1px solid #ccc;
padding:2px 5px;text-align:right}code{font-size:11px}img{max-width:100%}h2{border-bottom:1px solid #999}"""


def write_report(df: pd.DataFrame, out_dir, summary: Optional[dict] = None,
                 ablations: Optional[pd.DataFrame] = None, sections: Sequence[tuple] = (),
                 title: str = "Attention-circuit discovery report", **params) -> Path:
  """Writes `<out_dir>/report.html` and its PNGs; returns the html path.

  `summary` is `analysis.summarize(df, ablations, **params)` (computed when None). `sections` are extra
  (heading, html) pairs appended at the end (e.g. the paper-vs-data comparison).
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  df = T.validate(df)
  if summary is None:
    summary = A.summarize(df, ablations=ablations, **params)
  p = summary["parameters"]
  models = summary["models"]
  tables = T.split_models(df)
  body = [f"<h1>{html.escape(title)}</h1>",
          "<p>Parameters: " + html.escape(", ".join(f"{k}={v}" for k, v in p.items())) + "</p>",
          "<p>Definitions: " + "; ".join(f"<code>{html.escape(k)}</code>: {html.escape(v)}"
                                         for k, v in summary["definitions"].items()) + "</p>"]
  body.append("<h2>BOS fraction (F2)</h2>")
  body.append(f"<img src='{_fig_bos(models, p, out)}'>")
  body.append("<h2>Recall of the final induction circuit (F4)</h2>")
  body.append(f"<img src='{_fig_recall(models, out)}'>")
  for m, s in models.items():
    body.append(f"<h2>Model {html.escape(m)}</h2>")
    body.append("<h3>Milestones (F3)</h3>" + _kv(s["milestones"]))
    body.append("<h3>Floor check, layers " + html.escape(str(p["floor_layers"])) + " (F1)</h3>" + _kv(s["floor_check"]))
    body.append(f"<img src='{_fig_layers(m, s, p, out)}'>")
    body.append("<h3>Trajectory per revision (F2)</h3>" + _table(s["trajectory"]))
    body.append("<h3>Final induction circuit: selectivity and PR</h3>")
    body.append(f"<p>final_induction_circuit (layer, head): {s['final_induction_circuit']}</p>")
    body.append(f"<img src='{_fig_circuit(m, tables[m], s, p, out)}'>")
    body.append("<h3>Recall curve (F4)</h3>" + _table(s["recall_curve"]))
    rk = [k for k in s if k.startswith("first_revision_recall_of_final")]
    body.append(_kv({k: s[k] for k in rk}))
    body.append(f"<h3>PR lead (F5), k = {A.fmt(p['pr_lead_k'])}</h3>" + _table(s["pr_lead_per_final_head"]))
    body.append(_kv({k: v for k, v in s.items() if k.startswith("pr_lead_") and not isinstance(v, list)}))
    body.append("<h3>Null-selectivity floor (F6)</h3>")
    body.append(_table(s["null_floor"]) if s["null_floor_available"] else f"<p>{html.escape(str(s['null_floor']))}</p>")
    ik = [k for k in s if k.startswith("pr_integral_per_head")][0]
    top = sorted(s[ik], key=lambda r: -(r["pr_integral"] or -np.inf))[:10]
    body.append(f"<h3>PR integral, 10 largest (<code>{ik}</code>)</h3>" + _table(top))
    if "trajectory_uniform_baseline" in s:
      body.append("<h3>Uniform baseline (1/(q+1))</h3>" + _table(s["trajectory_uniform_baseline"]))
  if "ablations" in summary:
    ab = pd.DataFrame(summary["ablations"])
    body.append("<h2>Ablations (mean over seeds; 95% Student-t interval of the mean; seed range)</h2>")
    for m, g in (ab.groupby(T.MODEL, sort=True) if T.MODEL in ab.columns else [("table", ab)]):
      body.append(f"<img src='{_fig_ablations(m, g, out)}'>")
    body.append(_table(ab))
  for heading, content in sections:
    body.append(f"<h2>{html.escape(heading)}</h2>{content}")
  page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
         f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
  from circuits import files
  return files.atomic_write_text(out / "report.html", page)
