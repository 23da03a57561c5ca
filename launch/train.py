"""Train a model: `python -m launch.train --config configs/<name>.py --workdir W [--config.field=value ...]`.

Thin wrapper over circuits.train.train (resumes from W's newest committed checkpoint; SIGTERM saves the
current step and exits 0).
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (configs/<name>.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: metrics.jsonl, tb/, checkpoints/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from circuits.models import ConfigError
  from circuits.train import NonFiniteLossError, WorkdirError, train

  try:
    summary = train(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, WorkdirError, NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
