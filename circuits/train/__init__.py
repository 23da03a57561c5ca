"""Training: mesh and logical-axis rules, the train state and step, the loop, Orbax checkpoints.

    from circuits.train import train
    summary = train(config, workdir)     # resumes from workdir's newest committed checkpoint
"""

from circuits.train.checkpoint import read_index, restore_params
from circuits.train.loop import NonFiniteLossError, Setup, WorkdirError, setup, train

__all__ = ["NonFiniteLossError", "Setup", "WorkdirError", "read_index", "restore_params", "setup", "train"]
