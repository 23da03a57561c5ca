"""The main job: `python -m launch.study --config configs/study_laptop.py --workdir runs/laptop`.

Builds the data, trains the three families (parallel processes pinned to cores), sweeps every checkpoint
with the discovery jobs, computes the transition markers and writes <workdir>/study/report.html (+ report.md,
summary.json, PNG figures). A rerun skips completed jobs and resumes killed ones. Override any field:
`--config.families.pythia.steps=200 --config.family_order=pythia`. Thin wrapper over circuits.study.run.

  --serial        run the jobs one by one in this process (no subprocesses)
  --jobs=a,b      only these jobs (e.g. train:olmo,report); --force=a,b reruns them
  --job=J --resolved=FILE   internal: run one job from a resolved study config (what the runner spawns)
"""

import json
import time

from absl import app, flags
from ml_collections import config_flags

from circuits import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "study config (configs/study_laptop.py)")
flags.DEFINE_string("workdir", None, "study directory (runs/<name>)")
flags.DEFINE_string("resolved", None, "internal: resolved study config JSON (<workdir>/study_config.json)")
flags.DEFINE_string("job", None, "internal: run this one job")
flags.DEFINE_bool("serial", False, "run every job in this process, one after another")
flags.DEFINE_list("jobs", [], "only these jobs")
flags.DEFINE_list("force", [], "rerun these jobs even when done")
flags.DEFINE_bool("progress", True, "progress bars")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from circuits import study
  if FLAGS.resolved:
    cfg = study.load_resolved(FLAGS.resolved)
  elif _CONFIG.value is not None:
    cfg = study.resolve(_CONFIG.value)
  else:
    raise app.UsageError("give --config configs/study_laptop.py (and --workdir runs/laptop)")
  workdir = FLAGS.workdir or cfg.get("workdir") or f"runs/{cfg.name}"
  if FLAGS.job:
    info = study.run_job(cfg, workdir, FLAGS.job, progress=FLAGS.progress)
    print(json.dumps(info, default=str))
    return
  t0 = time.time()
  done = study.run(cfg, workdir, parallel=not FLAGS.serial, jobs=FLAGS.jobs or None, force=FLAGS.force,
                   progress=FLAGS.progress)  # StudyError: circuits.cli (one line, exit 2)
  for j, info in done.items():
    print(f"{j:>16}: {info.get('wall_s', 0):8.1f} s")
  print(f"study: {len(done)} job(s) run in {time.time() - t0:.1f} s (others already done); report: "
        f"{study.study_paths(workdir).report / 'report.html'}")


if __name__ == "__main__":
  cli.run(main)
