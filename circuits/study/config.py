"""Study configs and the workdir layout: load and check a study config, its fingerprint, each family's
trainer config (run_config), the combined task's spec and span ids, and Paths (where every job writes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import runpy
from pathlib import Path
from typing import Optional

import ml_collections

from circuits.errors import CircuitsError

STAGES = ("data", "train", "sweep", "metrics", "report")
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


class StudyError(CircuitsError, RuntimeError):
  """A study config is inconsistent or a job failed; the message names the field or the job's log."""


def load(path: str, overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The study config of a Python config file (its get_config()), with dotted-key overrides."""
  mod = runpy.run_path(str(path))
  cfg = mod["get_config"]()
  for k, v in (overrides or {}).items():
    _set(cfg, k, v)
  return resolve(cfg)


def load_resolved(path) -> ml_collections.ConfigDict:
  """The resolved study config a runner wrote (<workdir>/study_config.json), checked again."""
  with open(path) as f:
    return resolve(ml_collections.ConfigDict(json.load(f)))


def _set(cfg, key: str, value) -> None:
  parts = key.split(".")
  node = cfg
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = value


def resolve(cfg) -> ml_collections.ConfigDict:
  """Checks a study config (families known, sizes consistent) and returns a copy."""
  cfg = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  from configs.families import PUBLISHED
  order = [f for f in cfg.family_order if f in cfg.families]
  unknown = sorted({architecture(cfg, f) for f in cfg.families} - set(PUBLISHED))
  if unknown:
    raise StudyError(f"families: unknown family {unknown}; known: {sorted(PUBLISHED)} (a run named otherwise "
                     "sets `family`)")
  if not order:
    raise StudyError("family_order: names no family of `families`")
  cfg.family_order = tuple(order)
  need = 3 + int(cfg.data.synthetic.n_bb) + int(cfg.data.synthetic.n_span)
  if str(cfg.data.task).endswith("combined") and int(cfg.data.vocab_size) < need:
    raise StudyError(f"data.vocab_size={cfg.data.vocab_size}: the combined task needs >= {need} ids "
                     f"(3 specials + n_bb + n_span)")
  for f in order:
    fc = cfg.families[f]
    if architecture(cfg, f) == "olmoe" and not (fc.n_experts and fc.top_k):
      raise StudyError(f"families.{f}: set n_experts and top_k (the MoE family needs experts)")
    if architecture(cfg, f) != "olmoe" and fc.n_experts:
      raise StudyError(f"families.{f}.n_experts: only the olmoe family has experts")
  _check_seeds(cfg, order)
  bad = [p for p in cfg.sweep.probes if p not in ("combined", "synthetic")]
  if bad:
    raise StudyError(f"sweep.probes: unknown probe(s) {bad}; known: combined, synthetic")
  return cfg


def _check_seeds(cfg, order) -> None:
  """data_seed (optional per run) is an int; a `seeds` section names model_seeds and data_seeds of one length,
  whose (model, data) pairs are distinct."""
  for f in order:
    ds = cfg.families[f].get("data_seed", None)
    if ds is not None and (isinstance(ds, bool) or not isinstance(ds, int)):
      raise StudyError(f"families.{f}.data_seed={ds!r}: give an int (the seed of the training rows' generator) "
                       "or leave it out (the first run's model seed, as in the laptop study)")
  if "seeds" not in cfg:
    return
  ms, ds = list(cfg.seeds.model_seeds), list(cfg.seeds.data_seeds)
  if not ms or len(ms) != len(ds):
    raise StudyError(f"seeds: model_seeds ({len(ms)}) and data_seeds ({len(ds)}) must be non-empty and of one "
                     "length (replicate i trains with model_seeds[i] and data_seeds[i])")
  pairs = list(zip(ms, ds))
  if len(set(pairs)) != len(pairs):
    raise StudyError(f"seeds: the (model seed, data seed) pairs {pairs} repeat one; every replicate needs its own")


def data_seed(cfg, run: str) -> int:
  """The seed of a run's training rows (the token cache's generator): the run's `data_seed`, else the first
  run's model `seed` (the laptop study: one cache for every family, built with that seed)."""
  ds = cfg.families[run].get("data_seed", None)
  return int(cfg.families[cfg.family_order[0]].seed) if ds is None else int(ds)


def cache_name(cfg, run: str) -> str:
  """The token cache folder of a run in the workdir: `cache` (shared; no data_seed) or `cache_data<seed>`."""
  ds = cfg.families[run].get("data_seed", None)
  return "cache" if ds is None else f"cache_data{int(ds)}"


def caches(cfg) -> dict:
  """{cache folder name: data seed} over the runs of a study (one entry in the laptop study)."""
  return {cache_name(cfg, f): data_seed(cfg, f) for f in cfg.family_order}


def architecture(cfg, run: str) -> str:
  """The model family of a study run: its `family` field, else the run's name (pythia, olmo, olmoe)."""
  return str(cfg.families[run].get("family", "") or run)


def fingerprint(cfg) -> str:
  """sha1 of the study config without the parallel section (scheduling does not change results) and the
  pilot_choices notes (documentation the report prints: editing a note reruns nothing; --force=report)."""
  d = cfg.to_dict()
  d.pop("parallel", None)
  d.pop("pilot_choices", None)
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def span_ids(cfg) -> tuple[int, int]:
  """[lo, hi) of the span ids of the combined task (the paper's synthetic probe draws from them)."""
  s = cfg.data.synthetic
  lo = 3 + int(s.n_bb)
  return lo, lo + int(s.n_span)


def combined_spec(cfg):
  from circuits.data import synthetic
  s = cfg.data.synthetic
  bb = synthetic.BigramBackcopySpec(n_bb=int(s.n_bb), n_triggers=int(s.n_triggers),
                                    trigger_prob=float(s.trigger_prob), bigram_k=int(s.bigram_k),
                                    table_seed=int(s.table_seed))
  return synthetic.CombinedSpec(bb=bb, n_span=int(s.n_span), span_min=int(s.span_min), span_max=int(s.span_max))


@dataclasses.dataclass(frozen=True)
class Paths:
  root: Path

  @property
  def config(self) -> Path:
    return self.root / "study_config.json"

  @property
  def cache(self) -> Path:
    return self.root / "cache"

  def cache_at(self, name: str) -> Path:
    """A token cache folder of the workdir (config.cache_name: `cache` or `cache_data<seed>`)."""
    return self.root / name

  @property
  def probes(self) -> Path:
    return self.root / "probes"

  def run(self, family: str) -> Path:
    return self.root / family / "run"

  def sweep(self, family: str, probe: str) -> Path:
    return self.root / family / f"sweep_{probe}"

  def metrics(self, family: str) -> Path:
    return self.root / family / "revision_metrics.jsonl"

  @property
  def logs(self) -> Path:
    return self.root / "logs"

  @property
  def stages(self) -> Path:
    return self.root / "stages"

  @property
  def report(self) -> Path:
    return self.root / "study"


def study_paths(workdir) -> Paths:
  return Paths(Path(workdir).absolute())


def run_config(study, family: str, workdir: Optional[str] = None) -> ml_collections.ConfigDict:
  """The trainer config of one family: configs/families.py facts, the family recipe, the study's data."""
  from configs.base import model_fields
  from configs.families import family_config

  study = resolve(study)
  if family not in study.family_order:
    raise StudyError(f"{family!r} is not a family of this study (family_order: {list(study.family_order)})")
  f = study.families[family]
  size = str(f.get("size", "small"))
  arch = architecture(study, family)
  c = family_config(arch, size)
  fields = dict(c.model.to_dict(), vocab_size=int(study.data.vocab_size), d_model=int(f.d_model),
                n_layers=int(f.n_layers), n_heads=int(f.n_heads), d_ff=int(f.d_ff), qk_init_std=float(f.qk_init_std),
                init_std=float(f.init_std), attention=str(f.get("attention", "softmax")))
  extra = f.get("model", None)
  for k, v in (extra.to_dict() if hasattr(extra, "to_dict") else dict(extra or {})).items():  # e.g. moe_impl
    fields[k] = v
  if arch == "olmoe":
    fields.update(n_experts=int(f.n_experts), top_k=int(f.top_k))
  c.model = model_fields(**fields)
  c.seed = int(f.seed)
  root = Path(workdir or study.get("workdir", f"runs/{study.name}"))
  d = study.data
  c.data.cache = str(root / cache_name(study, family))
  c.data.task, c.data.vocab = str(d.task), str(d.vocab)
  c.data.seq_len = int(f.get("seq_len", 0) or d.seq_len)
  c.data.add_bos, c.data.pack = bool(d.add_bos), bool(d.pack)
  c.data.n_sequences = cache_rows(study)
  for k, v in d.synthetic.items():
    c.data.synthetic[k] = v
  tr = study.train
  c.train.update(dict(steps=int(f.steps), lr=float(f.lr), warmup_steps=int(f.warmup_steps),
                      min_lr_ratio=float(f.min_lr_ratio), batch_size=int(f.get("batch_size", 0) or tr.batch_size),
                      b1=float(tr.b1), b2=float(tr.b2),
                      weight_decay=float(tr.weight_decay if f.get("weight_decay") is None else f.weight_decay),
                      grad_clip=float(tr.grad_clip),
                      log_every=int(tr.log_every), progress=True))
  ck = study.checkpoint
  c.checkpoint.update(dict(log_spaced=True, log_until=int(ck.log_until), every=int(ck.every),
                           resume_every=int(ck.resume_every), keep_resume=2))
  lo, hi = span_ids(study) if str(d.task).endswith("combined") else (0, 0)  # (0, 0): the trainer's default
  c.probe.update(dict(every=int(tr.probe_every), n=int(tr.probe_n), token_lo=lo, token_hi=hi))
  if "mesh" in study:
    c.mesh.update(study.mesh.to_dict())
  return c


def cache_rows(study) -> int:
  """Rows of the shared cache: the longest family's steps x the global batch."""
  if int(study.data.get("n_sequences", 0) or 0):
    return int(study.data.n_sequences)
  return max(int(study.families[f].steps) * int(study.families[f].get("batch_size", 0) or study.train.batch_size)
             for f in study.family_order)
