"""The comparative report of a study: <workdir>/study/{summary.json, report.md, report.html, *.png}.

Figures (PNG, one column per family):
  first_mass.png    trainer JSONL: first_mass (attention on key 0) per layer over steps, max over the layer's
                    heads; second row: max sel_first per layer over checkpoints (in-distribution probe)
  induction.png     per checkpoint: max induction attention per layer (in-distribution probe); second row:
                    max sel_induction per layer, in-distribution (solid) and synthetic probe (dashed)
  span_loss.png     per checkpoint: loss on the second copy of the span (r_2..r_m) and on the first copy
  ablations.png     top-1 at the query, in-distribution probe, per checkpoint: clean, circuit zero-ablated,
                    matched-random heads (mean over seeds, 95% t-interval band), every head of those layers
Reuses circuits.discovery.report's table/HTML helpers; each family's full discovery report (every table of
the paper's analyses) is linked from the page.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from circuits import rundir
from circuits.discovery import report as R
from circuits.files import atomic_write_json, atomic_write_text
from circuits.study import analysis as SA
from circuits.study import seeds as SS


def _fmt_marker(v) -> str:
  if v is None:
    return "not reached"
  s = f"step {v['step']} ({v['tokens']:.3g} tokens)"
  if v.get("layers"):
    s += f", layers {v['layers']}"
  return s


def _steps_table(path: Path):
  rows = rundir.read_jsonl(path)
  return sorted(rows, key=lambda r: r["step"])


def fig_first_mass(study, p, out: Path) -> str:
  plt = R._plt()  # pylint: disable=protected-access
  fams = study.family_order
  fig, axes = plt.subplots(2, len(fams), figsize=(4.2 * len(fams), 6.4), squeeze=False)
  for i, f in enumerate(fams):
    tj = [r for r in rundir.read_metrics(p.run(f)) if "attn/first_mass" in r]
    ax = axes[0, i]
    if tj:
      s = np.array([r["step"] for r in tj])
      fm = np.array([r["attn/first_mass"] for r in tj], float)  # [steps, L, H]
      for l in range(fm.shape[1]):
        ax.plot(s, fm[:, l].max(-1), label=f"layer {l}")
    ax.axhline(float(study.markers.first_mass), color="k", ls=":", lw=1)
    ax.set_title(f"{f}: first_mass, max over heads", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[1, i]
    t = p.sweep(f, "combined") / "table.csv"
    if t.exists():
      df = pd.read_csv(t)
      g = df.groupby(["step", "layer"])["sel_first"].max().unstack()
      for l in g.columns:
        ax.plot(g.index.to_numpy(), g[l].to_numpy(), "o-", ms=3, label=f"layer {l}")
    ax.axhline(float(study.markers.sel_first), color="k", ls=":", lw=1, label=f"{study.markers.sel_first:g}")
    ax.set_yscale("log", nonpositive="clip")
    ax.set_title(f"{f}: max sel_first per layer (in-distribution probe)", fontsize=9)
    ax.set_xlabel("step (checkpoint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  return R._save(fig, out, "first_mass.png")  # pylint: disable=protected-access


def fig_induction(study, p, out: Path) -> str:
  plt = R._plt()  # pylint: disable=protected-access
  fams = study.family_order
  fig, axes = plt.subplots(2, len(fams), figsize=(4.2 * len(fams), 6.4), squeeze=False)
  for i, f in enumerate(fams):
    rm = _steps_table(p.metrics(f))
    ax = axes[0, i]
    if rm:
      s = np.array([r["step"] for r in rm])
      ia = np.array([r["induction_attention"] for r in rm], float)
      for l in range(ia.shape[1]):
        ax.plot(s, ia[:, l].max(-1), "o-", ms=3, label=f"layer {l}")
    ax.axhline(float(study.markers.induction_attention), color="k", ls=":", lw=1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{f}: induction attention A[q, ab+1], max over heads", fontsize=9)
    ax.set_xlabel("step (checkpoint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[1, i]
    for probe, ls in (("combined", "-"), ("synthetic", "--")):
      t = p.sweep(f, probe) / "table.csv"
      if not t.exists():
        continue
      g = pd.read_csv(t).groupby(["step", "layer"])["sel_induction"].max().unstack()
      for j, l in enumerate(g.columns):
        ax.plot(g.index.to_numpy(), g[l].to_numpy(), ls, color=f"C{j}", label=f"L{l} {probe}")
    ax.axhline(float(study.markers.sel_induction), color="k", ls=":", lw=1)
    ax.set_yscale("log", nonpositive="clip")
    ax.set_title(f"{f}: max sel_induction per layer", fontsize=9)
    ax.set_xlabel("step (checkpoint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5, ncol=2)
  return R._save(fig, out, "induction.png")  # pylint: disable=protected-access


def fig_span_loss(study, p, out: Path) -> str:
  plt = R._plt()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(6.4, 4))
  for i, f in enumerate(study.family_order):
    rm = _steps_table(p.metrics(f))
    if not rm:
      continue
    s = np.array([r["step"] for r in rm])
    ax.plot(s, [r["span_copy_loss"] for r in rm], "o-", ms=3, color=f"C{i}", label=f"{f}: second copy r_2..r_m")
    ax.plot(s, [r["span_first_copy_loss"] for r in rm], ":", color=f"C{i}", label=f"{f}: first copy")
  ax.axhline(float(study.markers.span_copy_loss), color="k", ls="--", lw=1,
             label=f"marker: < {study.markers.span_copy_loss:g}")
  ax.set_xlabel("step (checkpoint)")
  ax.set_ylabel("cross-entropy (nats), held-out rows")
  ax.set_title("loss on the span copy", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  return R._save(fig, out, "span_loss.png")  # pylint: disable=protected-access


def fig_ablations(study, p, out: Path) -> str:
  from circuits.discovery import analysis as A
  plt = R._plt()  # pylint: disable=protected-access
  fams = study.family_order
  fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 3.6), squeeze=False)
  for i, f in enumerate(fams):
    ax = axes[0, i]
    path = p.sweep(f, "combined") / "ablations.csv"
    if path.exists():
      s = A.summarize_ablations(pd.read_csv(path, dtype={"revision": str}))
      lo = [c for c in s.columns if c.startswith("top1_mean_ci") and c.endswith("_low")][0]
      hi = lo[:-4] + "_high"
      for cond, color in (("clean", "k"), ("circuit_zero", "C3"), ("random_zero", "C0"), ("layers_zero", "C2")):
        g = s[s["condition"] == cond].sort_values("step")
        if g.empty:
          continue
        ax.plot(g["step"], g["top1_mean"], "o-", ms=3, color=color, label=cond)
        if cond == "random_zero":
          ax.fill_between(g["step"], g[lo], g[hi], color=color, alpha=0.25, label="random 95% CI")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step (checkpoint)")
    ax.set_ylabel("top-1 at the query", fontsize=8)
    ax.set_title(f"{f}: ablating the induction circuit", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  return R._save(fig, out, "ablations.png")  # pylint: disable=protected-access


def timings(p) -> dict:
  out = {}
  for f in sorted(p.stages.glob("*.json")):
    try:
      out[f.stem] = float(json.loads(f.read_text()).get("wall_s", float("nan")))
    except (json.JSONDecodeError, ValueError):
      continue
  return out


def findings(summary: dict) -> list[str]:
  """Plain sentences: what formed, what did not, the order and the gaps."""
  lines = []
  for f, s in summary["families"].items():
    mk = s["markers"]
    if s.get("steps_trained", 0) < s["steps_configured"] or not s.get("swept"):
      lines.append(f"{f}: INCOMPLETE at the time of this report: trained {s.get('steps_trained', 0)} of "
                   f"{s['steps_configured']} steps; checkpoints swept: {'yes' if s.get('swept') else 'no'} (rerun "
                   "the study to resume).")
    formed = [n for n, v in mk.items() if v is not None]
    missing = [n for n, v in mk.items() if v is None]
    lines.append(f"{f}: reached {len(formed)} of {len(mk)} markers" +
                 (f"; NOT reached: {', '.join(missing)}" if missing else "") + ".")
    for name, g in s["gaps"].items():
      if g["steps"] is not None:
        lines.append(f"{f}: {name} = {g['steps']} steps ({g['tokens']:.3g} tokens): {g['order']}.")
      else:
        lines.append(f"{f}: {name}: {g['order']}.")
    c = s.get("causal")
    if c and "drop_circuit_zero" in c:
      lines.append(f"{f}: at step {c['step']}, zero-ablating the induction circuit ({c['circuit_heads']}, "
                   f"{c['circuit_source']}) drops top-1 on the in-distribution probe by {c['drop_circuit_zero']:.3f} "
                   f"(clean {c['clean']['top1']:.3f}); matched-random heads drop it by "
                   f"{c.get('drop_random_zero', float('nan')):.3f} (95% CI {np.round(c.get('drop_random_zero_ci95', [np.nan, np.nan]), 3).tolist()})"
                   + ("" if c.get("circuit_drop_exceeds_random_ci") else " -- NOT above the random-control interval") + ".")
  return lines


def write(study, p) -> dict:
  out = p.report
  out.mkdir(parents=True, exist_ok=True)
  summary = SA.summarize(study, p)
  summary["timings_s"] = timings(p)
  summary["findings"] = findings(summary)
  seeded = "seeds" in study
  if seeded:
    summary["seeds"] = SS.summarize(study, p, summary["families"])
  seed_fig = fig_seeds(study, p, out) if seeded else None
  seed_secs = seeds_sections(study, summary["seeds"]) if seeded else []
  choices = pilot_choice_rows(study)
  figs = [fig_first_mass(study, p, out), fig_induction(study, p, out), fig_span_loss(study, p, out),
          fig_ablations(study, p, out)]
  atomic_write_json(out / "summary.json", summary, indent=1, default=str)
  fams = list(summary["families"])
  defs = summary["marker_definitions"]
  marker_rows = [{"marker": n, **{f: _fmt_marker(summary["families"][f]["markers"][n]) for f in fams}} for n in defs]
  gap_rows = []
  for n in summary["families"][fams[0]]["gaps"]:
    row = {"gap (induction marker minus sink marker)": n}
    for f in fams:
      g = summary["families"][f]["gaps"][n]
      row[f] = (f"{g['steps']} steps / {g['tokens']:.3g} tokens ({g['order']})" if g["steps"] is not None
                else g["order"])
    gap_rows.append(row)
  final_keys = list(dict.fromkeys(k for f in fams for k in summary["families"][f]
                                  if k.startswith(("final_", "initial_", "steps"))))
  final_rows = [{"quantity": k, **{f: summary["families"][f].get(k) for f in fams}} for k in final_keys]
  causal_rows = []
  for f in fams:
    c = summary["families"][f].get("causal") or {}
    if "clean" in c:
      causal_rows.append({"family": f, "step": c["step"], "circuit_heads": c["circuit_heads"],
                          "circuit_source": c["circuit_source"], "top1 clean": c["clean"]["top1"],
                          "top1 circuit_zero": c.get("circuit_zero", {}).get("top1"),
                          "top1 circuit_mean": c.get("circuit_mean", {}).get("top1"),
                          "top1 random_zero (mean)": c.get("random_zero", {}).get("top1"),
                          "random_zero 95% CI": str(np.round(c.get("random_zero", {}).get("ci95", [np.nan] * 2), 4).tolist()),
                          "top1 layers_zero": c.get("layers_zero", {}).get("top1"),
                          "drop circuit_zero": c.get("drop_circuit_zero"), "drop random_zero": c.get("drop_random_zero")})
  recipe_rows = [{"family": f, **study.families[f].to_dict()} for f in fams]
  tm = summary["timings_s"]
  # ---- markdown
  md = [f"# Study `{study.name}`: when do induction heads and first-token sinks form?", "",
        "Task: BOS + Bigram-Backcopy chain with an inserted repeated span (PILOTS.md \"both circuits in one "
        f"model\"), T = {study.data.seq_len}, batch {study.train.batch_size} "
        f"({summary['tokens_per_step']} tokens per step).", "", "## Findings", ""]
  md += [f"- {x}" for x in summary["findings"]]
  for title, rows in seed_secs:
    md += ["", f"## {title}", ""]
    md += [f"- {x}" for x in rows] if rows and isinstance(rows[0], str) else [_md_table(rows)]
    if title.startswith("Seeds: what"):
      md += ["", f"![{seed_fig}]({seed_fig})"]
  if choices:
    md += ["", "## Choices that moved a result in the pilots", "", _md_table(choices)]
  md += ["", "## Transition markers (first checkpoint or logged step where the condition holds)", "",
         _md_table(marker_rows), "", "## Gaps", "", _md_table(gap_rows), "", "## Causal check (final checkpoint)", "",
         _md_table(causal_rows), "", "## Final values", "", _md_table(final_rows), "", "## Marker definitions", ""]
  md += [f"- `{n}`: {d}" for n, d in defs.items()]
  md += ["", "## Recipes", "", _md_table(recipe_rows), "", "## Figures", ""]
  md += [f"![{x}]({x})" for x in figs]
  md += ["", "## Job wall times (s)", "", _md_table([{"job": k, "wall_s": round(v, 1)} for k, v in tm.items()]), ""]
  atomic_write_text(out / "report.md", "\n".join(md) + "\n")
  # ---- html
  body = [f"<h1>Study {html.escape(study.name)}: when do induction heads and first-token sinks form?</h1>",
          "<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in summary["findings"]) + "</ul>"]
  for title, rows in seed_secs:
    if rows and isinstance(rows[0], str):
      body.append(f"<h2>{html.escape(title)}</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in rows) + "</ul>")
    else:
      body.append(f"<h2>{html.escape(title)}</h2>" + R._table(rows))  # pylint: disable=protected-access
    if title.startswith("Seeds: what"):
      body.append(f"<img src='{seed_fig}'>")
  if choices:
    body.append("<h2>Choices that moved a result in the pilots</h2>" + R._table(choices))  # pylint: disable=protected-access
  body += ["<h2>Transition markers</h2>" + R._table(marker_rows),  # pylint: disable=protected-access
           "<h2>Gaps (induction marker minus sink marker)</h2>" + R._table(gap_rows),  # pylint: disable=protected-access
           "<h2>Causal check at the final checkpoint</h2>" + R._table(causal_rows),  # pylint: disable=protected-access
           "<h2>Final values</h2>" + R._table(final_rows),  # pylint: disable=protected-access
           "<h2>Marker definitions</h2>" + R._kv(defs)]  # pylint: disable=protected-access
  for x in figs:
    body.append(f"<h2>{html.escape(x)}</h2><img src='{x}'>")
  body.append("<h2>Recipes</h2>" + R._table(recipe_rows))  # pylint: disable=protected-access
  links = []
  for f in fams:
    for probe in study.sweep.probes:
      r = p.sweep(f, probe) / "report.html"
      if r.exists():
        links.append(f"<li><a href='{html.escape(os.path.relpath(r, out))}'>{f}: discovery report, {probe} probe</a></li>")
  body.append("<h2>Per-family discovery reports (every analysis of the paper)</h2><ul>" + "".join(links) + "</ul>")
  body.append("<h2>Job wall times (s)</h2>" + R._kv({k: round(v, 1) for k, v in tm.items()}))  # pylint: disable=protected-access
  page = (f"<!doctype html><html><head><meta charset='utf-8'><title>study {html.escape(study.name)}</title>"
          f"<style>{R._CSS}</style></head><body>{''.join(body)}</body></html>\n")  # pylint: disable=protected-access
  atomic_write_text(out / "report.html", page)
  return {"report": str(out / "report.html"), "figures": figs + ([seed_fig] if seed_fig else [])}


def _md_table(rows) -> str:
  if not rows:
    return "_(none)_"
  cols = list(rows[0])
  fmt = lambda v: (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "/")
  return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                   ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


# ------------------------------------------------------------------------------------------- seeds

def _g(x) -> str:
  return "-" if x is None else f"{x:g}"


def _range(st: dict, fmt=_g) -> str:
  return "-" if st["median"] is None else f"{fmt(st['min'])} to {fmt(st['max'])}"


def _run_tag(run: str) -> str:
  return run.rsplit("_", 1)[-1] if "_" in run else run


def fig_seeds(study, p, out: Path) -> str:
  """seeds.png: per family (columns), every replicate's trajectory (thin) and the median over replicates (thick):
  max first_mass over heads (trainer), span-copy loss and max sel_induction (in-distribution probe)."""
  S = SS
  plt = R._plt()  # pylint: disable=protected-access
  grp = S.groups(study)
  rows = (("first_mass", "max first_mass over heads (trainer)", float(study.markers.first_mass), "linear"),
          ("span_copy_loss", "loss on the span's second copy (nats)", float(study.markers.span_copy_loss), "linear"),
          ("sel_induction", "max sel_induction over heads (in-distribution)", float(study.markers.sel_induction),
           "log"))
  fig, axes = plt.subplots(len(rows), len(grp), figsize=(4.2 * len(grp), 3.0 * len(rows)), squeeze=False)
  for j, (fam, runs) in enumerate(grp.items()):
    tr = {r: S.trajectories(study, p, r) for r in runs}
    for i, (key, title, thr, scale) in enumerate(rows):
      ax = axes[i, j]
      curves = {r: tr[r][key] for r in runs if key in tr[r]}
      for k, (r, (s, v)) in enumerate(curves.items()):
        ax.plot(s, v, "-", lw=0.8, alpha=0.6, color=f"C{k}", label=f"{_run_tag(r)}: {S.seed_label(study, r)}")
      if curves:
        s, med, _ = S.median_curve(curves)
        ax.plot(s, med, "-", lw=2.2, color="k", label=f"median of {len(curves)}")
      ax.axhline(thr, color="k", ls=":", lw=1)
      if scale == "log":
        ax.set_yscale("log", nonpositive="clip")
      ax.set_title(f"{fam}: {title}", fontsize=8)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=5)
  return R._save(fig, out, "seeds.png")  # pylint: disable=protected-access


def _choice_value(study, key: str) -> str:
  if key.startswith("families.*."):
    field = key.split(".", 2)[2]
    vals = [study.families[r].get(field, None) for r in study.family_order]
    uniq = list(dict.fromkeys("unset" if v is None else str(v) for v in vals))
    return ", ".join(uniq)
  node = study
  for part in key.split("."):
    node = node.get(part, None) if hasattr(node, "get") else None
  return "unset" if node is None else str(node)


def pilot_choice_rows(study) -> list[dict]:
  """The config's `pilot_choices` (choice -> fields, note) with the values this study uses."""
  if "pilot_choices" not in study:
    return []
  return [{"choice": name, "config": ", ".join(c.fields), "value": "; ".join(_choice_value(study, k) for k in c.fields),
           "why it matters (pilots)": c.note} for name, c in study.pilot_choices.items()]


def seeds_sections(study, ss: dict) -> list[tuple[str, object]]:
  """(title, rows or sentences) of the seeds report: verdicts, markers over seeds, gaps per seed, PR lead."""
  out = [("Seeds: what the spread says", ss["verdicts"]["sentences"])]
  seed_rows = [{"family": f, **{_run_tag(r): lab for r, lab in labs.items()}} for f, labs in ss["seeds"].items()]
  out.append(("Seeds: the replicates (model seed / data seed)", seed_rows))
  mrows = []
  for f, a in ss["families"].items():
    for n, m in a["markers"].items():
      mrows.append({"family": f, "marker": n, "seeds reached": f"{m['n_reached']} of {m['n_seeds']}",
                    "step median": _g(m["step_stats"]["median"]), "step range": _range(m["step_stats"]),
                    "tokens median": "-" if m["tokens_stats"]["median"] is None else f"{m['tokens_stats']['median']:.3g}",
                    "tokens range": _range(m["tokens_stats"], lambda x: f"{x:.3g}"),
                    "per seed (step)": ", ".join(f"{_run_tag(r)} {_g(s) if s is not None else 'not reached'}"
                                                 for r, s in zip(a["runs"], m["step"]))})
  out.append(("Seeds: markers (median and range over the seeds that reached each)", mrows))
  grows = []
  for f, a in ss["families"].items():
    for n, g in a["gaps"].items():
      grows.append({"family": f, "gap (induction minus sink)": n,
                    "per seed (steps)": ", ".join(f"{_run_tag(r)} {_g(s) if s is not None else 'undefined'}"
                                                  for r, s in zip(a["runs"], g["steps"])),
                    "median": _g(g["steps_stats"]["median"]), "range": _range(g["steps_stats"]),
                    "tokens median": "-" if g["tokens_stats"]["median"] is None else f"{g['tokens_stats']['median']:.3g}",
                    "sink first / induction first / same / undefined":
                        f"{g['n_sink_first']} / {g['n_induction_first']} / {g['n_same']} / {len(g['steps']) - g['n_defined']}"})
  out.append(("Seeds: sink-minus-induction gaps per seed (steps; > 0: the sink came first)", grows))
  d = ss["pr_lead_definition"]
  lead_lines = [f"Definition: {d['text']}"]
  lead_lines += [SS.pr_lead_sentence(f, x["family"], d["k"], d["threshold"]) for f, x in ss["pr_lead"].items()]
  out.append(("PR lead (F5) on our runs", lead_lines))
  srows, hrows = [], []
  for f, x in ss["pr_lead"].items():
    for r, pr in x["per_seed"].items():
      c = pr["counts"]
      srows.append({"family": f, "run": r, "seeds": ss["seeds"][f][r], "measured": pr["measured"],
                    "heads crossing": pr["n_heads"], "lead": c["lead"], "same checkpoint": c["same checkpoint"],
                    "after": c["after"], "no PR rise": c["no PR rise"], "median lead (steps)": _g(pr["lead_steps_median"])})
      for h in pr["heads"]:
        hrows.append({"run": r, "head": f"L{h['layer']}H{h['head']}", "final circuit": h["in_final_circuit"],
                      "PR_0": h["pr_first"], "PR before cross": h["pr_before_cross"], "PR at cross": h["pr_at_cross"],
                      "rise step": _g(h["rise_step"]), "cross step": _g(h["cross_step"]),
                      "lead (steps)": _g(h["lead_steps"]), "verdict": h["verdict"]})
  out.append(("PR lead per seed", srows))
  out.append(("PR lead per head", hrows))
  return out
