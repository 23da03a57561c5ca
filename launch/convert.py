"""Convert a downloaded Hugging Face checkpoint directory into our Orbax params + config.json.

  python -m launch.convert --hf_dir D --out O [--dtype float32|bfloat16]

D holds config.json and *.safetensors (or a sharded index, or pytorch_model.bin) of model_type gpt_neox,
olmo or olmoe. O gets `params/` (Orbax) and `config.json`; load it with circuits.convert.load_converted(O).
"""
from __future__ import annotations

import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory (config.json + weights)")
flags.DEFINE_string("out", None, "output folder (params/ + config.json); must not hold params/ already")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter dtype of the converted model")
flags.DEFINE_string("revision", "", "optional provenance: the HF revision (branch) the directory came from")


def convert(hf_dir: str, out: str, dtype: str = "float32", revision: str = "") -> dict:
  """Convert and save; returns the info dict (model_type, bytes_read, seconds, mb_per_s, ...)."""
  from circuits.convert import load_hf, save_converted

  cfg, params, info = load_hf(hf_dir, dtype=dtype)
  t0 = time.perf_counter()
  save_converted(out, cfg, params, source=dict(hf_dir=str(hf_dir), model_type=info["model_type"],
                                               revision=revision, files=info["files"]))
  info["save_seconds"] = time.perf_counter() - t0
  info["cfg"] = cfg
  return info


def main(argv):
  del argv
  if not FLAGS.hf_dir or not FLAGS.out:
    raise app.UsageError("--hf_dir and --out are required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
  from circuits.convert import ConversionError

  try:
    info = convert(FLAGS.hf_dir, FLAGS.out, FLAGS.dtype, FLAGS.revision)
  except ConversionError as e:
    print(f"conversion failed: {e}", file=sys.stderr)
    sys.exit(2)
  cfg = info["cfg"]
  print(f"converted {info['model_type']} -> family {cfg.family}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads ({cfg.kv_heads} kv), files {info['files']}")
  print(f"read {info['bytes_read'] / 1e6:.1f} MB in {info['seconds']:.2f} s = {info['mb_per_s']:.1f} MB/s "
        f"(read + convert); Orbax save {info['save_seconds']:.2f} s -> {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
