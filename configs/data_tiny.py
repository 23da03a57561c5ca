"""Tiny data config for the data-layer tests: the combined task, T 32, 256 rows (pythia tiny model)."""
from configs.families import family_config


def get_config():
  c = family_config("pythia", "tiny")
  c.data.cache = "data/cache/data_tiny"
  c.data.task = "circuits.combined"
  c.data.vocab = "synthetic:384"
  c.model.vocab_size = 384
  c.data.seq_len = 48
  c.data.n_sequences = 256
  c.data.add_bos = True
  c.data.pack = True
  return c
