"""Per-device memory of the 1B train steps on a 64-device fsdp mesh, compiled from abstract inputs.

    python -m launch.memory_1b [--devices 64] [--configs pythia_1b,olmo_1b_0724,olmoe_1b_7b] [--no_diagnostics]
                               [--unrolled] [--microbatches M]

Nothing is allocated: the model comes from nnx.eval_shape, the state and batch are ShapeDtypeStructs
carrying their NamedShardings; figures are XLA:CPU's `compiled.memory_analysis()` (bytes per device) under
its memory-optimised scheduler (circuits.train.memory.MEMORY_FLAGS): compiler figures, not device measurements.
Must run in a fresh process (it sets XLA_FLAGS before importing jax). Library: circuits.train.memory.
"""

import argparse
import importlib
import os
import sys


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--devices", type=int, default=64, help="fake CPU devices of the fsdp mesh (the published runs: 64)")
  ap.add_argument("--configs", default="pythia_1b,olmo_1b_0724,olmoe_1b_7b")
  ap.add_argument("--batch_size", type=int, default=0, help="override train.batch_size (0: the config's)")
  ap.add_argument("--microbatches", type=int, default=0, help="override train.microbatches (0: the config's)")
  ap.add_argument("--no_diagnostics", action="store_true")
  ap.add_argument("--unrolled", action="store_true", help="the blocks unrolled (train.scan_layers=False) instead "
                  "of the configs' scan, to see what the scan saves")
  ap.add_argument("--moe_impl", default="gmm", help="MoE configs: the grouped matmul compiled (gmm: megablox, as on "
                  "TPU, interpreted on CPU; ragged: jax.lax.ragged_dot, whose XLA:CPU lowering is dense)")
  args = ap.parse_args()
  if "jax" in sys.modules:
    raise RuntimeError("launch.memory_1b must set XLA_FLAGS before jax is imported; run it as a fresh process")
  from circuits.train import memory  # imports jax; XLA reads XLA_FLAGS when the first backend starts, below

  os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} {memory.MEMORY_FLAGS} "
                             f"--xla_force_host_platform_device_count={args.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  rows = []
  for name in args.configs.split(","):
    if not os.path.exists(os.path.join("configs", f"{name}.py")):
      from circuits.errors import CircuitsError
      raise CircuitsError(f"--configs: no configs/{name}.py; give names of configs/ files, e.g. "
                          "pythia_1b,olmo_1b_0724,olmoe_1b_7b")
    c = importlib.import_module(f"configs.{name}").get_config()
    if args.batch_size:
      c.train.batch_size = args.batch_size
    if args.microbatches:
      c.train.microbatches = args.microbatches
    c.train.diagnostics = not args.no_diagnostics
    c.train.scan_layers = c.train.scan_layers and not args.unrolled
    if c.model.get("n_experts"):
      c.model.moe_impl = args.moe_impl
    r = memory.compile_memory(c)
    rows.append((name, c.train.batch_size, c.data.seq_len, r))
    print(f"# {name}: compiled in {r['compile_s']:.0f} s", file=sys.stderr, flush=True)
  print(memory.table(rows, args.devices, diagnostics=not args.no_diagnostics))


if __name__ == "__main__":
  from circuits import cli  # imports no jax (checked by main)

  cli.run_plain(main)
