"""The study: train the three families on the combined task, sweep every checkpoint, compare transitions.

    from circuits import study
    cfg = study.load("configs/study_laptop.py")          # or configs.study_laptop.get_config()
    study.run(cfg, "runs/laptop")                         # every stage; a rerun resumes
    study.run_config(cfg, "olmo")                         # one family's trainer config

Modules: pipeline (run configs, data, the per-family jobs, the stage runner), analysis (the named
transition markers, summary.json), seeds (replicates of a family: markers and gaps over seeds, the PR lead)
and report (report.html / report.md with PNG figures).
"""

from circuits.study.pipeline import (STAGES, StudyError, job_names, load, load_resolved, resolve, run, run_config,
                                     run_job, study_paths)

__all__ = ["STAGES", "StudyError", "job_names", "load", "load_resolved", "resolve", "run", "run_config", "run_job",
           "study_paths"]
