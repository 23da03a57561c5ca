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
  cache/                       the packed-token cache shared by the families (a study whose runs set
                               data_seed has one per seed instead: cache_data<seed>/)
  probes/combined.npz, probes/synthetic.npz, probes/heldout.npz
  <family>/run/                the trainer's workdir (metrics.jsonl, checkpoints/, tb/)
  <family>/sweep_<probe>/      discovery tables, ablations, summary.json, report.html
  <family>/revision_metrics.jsonl
  logs/<job>.log, stages/<job>.json
  study/report.html, report.md, summary.json, *.png

The code lives by concern in config (configs, fingerprints, Paths, run_config), jobs (the job graph, the data
job), measure (the sweep and metrics jobs) and runner (the stage runner and its process pool); this module
keeps every name importable from one place (notebooks use circuits.study.pipeline).
"""

from circuits.study.config import (SINGLE_THREAD_XLA, STAGES, Paths, StudyError, architecture, cache_rows,  # noqa: F401
                                   combined_spec, fingerprint, load, load_resolved, resolve, run_config, span_ids,
                                   study_paths)
from circuits.study.jobs import CombinedSource, deps, is_done, job_data, job_names, run_job  # noqa: F401
from circuits.study.measure import job_metrics, job_sweep, load_probe, select_revisions  # noqa: F401
from circuits.study.runner import run  # noqa: F401
