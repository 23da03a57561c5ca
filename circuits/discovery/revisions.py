"""Revision sources for a discovery sweep: each yields (name, step, tokens, load() -> (cfg, model)).

    revs = revisions.from_run("runs/laptop")              # our trainer's Orbax run (meta/ of every step)
    revs = revisions.from_list("pythia_revisions.jsonl")  # converted / HF checkpoint directories
    for r in revs: cfg, model = r.load()

Loading is lazy (one model in memory at a time). Our runs: steps and tokens from the trainer's per-step
metadata (circuits.rundir.read_index), params only, restored read-only on the host CPU (rundir.restore_params;
jit places them on whatever devices exist). Reading a run never imports the trainer (circuits.train). List files: JSON lines ({"name", "path", "tokens"[, "step"]}) or
CSV with a header `name,path,tokens[,step]`; relative paths are relative to the list file; `tokens` may be
empty when derivable from the name (Pythia `step{N}` -> N x 2,097,152; OLMo/OLMoE `step{N}-tokens{X}B` ->
X x 1e9). A path holding `config.json` of a Hugging Face checkpoint is converted on the fly
(circuits.convert.from_hf); otherwise it must be a `python -m launch.convert` output (load_converted).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Optional
from circuits.errors import CircuitsError

PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1024 x 2048
_SAFE = re.compile(r"[^A-Za-z0-9._+=-]")


class RevisionError(CircuitsError, ValueError):
  """A revision list or run directory is malformed; the message names the entry and the fix."""


@dataclasses.dataclass(frozen=True)
class Revision:
  """One checkpoint to measure. `load()` returns (ModelConfig, model)."""
  name: str
  step: int
  tokens: float
  loader: Callable = dataclasses.field(repr=False, compare=False, default=None)
  source: str = ""

  def load(self):
    if self.loader is None:
      raise RevisionError(f"revision {self.name!r} has no loader")
    return self.loader()


def safe_name(name: str) -> str:
  """A file-safe revision name (letters, digits and . _ + = -; others become '_')."""
  return _SAFE.sub("_", str(name))


def pythia_tokens(step: int) -> float:
  """Tokens seen by Pythia at `step`: step x 2,097,152 (1024 sequences x 2048 tokens)."""
  return float(int(step) * PYTHIA_TOKENS_PER_STEP)


def parse_revision_name(name: str) -> tuple[Optional[int], Optional[float]]:
  """(step, tokens) from a branch name: 'step{N}-tokens{X}B' (OLMo/OLMoE) -> (N, X*1e9); 'step{N}'
  (Pythia) -> (N, N x 2,097,152); otherwise (None, None)."""
  m = re.fullmatch(r"step(\d+)-tokens(\d+(?:\.\d+)?)B", name)
  if m:
    return int(m.group(1)), float(m.group(2)) * 1e9
  m = re.fullmatch(r"step(\d+)", name)
  if m:
    return int(m.group(1)), pythia_tokens(int(m.group(1)))
  return None, None


def model_from_params(cfg, params):
  """Our model from a pure params dict (list indices may be strings, as Orbax stores them)."""
  from circuits.convert.hf import model_from_params as build  # pylint: disable=import-outside-toplevel
  from circuits.convert.store import int_keys  # pylint: disable=import-outside-toplevel
  return build(cfg, int_keys(params))


def load_checkpoint_dir(path, dtype: str = "float32", moe_impl: Optional[str] = None):
  """(cfg, model) from a converted directory (launch.convert) or a Hugging Face directory (config.json +
  weights, converted in memory with parameters in `dtype`; attention and measurements stay fp32).
  moe_impl: MoE models only, how the experts are computed (circuits.models.moe; None: the config's)."""
  path = Path(path)
  from circuits import convert  # pylint: disable=import-outside-toplevel
  over = {} if moe_impl is None else {"moe_impl": moe_impl}
  if (path / "params").exists():
    return convert.load_converted(path, **over)
  if (path / "config.json").exists():
    return convert.from_hf(path, dtype=dtype, **over)
  raise RevisionError(f"{path}: neither a converted checkpoint (<dir>/params from `python -m launch.convert`) "
                      "nor a Hugging Face directory (config.json)")


def _entries(list_file: Path) -> list[dict]:
  text = list_file.read_text()
  lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
  if not lines:
    raise RevisionError(f"{list_file}: no revisions listed")
  if lines[0].lstrip().startswith("{"):
    out = []
    for i, ln in enumerate(lines):
      try:
        out.append(json.loads(ln))
      except json.JSONDecodeError as e:
        raise RevisionError(f"{list_file}:{i + 1}: not a JSON object ({e})") from e
    return out
  rows = list(csv.DictReader(lines, skipinitialspace=True))
  if not rows or "path" not in rows[0]:
    raise RevisionError(f"{list_file}: CSV needs a header line `name,path,tokens[,step]`")
  return rows


def from_list(list_file, loader: Callable = load_checkpoint_dir) -> list[Revision]:
  """Revisions of a list file (see the module docstring), in file order."""
  list_file = Path(list_file)
  out, seen = [], set()
  for i, e in enumerate(_entries(list_file)):
    if not e.get("path"):
      raise RevisionError(f"{list_file} entry {i + 1}: missing `path`")
    path = Path(e["path"])
    path = path if path.is_absolute() else list_file.parent / path
    name = str(e.get("name") or path.name)
    step_n, tok_n = parse_revision_name(name)
    tok = e.get("tokens")
    tokens = float(tok) if tok not in (None, "") else tok_n
    if tokens is None or not math.isfinite(tokens):
      raise RevisionError(f"{list_file} entry {i + 1} ({name!r}): give `tokens` (absolute tokens seen); it "
                          "is derivable only from names step{N} (Pythia) or step{N}-tokens{X}B")
    st = e.get("step")
    step = int(float(st)) if st not in (None, "") else (step_n if step_n is not None else i)
    sname = safe_name(name)
    if sname in seen:
      raise RevisionError(f"{list_file}: revision name {sname!r} appears twice")
    seen.add(sname)
    out.append(Revision(sname, step, tokens, loader=(lambda p=path: loader(p)), source=str(path)))
  return out


def from_run(workdir, steps: Optional[Iterable[int]] = None) -> list[Revision]:
  """Revisions of one of our trainer's runs: every committed checkpoint (or `steps`), named step{N}.

  Steps and tokens (tokens_seen) come from each checkpoint's meta/ JSON; the model config from the
  meta's run config (`config.model`)."""
  from circuits import rundir  # pylint: disable=import-outside-toplevel
  from circuits.models import ModelConfig  # pylint: disable=import-outside-toplevel

  index = rundir.read_index(str(workdir))
  if not index:
    raise RevisionError(f"{workdir}: no committed checkpoint under {workdir}/{rundir.CKPT_DIR}")
  want = None if steps is None else {int(s) for s in steps}
  out = []
  for meta in index:
    step = int(meta["step"])
    if want is not None and step not in want:
      continue
    model_cfg = ModelConfig.from_dict(meta["config"]["model"]).replace(attention_impl="exact")  # discovery: exact

    def load(step=step, model_cfg=model_cfg):
      params, _ = rundir.restore_params(str(workdir), step)
      return model_cfg, model_from_params(model_cfg, params)

    out.append(Revision(f"step{step}", step, float(meta["tokens_seen"]), loader=load, source=str(workdir)))
  return out

