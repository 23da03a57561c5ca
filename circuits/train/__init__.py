"""Training: mesh and logical-axis rules, the train state and step, the loop, Orbax checkpoints.

    from circuits.train import train
    summary = train(config, workdir)     # resumes from workdir's newest committed checkpoint
"""

from circuits.rundir import read_index, restore_params  # the run layout's readers (circuits.rundir)
from circuits.train.loop import NonFiniteLossError, Setup, WorkdirError, setup, train

__all__ = ["NonFiniteLossError", "Setup", "WorkdirError", "read_index", "restore_params", "setup", "train"]
