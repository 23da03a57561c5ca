"""Convert a downloaded Hugging Face checkpoint directory into our Orbax params + config.json.

  python -m launch.convert --hf_dir D --out O [--dtype float32|bfloat16]

D holds config.json and *.safetensors (or a sharded index, or pytorch_model.bin) of model_type gpt_neox,
olmo or olmoe. O gets `params/` (Orbax) and `config.json`; load it with circuits.convert.load_converted(O).
Library: circuits.convert.convert_dir.
"""
from __future__ import annotations

from absl import app, flags

from circuits import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory (config.json + weights)")
flags.DEFINE_string("out", None, "output folder (params/ + config.json); must not hold params/ already")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter dtype of the converted model")
flags.DEFINE_string("revision", "", "optional provenance: the HF revision (branch) the directory came from")


def main(argv):
  del argv
  if not FLAGS.hf_dir or not FLAGS.out:
    raise app.UsageError("--hf_dir and --out are required")
  from circuits.convert import convert_dir

  info = convert_dir(FLAGS.hf_dir, FLAGS.out, FLAGS.dtype, FLAGS.revision)  # ConversionError: circuits.cli
  cfg = info["cfg"]
  print(f"converted {info['model_type']} -> family {cfg.family}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads ({cfg.kv_heads} kv), files {info['files']}")
  print(f"read {info['bytes_read'] / 1e6:.1f} MB in {info['seconds']:.2f} s = {info['mb_per_s']:.1f} MB/s "
        f"(read + convert); Orbax save {info['save_seconds']:.2f} s -> {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
