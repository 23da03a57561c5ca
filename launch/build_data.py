"""Build the packed-token cache of a config: `python -m launch.build_data --config configs/<name>.py`.

Runs the seqio pipeline of data.task once and writes data.n_sequences rows (0: train.steps *
train.batch_size) of data.seq_len + 1 tokens to data.cache (see circuits/data/reader.py for the format).
Override fields on the command line, e.g. `--config.data.n_sequences=4096`.
"""

import time

from absl import flags
from ml_collections import config_flags

from circuits import cli
from circuits.data import cache_builder

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "run config (configs/<name>.py)", lock_config=True)
flags.DEFINE_string("out", "", "cache folder (default: data.cache of the config)")
flags.DEFINE_bool("progress", True, "show a tqdm progress bar")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  cfg = FLAGS.config
  t0 = time.time()
  try:
    meta = cache_builder.build_cache(cfg.data, seed=int(cfg.seed), n_rows=cache_builder.n_rows_for(cfg),
                                     path=FLAGS.out or None, progress=FLAGS.progress)
  except (FileNotFoundError, ValueError) as e:  # a missing corpus / vocabulary, an unknown task: what to run
    cli.fail(f"build_data: {e}")
  print(f"wrote {meta['n_sequences']} x {meta['seq_len'] + 1} tokens of {meta['task']} "
        f"(vocab {meta['vocab']}, {meta['vocab_size']} ids) to {FLAGS.out or cfg.data.cache} "
        f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
  cli.run(main)
