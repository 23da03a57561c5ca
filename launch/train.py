"""Train a model: `python -m launch.train --config configs/<name>.py --workdir W [--config.field=value ...]`.

Thin wrapper over circuits.train.train (resumes from W's newest committed checkpoint; SIGTERM saves the
current step and exits 0).

Multi-process (TPU pod workers, GPU nodes, or N processes on one host): `--distributed` calls
jax.distributed.initialize (coordinator/num_processes/process_id from the flags, else JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, else auto-detection) before anything touches a device, and each process
reads only its own slice of every global batch from the token cache (circuits.study.distributed).
"""

import json

from absl import flags
from ml_collections import config_flags

from circuits import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (configs/<name>.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: metrics.jsonl, tb/, checkpoints/.")
_DIST = flags.DEFINE_bool("distributed", False, "multi-process run: call jax.distributed.initialize() first")
_COORD = flags.DEFINE_string("coordinator_address", None, "with --distributed: host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "with --distributed: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "with --distributed: this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from circuits.train import train

  source = None
  if _DIST.value:
    from circuits.study import distributed
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
    if _CONFIG.value.data.cache:
      source = distributed.ProcessSliceSource(_CONFIG.value)
  summary = train(_CONFIG.value, _WORKDIR.value, source=source)  # errors: circuits.cli (one line, exit 2)
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main)
