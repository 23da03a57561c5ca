"""Spreading a discovery sweep over processes, and telling the models of a mixed revision list apart.

    from circuits.discovery import spread
    groups = spread.model_groups(revs)          # {revision name: model label, or None for a one-model list}
    order = spread.canonical(revs, groups)      # (model label, tokens, name): the same for any input order
    mine = spread.assign(order, jax.process_index(), jax.process_count())   # order[p::P]

Model groups. A revision list may mix models (a Pythia and an OLMoE run, two Hub repositories). Revisions
belong to one model when they share a source that is one model: the same Hugging Face repository
(`hf://<repo>@<branch>`, circuits.discovery.hub) or the same trainer run directory (revisions.from_run).
Otherwise (list files: one checkpoint directory per revision) they belong to one model when their model
configs are equal up to the numerics knobs (dtype, param_dtype, moe_impl); the config is read from the
directory's config file (converted: circuits.convert.read_converted_config; Hugging Face: config.json) without
loading weights, or, for a revision whose source is neither, by loading it once. A list of one model gives
labels None (tables have no `model` column, as before); a mixed list labels each model (the repository id,
the run folder's name, or `<family>-L<layers>-H<heads>-D<d_model>-V<vocab>[-E<experts>]`, with a hash suffix
where two different configs would share one) and the sweep writes the label in a `model` column.

Processes: every process computes the same canonical order and measures positions p, p + P, p + 2P, ...;
each revision's files are written atomically by the process that measured it, so the combined table is
the same bytes as one process's (process 0 writes it after a barrier, `barrier`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

NUMERICS_FIELDS = ("dtype", "param_dtype", "moe_impl")  # do not change which model a checkpoint is


def source_model(rev) -> Optional[str]:
  """The model a revision's source names by itself: `hf://<repo>` for Hub revisions, `run://<dir>` for a
  trainer run directory; None for a per-revision checkpoint directory or an unknown source."""
  src = str(getattr(rev, "source", "") or "")
  if src.startswith("hf://"):
    return "hf://" + src[len("hf://"):].rsplit("@", 1)[0]
  p = Path(src) if src else None
  if p is not None and p.is_dir() and not ((p / "params").exists() or (p / "config.json").exists()):
    return "run://" + str(p)
  return None


def revision_config(rev):
  """The ModelConfig of a revision: from its checkpoint directory's config file when it has one (no weights
  read), else from loading it (rev.load()[0])."""
  src = Path(str(getattr(rev, "source", "") or "."))
  if (src / "params").exists():
    from circuits.convert.store import read_converted_config  # pylint: disable=import-outside-toplevel
    return read_converted_config(src)
  if (src / "config.json").exists():
    from circuits.convert.hf import config_from_hf, read_hf_config  # pylint: disable=import-outside-toplevel
    return config_from_hf(read_hf_config(src))
  return rev.load()[0]


def config_key(cfg) -> str:
  """The model identity of a config: its fields as sorted JSON, numerics knobs (NUMERICS_FIELDS) left out."""
  d = {k: v for k, v in cfg.to_dict().items() if k not in NUMERICS_FIELDS}
  return json.dumps(d, sort_keys=True, default=str)


def config_label(cfg) -> str:
  """A readable model label of a config: <family>-L<layers>-H<heads>-D<d_model>-V<vocab>[-E<experts>]."""
  s = f"{cfg.family}-L{cfg.n_layers}-H{cfg.n_heads}-D{cfg.d_model}-V{cfg.vocab_size}"
  return s + (f"-E{cfg.n_experts}" if cfg.is_moe else "")


def model_groups(revs: Sequence) -> dict:
  """{revision name: model label}; every label None when the list holds one model (see the module doc)."""
  keys = {}
  for r in revs:
    src = source_model(r)
    keys[r.name] = ("source", src) if src else None
  if len(revs) <= 1 or len(set(keys.values())) == 1 and None not in keys.values():
    return {r.name: None for r in revs}
  cfgs = {}
  for r in revs:
    if keys[r.name] is None:
      cfgs[r.name] = revision_config(r)
      keys[r.name] = ("config", config_key(cfgs[r.name]))
  if len(set(keys.values())) == 1:
    return {r.name: None for r in revs}
  labels = {}
  for r in revs:
    kind, k = keys[r.name]
    if kind == "source":
      labels[keys[r.name]] = k.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1] if k.startswith("run://") \
          else k[len("hf://"):]
    else:
      labels[keys[r.name]] = config_label(cfgs[r.name])
  taken = {}
  for key, lab in labels.items():
    taken.setdefault(lab, []).append(key)
  for lab, ks in taken.items():
    if len(ks) > 1:  # two models would share a label: make each unique by a hash of its identity
      for key in ks:
        labels[key] = f"{lab}-{hashlib.sha1(key[1].encode()).hexdigest()[:8]}"
  return {r.name: labels[keys[r.name]] for r in revs}


def canonical(revs: Sequence, groups: dict) -> list:
  """The revisions sorted by (model label, tokens, name): the same list whatever order `revs` came in."""
  return sorted(revs, key=lambda r: (groups.get(r.name) or "", float(r.tokens), r.name))


def finals(revs: Sequence, groups: dict) -> dict:
  """{model label: that model's final revision (most tokens, then the last name)}."""
  out = {}
  for r in revs:
    g = groups.get(r.name)
    if g not in out or (r.tokens, r.name) > (out[g].tokens, out[g].name):
      out[g] = r
  return out


def assign(order: Sequence, process_index: int, process_count: int) -> list:
  """This process's revisions: positions p, p + P, ... of the canonical order."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  return list(order)[process_index::process_count]


def processes() -> tuple[int, int]:
  """(jax.process_index(), jax.process_count()): (0, 1) unless jax.distributed was initialized."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
  """Wait until every process reaches the barrier `name` (no-op with one process)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)
