"""Hugging Face checkpoints -> our models (gpt_neox -> pythia, olmo -> olmo, olmoe -> olmoe).

    from circuits.convert import from_hf, load_converted
    cfg, model = from_hf("hf_dir")            # straight from config.json + *.safetensors / pytorch_model.bin
    cfg, model = load_converted("out_dir")    # what `python -m launch.convert --hf_dir D --out O` wrote
    info = convert_dir("hf_dir", "out_dir")   # what that command runs

Key tables and named transforms: circuits/convert/tables.py. File reading: reader.py. Orbax store: store.py.
"""

from circuits.convert import random_hf
from circuits.convert.hf import config_from_hf, convert_tensors, from_hf, load_hf, model_from_params
from circuits.convert.reader import Checkpoint, ConversionError
from circuits.convert.store import convert_dir, load_converted, load_params, save_converted

__all__ = ["Checkpoint", "ConversionError", "config_from_hf", "convert_dir", "convert_tensors", "from_hf",
           "load_converted", "load_hf", "load_params", "model_from_params", "random_hf", "save_converted"]
