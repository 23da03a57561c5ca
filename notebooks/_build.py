"""Writes the three notebooks from the cell sources below (`python notebooks/_build.py`).

Every notebook reads its settings from environment variables in its first code cells, so the test suite
(tests/test_notebooks.py) runs each one on tiny settings.
"""
import nbformat as nbf
from pathlib import Path

HERE = Path(__file__).parent


def setup(notebook: str, subprocess_check: bool = False) -> str:
  """The first code cell: on Colab, clone the repository, install what `notebook` needs for the runtime found
  (circuits.colab: the accelerator build of the pinned jax, never TensorFlow/seqio), print the devices."""
  extra = ", subprocess_check=True" if subprocess_check else ""
  return f'''# Setup. On Colab: clone the repository and install only what this notebook needs, with the jax build of
# this runtime (GPU: jax[cuda12|cuda13], TPU: jax[tpu]; circuits/colab.py); elsewhere nothing is installed
# (CIRCUITS_INSTALL=1 installs anyway). Then print the devices jax will use.
import os, subprocess, sys
IN_COLAB = "google.colab" in sys.modules
REPO_URL = os.environ.get("CIRCUITS_REPO", "")  # the repository's git URL (Colab only)
if IN_COLAB:
  if not REPO_URL and not os.path.isdir("/content/circuits"):
    raise RuntimeError("set CIRCUITS_REPO to the repository's git URL first: "
                       "os.environ['CIRCUITS_REPO'] = 'https://...'")
  if not os.path.isdir("/content/circuits"):
    subprocess.check_call(["git", "clone", "--depth", "1", REPO_URL, "/content/circuits"])
  os.chdir("/content/circuits")
ROOT = os.environ.get("CIRCUITS_ROOT") or ("/content/circuits" if IN_COLAB else os.path.abspath(".."))
if not os.path.isdir(os.path.join(ROOT, "circuits")):
  ROOT = os.path.abspath(".")
sys.path.insert(0, ROOT)
print("repository:", ROOT)
from circuits import colab
RUNTIME = colab.setup("{notebook}", root=ROOT, install=IN_COLAB or os.environ.get("CIRCUITS_INSTALL") == "1"{extra})'''


def nb(cells):
  n = nbf.v4.new_notebook()
  n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
  return n


QUICKSTART = [
    "md:# circuits quickstart\nTrain a tiny model on the combined task (BOS + Bigram-Backcopy chain with a repeated span, "
    "PILOTS.md) and plot the trainer's per-step diagnostics: loss, first-token (BOS) mass per layer, and the in-loop "
    "induction probe.",
    setup("quickstart"),
    '''# Parameters (environment variables override them; the test runs tiny settings)
import tempfile
FAMILY = os.environ.get("NB_FAMILY", "pythia")          # pythia | olmo | olmoe
STEPS = int(os.environ.get("NB_STEPS", "1500"))           # PILOTS.md: sinks ~500, induction ~1000 steps
WORKDIR = os.environ.get("NB_WORKDIR") or tempfile.mkdtemp(prefix="circuits_quickstart_")''',
    '''from configs import study_laptop
from circuits.study.pipeline import CombinedSource
from circuits.train import train
study = study_laptop.get_config()
cfg = study_laptop.get_config(FAMILY)                     # the study's trainer config for this family
cfg.data.cache = ""                                      # in-memory batches instead of the token cache
cfg.train.steps = STEPS
cfg.train.warmup_steps = min(50, STEPS // 4)
cfg.probe.every = max(1, STEPS // 20)
cfg.checkpoint.enabled = False
summary = train(cfg, WORKDIR, source=CombinedSource(study, seed=0))
print({k: summary[k] for k in ("steps_done", "final_loss", "tokens_per_s")})''',
    '''import json
import matplotlib.pyplot as plt
import numpy as np
rows = [json.loads(l) for l in open(os.path.join(WORKDIR, "metrics.jsonl"))]
steps = np.array([r["step"] for r in rows])
fm = np.array([r["attn/first_mass"] for r in rows])      # [logged steps, L, H]
probe = [r for r in rows if r.get("probe/sel_induction") is not None]
fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
ax[0].plot(steps, [r["loss"] for r in rows]); ax[0].set_title("loss (next-token CE)")
for l in range(fm.shape[1]):
  ax[1].plot(steps, fm[:, l].max(-1), label=f"layer {l}")
ax[1].set_title("first_mass: attention on BOS, max over heads"); ax[1].legend(fontsize=7)
if probe:
  si = np.array([r["probe/sel_induction"] for r in probe], float)
  for l in range(si.shape[1]):
    ax[2].plot([r["step"] for r in probe], si[:, l].max(-1), "o-", label=f"layer {l}")
  ax[2].set_yscale("log"); ax[2].legend(fontsize=7)
ax[2].set_title("in-loop probe: max sel_induction")
for a in ax: a.set_xlabel("step"); a.grid(alpha=.3)
plt.tight_layout(); plt.show()''',
]

RUN_ANALYSIS = [
    "md:# Analyse a run directory\nTables, figures and attention rows of chosen heads for one family of a study "
    "(`python -m launch.study ... --workdir W`, then `RUN_DIR=W`). Without `RUN_DIR` the notebook trains and sweeps a "
    "tiny run first.",
    setup("run_analysis"),
    '''# Parameters
import tempfile
RUN_DIR = os.environ.get("NB_RUN_DIR", "")               # a study workdir (runs/laptop)
FAMILY = os.environ.get("NB_FAMILY", "pythia")
HEADS = os.environ.get("NB_HEADS", "")                   # e.g. "1:2,0:3" (layer:head); default: best heads
TINY_STEPS = int(os.environ.get("NB_STEPS", "40"))''',
    '''from configs import study_laptop
from circuits.study import pipeline
study = study_laptop.get_config()
if not RUN_DIR:  # a tiny stand-in run: train, then run the study's sweep and metrics jobs on it
  RUN_DIR = tempfile.mkdtemp(prefix="circuits_run_")
  from circuits.train import train
  study.families[FAMILY].steps = TINY_STEPS
  study.families[FAMILY].n_layers = 2
  study.checkpoint.log_until, study.checkpoint.every, study.checkpoint.resume_every = 2, TINY_STEPS, 0
  study.sweep.n, study.sweep.ablation_examples, study.sweep.n_seeds, study.sweep.n_heldout = 32, 32, 2, 32
  study.sweep.n_detect = 1
  study.sweep.probes = ("combined",)
  p = pipeline.study_paths(RUN_DIR)
  cfg = pipeline.run_config(study, FAMILY, RUN_DIR)
  cfg.data.cache = ""; cfg.train.warmup_steps = 2; cfg.train.progress = False; cfg.probe.every = 10
  train(cfg, str(p.run(FAMILY)), source=pipeline.CombinedSource(study))
  # the study's data job builds a seqio cache; here the probes are written directly
  from circuits.data import probes, synthetic
  p.probes.mkdir(parents=True, exist_ok=True)
  comb = probes.combined_induction_batch(n=32, seq_len=64, spec=pipeline.combined_spec(study))
  np_ = __import__("numpy")
  np_.savez(p.probes / "combined.npz", **comb.as_dict())
  body, sp, sm, _ = synthetic.combined(np_.random.default_rng(1), 32, 64, pipeline.combined_spec(study), return_meta=True)
  np_.savez(p.probes / "heldout.npz", rows_NxT1=np_.concatenate([np_.full((32, 1), 2), body], 1).astype("int32"),
            p_N=sp.astype("int32"), m_N=sm.astype("int32"), offset=np_.int32(1))
  pipeline.job_sweep(study, p, FAMILY, progress=False)
  pipeline.job_metrics(study, p, FAMILY, progress=False)
p = pipeline.study_paths(RUN_DIR)
print("run:", p.run(FAMILY))''',
    '''import pandas as pd
from circuits.discovery import table as T, analysis as A
table = T.load_table(p.sweep(FAMILY, "combined"))
print(len(table), "rows:", table["revision"].nunique(), "revisions x", len(table) // table["revision"].nunique(), "heads")
summary = A.summarize(table)["models"]["table"]
display(pd.DataFrame(summary["trajectory"]).iloc[:, :8])
print("milestones:", summary["milestones"])
last = table[table["step"] == table["step"].max()]
display(last.sort_values("sel_induction", ascending=False)[["layer", "head", "sel_induction", "sel_first", "pr"]].head(8))''',
    '''from IPython.display import Image, display
from circuits.discovery import report
out = p.sweep(FAMILY, "combined") / "nb_report"
report.write_report(table, out)
for png in sorted(out.glob("*.png"))[:3]:
  display(Image(filename=str(png)))''',
    '''# Attention rows of chosen heads at the query (the second copy's token), final checkpoint, in-distribution probe
import numpy as np, matplotlib.pyplot as plt
from circuits.discovery import revisions
from circuits.data.probes import ProbeBatch
from circuits.models import Capture
rev = sorted(revisions.from_run(str(p.run(FAMILY))), key=lambda r: r.step)[-1]
cfg_m, model = rev.load()
z = np.load(p.probes / "combined.npz")
tok, q, ab = z["tokens_NxT"][:4], z["query_pos_N"][:4], z["ab_N"][:4]
rows = np.asarray(model(tok, Capture(query_pos_B=q)).rows_BxLxHxS)  # [N, L, H, S]
if HEADS:
  heads = [tuple(int(x) for x in h.split(":")) for h in HEADS.split(",")]
else:
  best = last.sort_values("sel_induction", ascending=False).iloc[:2]
  heads = [(int(r.layer), int(r.head)) for r in best.itertuples()]
fig, axes = plt.subplots(len(heads), 1, figsize=(10, 2.2 * len(heads)), squeeze=False)
for ax, (l, h) in zip(axes[:, 0], heads):
  for n in range(len(tok)):
    ax.plot(rows[n, l, h], label=f"example {n} (ab+1 = {ab[n] + 1})")
    ax.axvline(ab[n] + 1, color=f"C{n}", ls=":")
  ax.set_title(f"{rev.name}: layer {l} head {h}, attention row at the query"); ax.legend(fontsize=6)
plt.tight_layout(); plt.show()''',
]

PUBLIC = [
    "md:# Public revisions: the paper's 10 Pythia-1B revisions, end to end\n"
    "One command fetches each revision from the Hugging Face Hub into the standard Hugging Face cache (config and "
    "weights only, one revision at a time), converts it in memory, measures every head on the paper's synthetic "
    "induction probe, runs the ablations, and writes the per-head table, `summary.json`, `report.html` and the "
    "figures:\n\n"
    "    python -m launch.discover --hf_repo EleutherAI/pythia-1b --revisions paper --out runs/pythia-1b\n\n"
    "This notebook runs that command and shows the results. Environment variables override its settings: "
    "`NB_HF_REPO` (also `allenai/OLMo-1B-0724-hf`, `allenai/OLMoE-1B-7B-0924`), `NB_REVISIONS` (`paper`, `all`, "
    "`step1000,step3000` or a file of names), `NB_CACHE_DIR`, `NB_OUT`, `NB_DTYPE`, `NB_N`, `NB_SEQ_LEN`, "
    "`NB_SEEDS`. A killed run resumes where it stopped.\n\n"
    "**On Colab** choose a GPU runtime (Runtime > Change runtime type), set `CIRCUITS_REPO` to the repository's "
    "git URL, and run all cells. **Expected time** on a Colab GPU: see the device check (`make device-check`) for "
    "seconds per revision; fetching adds the download of each revision (the plan below lists the sizes), and the "
    "run prints the seconds per revision it took.",
    setup("public_revisions", subprocess_check=True),
    """# Parameters (environment variables override them; the test points them at a local Hub-layout cache)
HF_REPO = os.environ.get("NB_HF_REPO", "EleutherAI/pythia-1b")
REVISIONS = os.environ.get("NB_REVISIONS", "paper")    # paper (the paper's 10) | all | step1000,step3000 | a file
CACHE_DIR = os.environ.get("NB_CACHE_DIR") or None     # the Hugging Face cache (default: HF_HUB_CACHE / HF_HOME)
OUT = os.environ.get("NB_OUT") or os.path.join(ROOT, "runs", HF_REPO.split("/")[-1])
DTYPE = os.environ.get("NB_DTYPE", "float32")          # bfloat16 halves weight memory; measurements stay fp32
N = int(os.environ.get("NB_N", "2000")); SEQ_LEN = int(os.environ.get("NB_SEQ_LEN", "256"))
N_SEEDS = int(os.environ.get("NB_SEEDS", "20")); N_DETECT = int(os.environ.get("NB_N_DETECT", "8"))""",
    """# What will be fetched (the library call behind `--dry_run`; offline it lists the local cache)
from circuits.discovery import hub
NAMES = hub.resolve(HF_REPO, REVISIONS, CACHE_DIR)
print(hub.plan_table(HF_REPO, NAMES, CACHE_DIR))""",
    """# The one command: fetch, measure, ablate, analyse (its output streams here; jax runs in that process)
import codecs, re, shlex, time
cmd = ["-m", "launch.discover", "--hf_repo", HF_REPO, "--revisions", REVISIONS, "--out", OUT, "--dtype", DTYPE,
       "--n", str(N), "--seq_len", str(SEQ_LEN), "--n_seeds", str(N_SEEDS), "--chunk", str(min(64, N)),
       "--n_detect", str(N_DETECT)] + (["--cache_dir", CACHE_DIR] if CACHE_DIR else [])
print("$ python", shlex.join(cmd), flush=True)
t0, log, utf8 = time.time(), [], codecs.getincrementaldecoder("utf-8")(errors="replace")
proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
for chunk in iter(lambda: proc.stdout.read1(4096), b""):
  text = utf8.decode(chunk); log.append(text); sys.stdout.write(text); sys.stdout.flush()
if proc.wait():
  raise RuntimeError(f"launch.discover stopped with exit status {proc.returncode}; its message is above")
seconds = time.time() - t0
done = re.search(r"measured (\\d+) revision", "".join(log))
n_done = int(done.group(1)) if done else 0
print(f"{seconds:.0f} s in all" + (f"; {seconds / n_done:.0f} s per revision measured now (fetch + measure + "
      f"ablations, on {RUNTIME.kind})" if n_done else " (every revision was already done)"))""",
    """import json
import pandas as pd
from pathlib import Path
from IPython.display import Image, display
summary = json.loads((Path(OUT) / "summary.json").read_text())
for model, s in summary["models"].items():
  print(model, "milestones:", s["milestones"])
  display(pd.DataFrame(s["trajectory"]).iloc[:, :8])
if summary.get("ablations"):
  display(pd.DataFrame(summary["ablations"])[["revision", "condition", "n_seeds", "top1_mean"]].head(12))
for png in ["bos_fraction.png", "recall.png"] + sorted(p.name for p in Path(OUT).glob("final_circuit_*.png")):
  if (Path(OUT) / png).exists():
    display(Image(filename=str(Path(OUT) / png)))
print("report:", Path(OUT) / "report.html")""",
]

if __name__ == "__main__":
  for name, cells in (("quickstart", QUICKSTART), ("run_analysis", RUN_ANALYSIS), ("public_revisions", PUBLIC)):
    nbf.write(nb(cells), HERE / f"{name}.ipynb")
    print("wrote", HERE / f"{name}.ipynb")
