"""olmo_1b_0724: the published hyperparameters (see configs/families.py for the sources)."""
from configs.families import family_config


def get_config():
  return family_config("olmo", "1b")
