"""pythia_1b: the published hyperparameters (see configs/families.py for the sources)."""
from configs.families import family_config


def get_config():
  return family_config("pythia", "1b")
