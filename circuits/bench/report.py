"""Running every section (`run`) and the results as JSON and markdown tables (`write`, `markdown`)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax

from circuits.bench.discovery import bench_discovery, bench_discovery_scaling
from circuits.bench.harness import FLOP_FORMULA, Settings, _now, bench_peak
from circuits.bench.storage import bench_checkpoint, bench_conversion
from circuits.bench.train import bench_diag_scaling, bench_train_one
from circuits.files import atomic_write_text

def run(st: Settings, log=print, command: str = "", out_dir=None) -> dict:
  """Every section; returns the results dict (JSON-serialisable). With out_dir, bench.json and bench.md are
  rewritten after each section (a run cut short keeps what it measured). The trainer goes last (slowest)."""
  t_start = _now()
  res: dict[str, Any] = dict(
      meta=dict(date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=command or "python -m launch.bench" + (" --quick" if st.quick else ""),
                backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
                cpu_count=os.cpu_count(), load_average_start=list(os.getloadavg()), jax=jax.__version__,
                flop_formula=FLOP_FORMULA, timing="median of `repeats` calls after `warmup` untimed calls; "
                "compared variants timed interleaved", settings=dataclasses.asdict(st)))

  def done(section):
    res["meta"]["load_average_end"] = list(os.getloadavg())
    res["meta"]["wall_s"] = _now() - t_start
    res["meta"].setdefault("complete", False)
    if out_dir is not None:
      write(res, out_dir)
    log(f"[bench] {section} done ({_now() - t_start:.0f} s)")

  res["peak"] = bench_peak(st)
  log(f"[bench] peak f32 {res['peak']['f32_gflops']:.0f} GFLOP/s, bf16->f32 {res['peak']['bf16_f32acc_gflops']:.0f}")
  done("peak")
  tmp = Path(tempfile.mkdtemp(prefix="circuits_bench_"))
  try:
    if "attention" in st.sections:
      from circuits.bench import attention
      res["attention"] = attention.run(quick=st.quick)
      done("attention")
    if "public" in st.sections:
      from circuits.bench import public
      tiny = None
      if st.quick:  # the same code on a tiny config of the published layout
        tiny = {r: dict(public.random_hf.PUBLISHED[r], hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                        vocab_size=512, num_attention_heads=4) for r in st.public_repos}
      res["public"] = public.run(tmp / "public", repos=st.public_repos, ns=st.public_ns,
                                 seq_len=64 if st.quick else 256, log=log, hf_configs=tiny)
      done("public")
    if "core" not in st.sections:
      return res
    res["discovery"] = bench_discovery(st, tmp)
    log(f"[bench] discovery ours {res['discovery']['ours_s']:.3f} s, reference {res['discovery']['reference_s']:.3f} s")
    done("discovery")
    res["io"] = dict(conversion=bench_conversion(st, tmp), checkpoint=bench_checkpoint(st, tmp))
    done("io")
    res["scaling"] = {}
    res["train"] = []
    for si, size in enumerate(st.sizes):
      fams = tuple(st.size_families.get(size, st.families))
      for fam in fams:
        t0 = _now()
        res["train"].append(bench_train_one(st, fam, size, res["peak"]["f32_gflops"]))
        r = res["train"][-1]
        log(f"[bench] train {fam} {size}: {r['tokens_per_s']:.0f} tokens/s, diag ratio "
            f"{r['ratios']['diagnostics_on_over_off']:.3f} ({_now() - t0:.0f} s)")
        if size == st.scaling_size and fam == st.scaling_family:
          res["scaling"]["diagnostics_vs_seq_len"] = bench_diag_scaling(st, res["train"])
        done(f"train {fam} {size}")
      if si == 0:  # before the larger sizes: a run cut short keeps the scaling figures
        res["scaling"]["discovery"] = bench_discovery_scaling(st, tmp)
        done("scaling.discovery")
    if "diagnostics_vs_seq_len" not in res["scaling"]:
      res["scaling"]["diagnostics_vs_seq_len"] = bench_diag_scaling(st, res["train"])
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    res["meta"]["complete"] = True
    done("all")
  return res


def iter_ratios(res: dict, prefix: str = ""):
  """(dotted path, value) of every number under a `ratios` key."""
  if isinstance(res, dict):
    for k, v in res.items():
      if k == "ratios":
        for rk, rv in v.items():
          yield f"{prefix}{rk}", rv
      else:
        yield from iter_ratios(v, f"{prefix}{k}.")
  elif isinstance(res, list):
    for i, v in enumerate(res):
      yield from iter_ratios(v, f"{prefix}{i}.")


def markdown(res: dict) -> str:
  """The results as markdown tables (what docs/benchmarks.md carries)."""
  return _markdown_core(res) + _markdown_scale(res)


def _paired(row: dict, key: str = "on_over_off_paired") -> str:
  p = row.get(key)
  return f"{p['median']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]" if p else "-"


def _rounds(row: dict, key: str = "on_over_off_paired") -> str:
  return str(row[key]["rounds"]) if row.get(key) else "-"


def _markdown_scale(res: dict) -> str:
  """The attention-at-scale and 1B-shaped discovery sections (empty when not run)."""
  lines = []
  rows = res.get("attention") or []
  diag = [r for r in rows if r.get("section") == "diag"]
  if diag:
    lines += ["", "**Attention: blockwise diagnostics on / off vs T** (loss and grads; `1-layer d64`: attention is "
              "nearly the whole step, the stress case; `pythia 10M`: the trainer benchmark's model; tokens per step "
              "fixed, interleaved medians; the paired column is the median of the per-round ratios with its 95% bootstrap "
              "interval):", "", "| model | T | batch | rounds | step s on | step s off | on/off (>= 0.98) | "
              "on/off paired [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.get('model', '1-layer d64')} | {r['seq_len']} | {r['batch']} | {_rounds(r)} | "
              f"{r['step_s_on']:.4f} | {r['step_s_off']:.4f} | {r['on_over_off']:.3f} | {_paired(r)} |" for r in diag]
  cost = [r for r in rows if r.get("section") == "cost"]
  if cost:
    lines += ["", "**Attention: what the diagnostics add, by XLA's cost analysis** (the compiled loss-and-grad step "
              "with diagnostics on / off; no timing, so load does not move it; XLA:CPU's fusion choices may differ "
              "between CPUs; blockwise with one key block, so that every element is counted):", "",
              "| impl | model | T | batch | FLOPs on/off | bytes accessed on/off | transcendentals on/off |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['impl']} | {r['model']} | {r['seq_len']} | {r['batch']} | {r['flops_on_over_off']:.4f} | "
              f"{r['bytes_on_over_off']:.4f} | {r['transcendentals_on_over_off']:.4f} |" for r in cost]
  impls = [r for r in rows if r.get("section") == "impls"]
  if impls:
    mib = lambda b: "-" if b is None else f"{b / 2**20:.1f}"
    lines += ["", "**Attention: exact vs blockwise** (train step with diagnostics; step seconds interleaved; XLA temp "
              "memory at batch 1 under the memory-optimised CPU scheduler):", "",
              "| T | batch | step s exact | step s blockwise | blockwise throughput / exact | temp MiB exact (b 1) | "
              "temp MiB blockwise (b 1) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seq_len']} | {r['batch']} | {r['step_s_exact']:.4f} | {r['step_s_blockwise']:.4f} | "
              f"{r['blockwise_over_exact_throughput']:.2f} | {mib(r['temp_bytes_exact_b1'])} | "
              f"{mib(r['temp_bytes_blockwise_b1'])} |" for r in impls]
  mem = [r for r in rows if "temp_bytes" in r and r.get("section") not in ("impls", "diag", "cost")]
  if mem:
    lines += ["", "**Attention: memory vs T** (XLA temp bytes of one train step, batch 1, memory-optimised CPU "
              "scheduler; T x S-sized buffers counted in the compiled program):", "",
              "| impl | T | temp MiB | [T, S]-sized buffers |", "|---|---|---|---|"]
    lines += [f"| {r['impl']} | {r['seq_len']} | {r['temp_bytes'] / 2**20:.1f} | {len(r.get('ts_shapes') or [])} |"
              for r in mem]
  if res.get("public"):
    from circuits.bench import public
    lines += ["", "**Discovery CLI on 1B-shaped checkpoints** (random weights in the published configs and file "
              "dtypes; `launch.discover --hf_revisions`, ablations off; per revision = load + convert + pass, "
              "timed from the second revision's table write):", "", public.markdown(res["public"]).rstrip()]
  return "\n".join(lines) + ("\n" if lines else "")


def _markdown_core(res: dict) -> str:
  m, p = res["meta"], res["peak"]
  la = lambda x: ", ".join(f"{v:.2f}" for v in x)
  st = m["settings"]
  lines = [f"Measured {m['date_utc']} on backend `{m['backend']}` ({len(m['devices'])} device(s): "
           f"{', '.join(m['devices'])}; {m['cpu_count']} CPU cores), command `{m['command']}`, "
           f"{m['wall_s']:.0f} s. Load average (1, 5, 15 min) at start {la(m['load_average_start'])}, "
           f"at end {la(m['load_average_end'])}. Timing: {m['timing']} "
           f"(train: warmup {st['warmup']}, repeats {st['repeats']}).", "",
           "**Peak** (matmul n = %d, 2n^3 FLOPs): f32 %.0f GFLOP/s; bf16 inputs, f32 accumulation %.0f GFLOP/s "
           "(ratio %.2f)." % (p["n"], p["f32_gflops"], p["bf16_f32acc_gflops"], p["bf16_over_f32"]), "",
           f"**Trainer** (batch {st['batch']} x T {st['seq_len']}; {m['flop_formula']}; MFU against the f32 peak; "
           f"probe K = {st['probe_every']}, {st['probe_n']} examples):", "",
           "| family | size | params total / N | step s | tokens/s | MFU | diag on/off (>= 0.98) | probe amortised "
           "(<= 1%) | ours / reference | bf16 / fp32 activations | compile s | warmup / repeats |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in res.get("train", []):
    q = r["ratios"]
    bf16 = f"{q['bf16_over_fp32']:.2f}" if "bf16_over_fp32" in q else "-"
    lines.append(f"| {r['family']} | {r['size']} | {r['params_total'] / 1e6:.1f}M / {r['params_active_N'] / 1e6:.1f}M "
                 f"| {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {q['mfu'] * 100:.1f}% | "
                 f"{q['diagnostics_on_over_off']:.3f} (paired {_paired(r, 'diagnostics_on_over_off_paired')}) | "
                 f"{r['probe_amortised_frac'] * 100:.2f}% | "
                 f"{q['ours_over_reference']:.2f} | {bf16} | {r['compile_s']['train_step']:.1f} | "
                 f"{r['warmup']} / {r['repeats']} |")
  if "io" not in res:
    return "\n".join(lines) + "\n"
  d = res["discovery"]
  lines += ["", f"**Discovery** ({d['model']}; N = {d['n']}, T = {d['seq_len']}; median of {d['repeats']}): ours "
            f"{d['ours_s']:.3f} s/revision, paper-style HF-eager reference {d['reference_s']:.3f} s/revision: "
            f"**{d['ratios']['reference_over_ours']:.1f}x** (goal >= 10x); pass compile {d['compile_s']:.1f} s."]
  if "real_vocab" in d:
    rv = d["real_vocab"]
    lines += ["", f"The same at the 1B vocabulary ({rv['model']}; probe ids {rv['probe_ids'][0]}..{rv['probe_ids'][1] - 1}):"
              f" ours {rv['ours_s']:.3f} s/revision, reference {rv['reference_s']:.3f} s/revision: "
              f"**{d['ratios']['reference_over_ours_real_vocab']:.1f}x**; pass compile {rv['compile_s']:.1f} s."]
  lines += [""]
  c, k = res["io"]["conversion"], res["io"]["checkpoint"]
  lines += [f"**I/O** (median of {c['repeats']} after 1 warm-up): conversion ({c['model']}, {c['file_mb']:.0f} MB "
            f"safetensors) read + transform {c['ratios']['read_convert_mb_per_s']:.0f} MB/s, save_converted "
            f"{c['ratios']['save_converted_mb_per_s']:.0f} MB/s, load_converted {c['ratios']['load_converted_mb_per_s']:.0f}"
            f" MB/s. Checkpoint ({k['state']}, {k['state_mb']:.0f} MB): async save blocking part "
            f"{k['save_blocking_s']:.3f} s ({k['ratios']['save_blocking_mb_per_s']:.0f} MB/s), total {k['save_total_s']:.3f}"
            f" s ({k['ratios']['save_total_mb_per_s']:.0f} MB/s); restore {k['restore_s']:.3f} s "
            f"({k['ratios']['restore_mb_per_s']:.0f} MB/s).", ""]
  lines += ["**Scaling: diagnostics vs T** (tokens per step fixed):", "", "| family | size | T | batch | step s on | "
            "step s off | on/off |", "|---|---|---|---|---|---|---|"]
  for r in res.get("scaling", {}).get("diagnostics_vs_seq_len", []):
    lines.append(f"| {r['family']} | {r['size']} | {r['seq_len']} | {r['batch']} | {r['step_s']:.3f} | "
                 f"{r['step_s_diag_off']:.3f} | {r['ratios']['diagnostics_on_over_off']:.3f} |")
  if "discovery" not in res.get("scaling", {}):
    return "\n".join(lines) + "\n"
  s = res["scaling"]["discovery"]
  lines += ["", f"**Scaling: discovery** (measure_revision, full pass with detectors, T = {s['seq_len']}):", "",
            "| revisions | N | total s | s/revision | relative to 1 |", "|---|---|---|---|---|"]
  for r in s["vs_revisions"]:
    lines.append(f"| {r['revisions']} | {r['n']} | {r['total_s']:.3f} | {r['per_revision_s']:.3f} | "
                 f"{r['ratios']['per_revision_over_one']:.2f} |")
  lines += ["", "| N | s/revision | s per 1000 examples | per example relative to smallest N |", "|---|---|---|---|"]
  for r in s["vs_n"]:
    lines.append(f"| {r['n']} | {r['seconds']:.3f} | {r['seconds_per_1000_examples']:.3f} | "
                 f"{r['ratios']['per_example_over_smallest']:.2f} |")
  return "\n".join(lines) + "\n"


def write(res: dict, out_dir) -> tuple[Path, Path]:
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  j, md = out / "bench.json", out / "bench.md"
  atomic_write_text(j, json.dumps(res, indent=1, default=float) + "\n")
  atomic_write_text(md, markdown(res))
  return j, md
