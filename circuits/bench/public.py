"""The discovery CLI on 1B-shaped checkpoints (random weights, the published configs), measured from outside.

    from circuits.bench import public as bench_public
    rows = bench_public.run(tmp_dir, repos=("EleutherAI/pythia-1b",), ns=(8, 24))

For each repo: two revisions of random weights in the published file dtype (circuits.convert.random_hf),
listed in a revision file, go through the real command line
`python -m launch.discover --hf_revisions FILE --out D --n N --seq_len 256 --ablations=false --analyze=false`
(plus CLI_ARGS[repo]: OLMoE with --dtype=bfloat16 --moe_impl=dense), once per N in `ns`, each in its own
process. Figures (named as in the rows):
  wall_s[N]            the whole command (start, imports, conversion, compile, both revisions)
  first_rev_s[N]       start -> the first revision's table written (includes imports and compiles)
  next_rev_s[N]        first -> second revision's table written: load + convert + measure, compiled already
  s_per_example        (next_rev_s[N2] - next_rev_s[N1]) / (N2 - N1): the marginal cost of one probe example
  fixed_rev_s          next_rev_s[N1] - N1 * s_per_example: load, conversion and the N-independent passes
                       (the TL detectors on n_detect examples)
  est_rev_s_2000       fixed_rev_s + 2000 * s_per_example: the extrapolated cost of the paper's N = 2000
  peak_rss_gib[N]      the process's peak resident set (getrusage ru_maxrss of that child)
  checkpoint_gib       the weights on disk; rss_over_checkpoint = max peak RSS / checkpoint size
Every figure is for T = seq_len (256). Ablations are off (they scale with the ablation examples and seeds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from circuits.convert import random_hf

ROOT = Path(__file__).resolve().parents[2]
FILE_DTYPE = {"EleutherAI/pythia-1b": "float16", "allenai/OLMo-1B-0724-hf": "float32",
              "allenai/OLMoE-1B-7B-0924": "bfloat16"}
# extra CLI flags per repo: OLMoE-1B-7B in fp32 (28 GB) does not fit a 24 GB machine, and on CPU its experts run
# dense (launch.discover --moe_impl explains why); the others keep the CLI defaults (fp32 parameters)
CLI_ARGS = {"allenai/OLMoE-1B-7B-0924": ("--dtype=bfloat16", "--moe_impl=dense")}


def _run_cli(list_file: Path, out: Path, n: int, seq_len: int, extra=()) -> dict:
  """Runs the discover CLI once; times from the per-revision tables' write times; peak RSS via wait4."""
  cmd = [sys.executable, "-m", "launch.discover", "--hf_revisions", str(list_file), "--out", str(out),
         "--n", str(n), "--seq_len", str(seq_len), "--ablations=false", "--analyze=false", *extra]
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  with open(out / "stdout.txt", "w") as fo, open(out / "stderr.txt", "w") as fe:  # files: a pipe could fill
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (peak RSS)
  wall = time.time() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  stdout, stderr = (out / "stdout.txt").read_text(), (out / "stderr.txt").read_text()
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}")
  done = sorted((out / "revisions").glob("*.csv"), key=lambda p: p.stat().st_mtime)
  t = [p.stat().st_mtime for p in done]
  return dict(cmd=" ".join(cmd), wall_s=wall, first_rev_s=t[0] - t0, next_rev_s=t[1] - t[0],
              peak_rss_gib=usage.ru_maxrss * 1024 / 2**30, stdout=stdout[-500:])


def run(tmp, repos=("EleutherAI/pythia-1b", "allenai/OLMo-1B-0724-hf"), ns=(8, 24), seq_len: int = 256,
        log=print, hf_configs=None) -> list[dict]:
  """One row per repo (see the module docstring for every field). hf_configs: {repo: config.json dict} to
  measure other shapes (tests use tiny ones); default the published configs (random_hf.PUBLISHED)."""
  hf_configs = hf_configs or random_hf.PUBLISHED
  tmp = Path(tmp)
  rows = []
  for repo in repos:
    name = repo.split("/")[1]
    lines, size = [], 0
    for i, step in enumerate((1000, 2000)):
      rev = f"step{step}" if "pythia" in repo else f"step{step}-tokens{2 * (i + 1)}B"
      d = tmp / name / rev
      if not (d / "config.json").exists():
        t = time.time()
        random_hf.write(d, hf_configs[repo], dtype=FILE_DTYPE[repo], seed=i)
        log(f"# wrote a random {repo}-shaped checkpoint ({FILE_DTYPE[repo]}) in {time.time() - t:.0f} s")
      size = sum(p.stat().st_size for p in d.glob("*.safetensors"))
      lines.append(json.dumps({"name": rev, "path": str(d)}))
    list_file = tmp / name / "revisions.jsonl"
    list_file.write_text("\n".join(lines) + "\n")
    per_n = {}
    for n in ns:
      out = tmp / name / f"out_n{n}"
      if out.exists():
        import shutil  # pylint: disable=import-outside-toplevel
        shutil.rmtree(out)
      per_n[n] = _run_cli(list_file, out, n, seq_len, CLI_ARGS.get(repo, ()))
      log(f"# {repo} N={n}: {per_n[n]['wall_s']:.0f} s, peak RSS {per_n[n]['peak_rss_gib']:.1f} GiB")
    n1, n2 = ns[0], ns[-1]
    slope = (per_n[n2]["next_rev_s"] - per_n[n1]["next_rev_s"]) / (n2 - n1)
    fixed = per_n[n1]["next_rev_s"] - n1 * slope
    peak = max(r["peak_rss_gib"] for r in per_n.values())
    rows.append(dict(repo=repo, file_dtype=FILE_DTYPE[repo], cli_args=list(CLI_ARGS.get(repo, ())), seq_len=seq_len,
                     ns=list(ns),
                     checkpoint_gib=size / 2**30, per_n={str(k): v for k, v in per_n.items()},
                     s_per_example=slope, fixed_rev_s=fixed, est_rev_s_2000=fixed + 2000 * slope,
                     peak_rss_gib=peak, rss_over_checkpoint=peak / (size / 2**30)))
  return rows


def markdown(rows: list[dict]) -> str:
  head = ("| checkpoint (random weights, published config) | file | T | seconds per revision at each N "
          "(load + convert + pass) | s per example | fixed s per revision | est. s per revision at N = 2000 "
          "| peak RSS GiB | RSS / checkpoint size |\n|---|---|---|---|---|---|---|---|---|\n")
  body = ""
  for r in rows:
    per = ", ".join(f"N={k}: {v['next_rev_s']:.1f}" for k, v in r["per_n"].items())
    args = " ".join(r.get("cli_args", ()))
    body += (f"| {r['repo']}{f' (`{args}`)' if args else ''} | {r['file_dtype']}, {r['checkpoint_gib']:.2f} GiB | "
             f"{r['seq_len']} | {per} | "
             f"{r['s_per_example']:.2f} | {r['fixed_rev_s']:.1f} | {r['est_rev_s_2000']:.0f} | "
             f"{r['peak_rss_gib']:.1f} | {r['rss_over_checkpoint']:.2f} |\n")
  return head + body
