"""Discovery sweep over revisions: per-head table, ablations, summary.json and report.html.

  python -m launch.discover --run W --out D            # our trainer's Orbax run directory
  python -m launch.discover --hf_revisions FILE --out D  # list of converted / HF checkpoint directories
  python -m launch.discover --hf_repo EleutherAI/pythia-1b --revisions paper --out D   # public revisions
  python -m launch.discover --hf_repo allenai/OLMo-1B-0724-hf --revisions all --dry_run  # what would be fetched

--revisions: paper (the paper's 10), all (Pythia's 154, or every step branch of the repo), step1000,step3000,
or a file with one name per line. Each revision's config and weights are fetched into the Hugging Face cache
(HF_HUB_CACHE; HF_HUB_OFFLINE=1 serves from it), one at a time, and converted in memory (--dtype).
OLMoE-1B-7B on a CPU machine: --dtype bfloat16 --moe_impl dense (peak memory in docs/benchmarks.md).

FILE: JSON lines {"name", "path", "tokens"[, "step"]} or CSV `name,path,tokens[,step]` (tokens derivable
from Pythia `step{N}` and OLMo `step{N}-tokens{X}B` names). A killed sweep resumes where it stopped.
--probe / --natural: optional .npz files with tokens_NxT, query_pos_N, target_N, ab_N (the natural-text
batch enables the ICL score and the natural-text ablations). Everything is importable:
circuits.discovery.sweep(revs, out, ...).

Spreading: each revision's probe chunks go over this process's local devices (--devices, default all).
Several processes (hosts of a TPU pod, SLURM nodes, or N processes on one machine): `--distributed` calls
jax.distributed.initialize (coordinator/num_processes/process_id from the flags, else JAX_COORDINATOR_ADDRESS
/ JAX_NUM_PROCESSES / JAX_PROCESS_ID, else auto-detection) before anything touches a device; process p
measures revisions p, p + P, ... of the canonical order and process 0 writes the combined table and report
(--out must be a folder every process sees). launch/tpu_pod.sh and launch/slurm_gpu.sh --mode discover start it.
"""
from __future__ import annotations

import os

# XLA:CPU's default scheduler keeps the fp32 casts of every layer's bfloat16 weights live at once
# (OLMoE-1B-7B, --dtype bfloat16, dense MoE, 4 x 256 tokens: XLA temp 1.57 GiB per layer, 25 GiB in all, an OOM
# on a 24 GB machine); the memory-optimised scheduler frees them layer by layer (1.3 GiB in all at 4 layers).
# Set before jax starts its backend; other backends ignore xla_cpu_ flags.
CPU_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
if "xla_cpu_scheduler_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CPU_SCHEDULER_FLAG).strip()

from absl import app, flags  # noqa: E402  # pylint: disable=wrong-import-position

from circuits import cli  # noqa: E402  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "our trainer's run directory (Orbax checkpoints under <run>/checkpoints)")
flags.DEFINE_string("hf_revisions", None, "list file of converted / Hugging Face revision directories")
flags.DEFINE_string("hf_repo", None, "a Hugging Face Hub model repository, e.g. EleutherAI/pythia-1b")
flags.DEFINE_string("revisions", "paper", "with --hf_repo: paper, all, a comma-separated list, or a file")
flags.DEFINE_string("cache_dir", None, "with --hf_repo: the Hugging Face cache folder (default: HF_HUB_CACHE)")
flags.DEFINE_bool("dry_run", False, "with --hf_repo: list the revisions and what would be fetched, then stop")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter dtype of Hugging Face checkpoints "
                  "(bfloat16 halves memory; attention and every measurement stay fp32)")
flags.DEFINE_enum("moe_impl", None, ["ragged", "gmm", "dense"], "MoE checkpoints (OLMoE): how the experts are "
                  "computed (circuits.models.moe; default: the config's, ragged). On CPU use dense: XLA:CPU lowers "
                  "ragged_dot to masked [experts, assignments, d_model] copies (8x dense's work, GiBs per layer) and "
                  "gmm runs megablox in Pallas interpret mode (minutes per layer); dense does every expert on every "
                  "token (8x the expert FLOPs at top-8 of 64) in small buffers")
flags.DEFINE_string("out", None, "output folder")
flags.DEFINE_string("probe", None, "optional .npz synthetic/in-distribution probe (query at T-1)")
flags.DEFINE_string("natural", None, "optional .npz natural-text induction batch")
flags.DEFINE_integer("n", 2000, "default synthetic probe: examples")
flags.DEFINE_integer("seq_len", 256, "default synthetic probe: tokens per example")
flags.DEFINE_integer("chunk", 64, "examples per jitted call")
flags.DEFINE_integer("n_detect", 8, "examples whose every query row feeds the TL detectors / Gu sink metric")
flags.DEFINE_float("induction_threshold", 50.0, "induction circuit: sel_induction >= this")
flags.DEFINE_integer("n_seeds", 20, "matched-random control seeds")
flags.DEFINE_integer("ablation_examples", None, "first n probe examples used by the ablations (default all)")
flags.DEFINE_bool("ablations", True, "run the causal checks at every revision")
flags.DEFINE_bool("analyze", True, "write summary.json and report.html at the end")
flags.DEFINE_bool("progress", True, "progress bar over the revisions (stderr)")
flags.DEFINE_integer("devices", None, "local devices each revision's probe chunks are spread over (default all)")
flags.DEFINE_bool("distributed", False, "multi-process sweep: call jax.distributed.initialize() first; process p "
                  "measures revisions p, p+P, ...; process 0 writes the combined table")
flags.DEFINE_string("coordinator_address", None, "with --distributed: host:port of process 0")
flags.DEFINE_integer("num_processes", None, "with --distributed: number of processes")
flags.DEFINE_integer("process_id", None, "with --distributed: this process's index")


def main(argv):
  del argv
  sources = [f for f in ("run", "hf_revisions", "hf_repo") if FLAGS[f].value]
  if len(sources) != 1 or not (FLAGS.out or FLAGS.dry_run):
    raise app.UsageError("give exactly one of --run W, --hf_revisions FILE or --hf_repo REPO, and --out D, e.g. "
                         "python -m launch.discover --hf_repo EleutherAI/pythia-1b --revisions paper --out runs/pythia")
  for flag in ("run", "hf_revisions", "probe", "natural"):
    path = FLAGS[flag].value
    if path and not os.path.exists(path):
      raise app.UsageError(f"--{flag} {path}: no such {'directory' if flag == 'run' else 'file'}"
                           + ("; give the --workdir of a `python -m launch.train` run" if flag == "run" else ""))
  if FLAGS.dry_run and not FLAGS.hf_repo:
    raise app.UsageError("--dry_run lists what --hf_repo would fetch; give --hf_repo")
  if FLAGS.distributed and not FLAGS.dry_run:
    from circuits.study import distributed
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from circuits.data.probes import load_npz
  from circuits.discovery import measure, revisions, sweep
  if FLAGS.hf_repo:
    from circuits.discovery import hub
    if FLAGS.dry_run:
      print(hub.plan_table(FLAGS.hf_repo, hub.resolve(FLAGS.hf_repo, FLAGS.revisions, FLAGS.cache_dir),
                           FLAGS.cache_dir))
      return
    revs = hub.revisions(FLAGS.hf_repo, FLAGS.revisions, cache_dir=FLAGS.cache_dir, dtype=FLAGS.dtype,
                         moe_impl=FLAGS.moe_impl)
  elif FLAGS.run:
    revs = revisions.from_run(FLAGS.run)
  else:
    revs = revisions.from_list(FLAGS.hf_revisions,
                               loader=lambda p: revisions.load_checkpoint_dir(p, dtype=FLAGS.dtype,
                                                                                 moe_impl=FLAGS.moe_impl))
  cfg = sweep.SweepConfig(measure=measure.MeasureConfig(chunk=FLAGS.chunk, n_detect=FLAGS.n_detect,
                                                        devices=FLAGS.devices),
                          ablations=FLAGS.ablations, induction_threshold=FLAGS.induction_threshold,
                          n_seeds=FLAGS.n_seeds, ablation_examples=FLAGS.ablation_examples, analyze=FLAGS.analyze)
  probe, natural = (load_npz(FLAGS[f].value) if FLAGS[f].value else None for f in ("probe", "natural"))
  res = sweep.sweep(revs, FLAGS.out, probe=probe, natural=natural, cfg=cfg, n=FLAGS.n, seq_len=FLAGS.seq_len,
                    progress=FLAGS.progress)
  if not res["paths"]:  # a process other than 0 of a distributed sweep
    print(f"measured {len(res['done'])} revision(s) of this process's share; process 0 writes the combined files")
    return
  others = len(revs) - len(res["done"]) - len(res["skipped"])
  print(f"measured {len(res['done'])} revision(s), {len(res['skipped'])} already done"
        + (f", {others} by the other processes" if others else "")
        + (f" (models: {', '.join(res['models'])})" if res.get("models") else "") + "; "
        + ", ".join(f"{k}: {v}" for k, v in res["paths"].items()))


if __name__ == "__main__":
  cli.run(main)
