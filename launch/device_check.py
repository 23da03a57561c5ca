"""Device check: `python -m launch.device_check [--tiny] [--out device_check.json]` (also `make device-check`).

Measures on the devices present (GPU, TPU; CPU with --tiny): the bf16 matmul peak, a few train steps of each
1B config (tokens/s, MFU, memory) and one discovery pass of a random Pythia-1B-shaped model at N = 2000,
T = 256; prints one markdown table and writes JSON. Definitions: circuits/device_check.py.
"""

import sys

from absl import app, flags

from circuits import cli

_TINY = flags.DEFINE_bool("tiny", False, "tiny configs, N = 16 (runs on a CPU in seconds: the test)")
_OUT = flags.DEFINE_string("out", "device_check.json", "JSON output path ('' for none)")
_CONFIGS = flags.DEFINE_list("configs", None, "subset of pythia_1b,olmo_1b_0724,olmoe_1b_7b (default: all)")
_STEPS = flags.DEFINE_integer("steps", None, "timed steps per config (default 3; tiny 2)")


def main(argv):
  del argv
  from circuits import device_check as dc

  kw = {}
  if _CONFIGS.value:
    bad = [c for c in _CONFIGS.value if c not in dc.CONFIGS]
    if bad:
      raise app.UsageError(f"--configs: unknown {bad}; choose from {','.join(dc.CONFIGS)}")
    kw["configs"] = tuple(_CONFIGS.value)
  if _STEPS.value:
    kw["steps"] = _STEPS.value
  res = dc.run(dc.CheckSettings.make(_TINY.value, **kw), log=lambda s: print(s, file=sys.stderr, flush=True))
  print(dc.markdown(res))
  if _OUT.value:
    from circuits.files import atomic_write_json
    atomic_write_json(_OUT.value, res, indent=1)
    print(f"\nJSON: {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
