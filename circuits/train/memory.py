"""Per-device memory of a config's train step, compiled from abstract inputs (what `launch.memory_1b` prints).

    from circuits.train import memory
    r = memory.compile_memory(config)          # nothing is allocated
    print(memory.table([(name, batch, seq_len, r)], devices=8, diagnostics=True))

The model comes from nnx.eval_shape, the state and batch are ShapeDtypeStructs carrying their
NamedShardings; figures are XLA's `compiled.memory_analysis()` in GiB per device: arguments, outputs,
temporaries, aliased (donated) bytes, and total = arguments + outputs + temp - aliased. For a mesh of N
fake CPU devices, XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported.
"""

from __future__ import annotations

import datetime
import time

# XLA:CPU's memory-optimised scheduler: the default (concurrency-optimised) one keeps buffers alive longer and
# hides what remat saves (SCALE.md: 6 layers, remat 4.59 -> 4.78 GiB under the default, 3.20 -> 2.70 here).
MEMORY_FLAGS = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


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
  tr, mc = s.config.train, s.model_cfg
  return dict(mesh=dict(s.mesh.shape), params=n_params, compile_s=time.time() - t,
              microbatches=int(tr.get("microbatches", 1)), remat=str(tr.get("remat", "none")),
              scan_layers=bool(tr.get("scan_layers", False)),
              probe=(f"every {s.config.probe.every}, {s.config.probe.n} x {s.config.probe.seq_len or s.config.data.seq_len}"
                     if s.config.probe.every else "off"),
              attention_impl=str(mc.attention_impl), dtype=str(mc.dtype), moe_impl=str(mc.moe_impl),
              argument_gib=gib(m.argument_size_in_bytes), output_gib=gib(m.output_size_in_bytes),
              temp_gib=gib(m.temp_size_in_bytes), alias_gib=gib(m.alias_size_in_bytes),
              total_gib=gib(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                            - m.alias_size_in_bytes))


def table(rows, devices: int, diagnostics: bool) -> str:
  """Markdown table of (config name, global batch, seq_len, compile_memory result) rows, with its title."""
  lines = [f"Per-device memory of the train step: XLA:CPU compiler figures (memory_analysis of the step compiled "
           f"for {devices} fake CPU devices with the memory-optimised scheduler; a proxy for a device's own "
           f"compiler, not a device measurement), measured {datetime.date.today().isoformat()}; diagnostics "
           f"{'on' if diagnostics else 'off'}\n",
           "| config | params | global batch x T | mesh | microbatches | remat | layers | attention | MoE | activations | "
           "in-loop probe | arguments GiB | temp GiB | total GiB | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, b, t, r in rows:
    mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
    lines.append(f"| {name} | {r['params'] / 1e9:.2f}B | {b} x {t} | {mesh} | {r['microbatches']} | {r['remat']} | "
                 f"{'scanned' if r['scan_layers'] else 'unrolled'} | {r['attention_impl']} | "
                 f"{r['moe_impl'] if 'olmoe' in name else '-'} | {r['dtype']} | {r['probe']} | {r['argument_gib']:.2f} | {r['temp_gib']:.2f} | "
                 f"{r['total_gib']:.2f} | {r['compile_s']:.0f} |")
  return "\n".join(lines)
