"""olmoe family, small size."""
from configs.families import family_config


def get_config():
  return family_config("olmoe", "small")
