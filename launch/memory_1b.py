"""Per-device memory of the 1B train steps on an 8-device fsdp mesh, compiled from abstract inputs.

    python -m launch.memory_1b [--devices 8] [--configs pythia_1b,olmo_1b_0724,olmoe_1b_7b]

Nothing is allocated: the model comes from nnx.eval_shape, the state and batch are ShapeDtypeStructs
carrying their NamedShardings; figures are XLA's `compiled.memory_analysis()` (bytes per device).
Must run in a fresh process (it sets XLA_FLAGS before importing jax).
"""

import argparse
import datetime
import importlib
import os
import sys
import time


def compile_memory(config, devices=None) -> dict:
  """Lower and compile the train step of `config` abstractly; memory figures in GiB per device."""
  import jax
  from circuits.train import setup

  s = setup(config, devices)
  t = time.time()
  compiled = s.step.lower(s.abstract_state, s.abstract_batch(), s.abstract_probe()).compile()
  m = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  n_params = sum(int(x.size) for x in jax.tree.leaves(s.abstract_state["params"]))
  return dict(mesh=dict(s.mesh.shape), params=n_params, compile_s=time.time() - t,
              argument_gib=gib(m.argument_size_in_bytes), output_gib=gib(m.output_size_in_bytes),
              temp_gib=gib(m.temp_size_in_bytes), alias_gib=gib(m.alias_size_in_bytes),
              total_gib=gib(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                            - m.alias_size_in_bytes))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--configs", default="pythia_1b,olmo_1b_0724,olmoe_1b_7b")
  ap.add_argument("--batch_size", type=int, default=0, help="override train.batch_size (0: the config's)")
  ap.add_argument("--no_diagnostics", action="store_true")
  args = ap.parse_args()
  if "jax" in sys.modules:
    raise RuntimeError("launch.memory_1b must set XLA_FLAGS before jax is imported; run it as a fresh process")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  rows = []
  for name in args.configs.split(","):
    c = importlib.import_module(f"configs.{name}").get_config()
    if args.batch_size:
      c.train.batch_size = args.batch_size
    c.train.diagnostics = not args.no_diagnostics
    r = compile_memory(c)
    rows.append((name, c.train.batch_size, c.data.seq_len, r))
    print(f"# {name}: compiled in {r['compile_s']:.0f} s", file=sys.stderr, flush=True)
  print(f"Per-device memory of the train step (XLA memory_analysis, CPU backend, {args.devices}-device fsdp mesh, "
        f"measured {datetime.date.today().isoformat()}; diagnostics {'off' if args.no_diagnostics else 'on'})\n")
  print("| config | params | global batch x T | mesh | arguments GiB | outputs GiB | temp GiB | aliased GiB | total GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, b, t, r in rows:
    mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
    print(f"| {name} | {r['params'] / 1e9:.2f}B | {b} x {t} | {mesh} | {r['argument_gib']:.2f} | {r['output_gib']:.2f} "
          f"| {r['temp_gib']:.2f} | {r['alias_gib']:.2f} | {r['total_gib']:.2f} |")


if __name__ == "__main__":
  main()
