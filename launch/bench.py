"""Benchmark the trainer, discovery, conversion and checkpoints on this machine; print a table, write JSON.

  python -m launch.bench [--out out/bench] [--quick] [--families pythia,olmo,olmoe] [--sizes 10M,50M]

Writes <out>/bench.json (every figure, settings, devices, load average) and <out>/bench.md (the tables of
docs/benchmarks.md). Device-agnostic: uses jax's default backend and reports jax.devices(). The logic
lives in circuits/bench/ (definitions of every figure in its package docstring).
"""
from __future__ import annotations

import sys

from absl import flags

from circuits import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out/bench", "output folder (bench.json, bench.md)")
flags.DEFINE_bool("quick", False, "smoke test: tiny model, 1 warm-up + 2 timed calls, small probes")
flags.DEFINE_list("families", None, "families of the trainer benchmark (default: pythia, olmo, olmoe)")
flags.DEFINE_list("sizes", None, "trainer sizes (circuits.bench.SIZES; default 10M, 50M; --quick: tiny)")
flags.DEFINE_list("size_families", None, "SIZE=FAM+FAM restricts the families at a size, e.g. 50M=pythia")
flags.DEFINE_integer("disc_repeats", None, "repeats of the discovery timings (default 3)")
flags.DEFINE_integer("repeats", None, "timed calls per figure (median reported)")
flags.DEFINE_integer("warmup", None, "untimed calls before timing")
flags.DEFINE_list("sections", None, "sections to run: core (peak, discovery, io, trainer, scaling), attention "
                  "(blockwise vs exact, diagnostics vs T, memory vs T), public (the discover CLI on 1B-shaped "
                  "checkpoints); default all")


def main(argv):
  del argv
  from circuits import bench

  st = bench.settings_from(quick=FLAGS.quick, families=FLAGS.families, sizes=FLAGS.sizes,
                           size_families=FLAGS.size_families, disc_repeats=FLAGS.disc_repeats, repeats=FLAGS.repeats,
                           warmup=FLAGS.warmup, sections=FLAGS.sections)
  res = bench.run(st, command=" ".join(["python -m launch.bench", *sys.argv[1:]]), out_dir=FLAGS.out)
  j, md = bench.write(res, FLAGS.out)
  print(md.read_text())
  print(f"wrote {j} and {md}")


if __name__ == "__main__":
  cli.run(main)
