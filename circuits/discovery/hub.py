"""Public revisions from the Hugging Face Hub: fetched into the standard HF cache, converted in memory.

    from circuits.discovery import hub
    revs = hub.revisions("EleutherAI/pythia-1b", "paper")          # the paper's 10 revisions
    revs = hub.revisions("allenai/OLMo-1B-0724-hf", "all")          # every `step...` branch of the repo
    revs = hub.revisions("EleutherAI/pythia-1b", "step1000,step3000")  # or a file with one name per line
    cfg, model = revs[0].load()   # fetches config + weights of that revision only, then converts in memory

Fetching goes through `huggingface_hub.snapshot_download` with `allow_patterns` (config.json and the
safetensors weights; the torch `pytorch_model*.bin` files only when a branch has no safetensors), one
revision at a time, with its progress bars, into the standard cache (`HF_HUB_CACHE` / `HF_HOME`, or
`cache_dir`). A killed download resumes; nothing already in the cache is deleted. With `HF_HUB_OFFLINE=1`
everything is served from the cache. No second copy is written: `circuits.convert.from_hf` reads the cached
files. Tokens seen per revision come from the branch name (Pythia `step{N}`: N x 2,097,152; OLMo and OLMoE
`step{N}-tokens{X}B`: X x 1e9).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from circuits.discovery.revisions import Revision, RevisionError, parse_revision_name, safe_name

CONFIG_PATTERNS = ("config.json",)
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
TORCH_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")

# Pythia's published schedule: step0, 1, 2, 4, ..., 512, then every 1000 steps to 143000 (154 revisions).
PYTHIA_SCHEDULE = tuple([0] + [2 ** i for i in range(10)] + list(range(1000, 143001, 1000)))

# The paper's 10 revisions per model (arXiv 2606.02378; the branch names of its per-revision result files).
PAPER_REVISIONS = {
    "EleutherAI/pythia-1b": ("step1", "step4", "step16", "step64", "step256", "step512", "step3000",
                             "step10000", "step38000", "step143000"),
    "allenai/OLMo-1B-0724-hf": ("step1000-tokens2B", "step2000-tokens4B", "step5000-tokens10B",
                                "step11000-tokens23B", "step25000-tokens52B", "step56000-tokens117B",
                                "step126000-tokens264B", "step285000-tokens597B", "step644000-tokens1350B",
                                "step1454000-tokens3048B"),
    "allenai/OLMoE-1B-7B-0924": ("step5000-tokens20B", "step10000-tokens41B", "step25000-tokens104B",
                                 "step50000-tokens209B", "step100000-tokens419B", "step200000-tokens838B",
                                 "step400000-tokens1677B", "step600000-tokens2516B", "step800000-tokens3355B",
                                 "step1220000-tokens5117B"),
}


class HubError(RevisionError):
  """A Hub repository, revision or download cannot be used; the message names it and the fix."""


def _is_pythia(repo_id: str) -> bool:
  return bool(re.search(r"pythia", repo_id, re.IGNORECASE))


def _step_key(name: str):
  step, _ = parse_revision_name(name)
  return (step is None, step if step is not None else 0, name)


def cached_branches(repo_id: str, cache_dir=None) -> list[str]:
  """Branch names recorded in the local HF cache for `repo_id` (`refs/`), sorted by step."""
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  root = Path(cache_dir or constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "refs"
  if not root.is_dir():
    return []
  return sorted((str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()), key=_step_key)


def check_available(repo_id: str, names: Sequence[str], cache_dir=None) -> None:
  """Raises one HubError naming every revision that cannot be had, before anything is measured: online,
  names that are not branches of the repo (one listing request); offline, names not in the local cache."""
  from huggingface_hub import HfApi, constants  # pylint: disable=import-outside-toplevel
  from huggingface_hub.errors import RepositoryNotFoundError  # pylint: disable=import-outside-toplevel
  if constants.is_offline_mode():
    have, where = set(cached_branches(repo_id, cache_dir)), "in the local Hugging Face cache (HF_HUB_OFFLINE=1)"
  else:
    try:
      refs = HfApi().list_repo_refs(repo_id)
    except RepositoryNotFoundError as e:
      raise HubError(f"{repo_id}: no such repository on the Hub (or it is private: `hf auth login`); check the "
                     "id, e.g. EleutherAI/pythia-1b") from e
    have, where = {r.name for r in list(refs.branches) + list(refs.tags)}, "on the Hub"
  missing = [n for n in names if n not in have]
  if missing:
    close = sorted(have, key=_step_key)[:5]
    raise HubError(f"{repo_id}: revision(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} not {where}; "
                   f"{len(have)} are (e.g. {close}); see them with --revisions all --dry_run")


def list_branches(repo_id: str, cache_dir=None) -> list[str]:
  """The repository's `step...` branches, sorted by step: from the Hub, or from the cache when offline."""
  from huggingface_hub import HfApi, constants  # pylint: disable=import-outside-toplevel
  from huggingface_hub.errors import RepositoryNotFoundError  # pylint: disable=import-outside-toplevel
  if constants.is_offline_mode():
    names = cached_branches(repo_id, cache_dir)
  else:
    try:
      names = [b.name for b in HfApi().list_repo_refs(repo_id).branches]
    except RepositoryNotFoundError as e:
      raise HubError(f"{repo_id}: no such repository on the Hub (or it is private: log in with "
                     "`hf auth login`); check the id, e.g. EleutherAI/pythia-1b") from e
  names = [n for n in names if parse_revision_name(n)[0] is not None]
  if not names:
    raise HubError(f"{repo_id}: no `step...` revision branches found"
                   + (" in the cache (HF_HUB_OFFLINE=1: fetch them online once)" if constants.is_offline_mode()
                      else ""))
  return sorted(names, key=_step_key)


def resolve(repo_id: str, spec: str, cache_dir=None) -> list[str]:
  """Revision names of `spec`: "paper" (the paper's 10), "all" (Pythia's published schedule, or every
  `step...` branch of another repo; offline, every `step...` branch in the cache), a comma-separated list,
  or the path of a file with one name per line."""
  spec = str(spec).strip()
  if spec == "paper":
    if repo_id not in PAPER_REVISIONS:
      raise HubError(f"--revisions paper: the paper measured {sorted(PAPER_REVISIONS)}, not {repo_id!r}; "
                     "give the revisions by name (step1000,step3000) or `all`")
    return list(PAPER_REVISIONS[repo_id])
  if spec == "all":
    from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
    if _is_pythia(repo_id) and not constants.is_offline_mode():
      return [f"step{s}" for s in PYTHIA_SCHEDULE]
    return list_branches(repo_id, cache_dir)
  if os.path.isfile(spec):
    names = [ln.strip() for ln in Path(spec).read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
  else:
    names = [n.strip() for n in spec.split(",") if n.strip()]
  if not names:
    raise HubError(f"--revisions {spec!r}: no revision names (give paper, all, step1000,step3000 or a file)")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise HubError(f"--revisions: {dup} listed twice")
  return names


def _snapshot(repo_id: str, revision: str, patterns: Sequence[str], cache_dir, dry_run: bool = False):
  from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
  return snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns), cache_dir=cache_dir,
                           dry_run=dry_run)


def _explain(e: Exception, repo_id: str, revision: str) -> HubError:
  """One clear HubError for the ways a fetch fails."""
  from huggingface_hub import errors as hfe  # pylint: disable=import-outside-toplevel
  where = f"{repo_id}@{revision}"
  if isinstance(e, hfe.RevisionNotFoundError):
    return HubError(f"{where}: no such revision on the Hub; list them with --revisions all --dry_run")
  if isinstance(e, hfe.RepositoryNotFoundError):
    return HubError(f"{where}: no such repository on the Hub (or it is private: `hf auth login`); check the "
                    "id, e.g. EleutherAI/pythia-1b")
  if isinstance(e, getattr(hfe, "IncompleteSnapshotError", ())):
    return HubError(f"{where}: the cached download is incomplete (an interrupted fetch); rerun with network "
                    "access to finish it (nothing already fetched is lost)")
  if isinstance(e, hfe.LocalEntryNotFoundError):
    return HubError(f"{where}: not in the local Hugging Face cache and the Hub cannot be reached (offline or "
                    "HF_HUB_OFFLINE=1); fetch it once with network access")
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    return HubError(f"{where}: the disk holding the Hugging Face cache is full; free space or set "
                    "HF_HUB_CACHE to a larger disk, then rerun (the partial file is resumed)")
  return HubError(f"{where}: {type(e).__name__}: {e}")


def fetch(repo_id: str, revision: str, cache_dir=None) -> Path:
  """The snapshot folder of one revision in the HF cache, fetching config + weights only if needed."""
  try:
    path = Path(_snapshot(repo_id, revision, CONFIG_PATTERNS + SAFETENSORS_PATTERNS, cache_dir))
    if not any(path.glob("*.safetensors")):  # older branches: torch pickles only
      path = Path(_snapshot(repo_id, revision, CONFIG_PATTERNS + TORCH_PATTERNS, cache_dir))
  except Exception as e:  # pylint: disable=broad-except
    raise _explain(e, repo_id, revision) from e
  if not (path / "config.json").exists():
    raise HubError(f"{repo_id}@{revision}: the revision has no config.json; is it a model repository?")
  if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
    raise HubError(f"{repo_id}@{revision}: no weights (*.safetensors or pytorch_model*.bin) in the revision")
  return path


def plan(repo_id: str, names: Sequence[str], cache_dir=None) -> list[dict]:
  """What `fetch` would download for each revision, without downloading: {revision, files, bytes,
  bytes_to_fetch, cached}. Needs the Hub; offline, it lists what the cache holds."""
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  rows = []
  for name in names:
    if constants.is_offline_mode():
      try:
        path = fetch(repo_id, name, cache_dir)
      except HubError:
        rows.append(dict(revision=name, files=0, bytes=0, bytes_to_fetch=None, cached=False))
        continue
      pats = CONFIG_PATTERNS + SAFETENSORS_PATTERNS + TORCH_PATTERNS
      files = [p for p in path.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, x) for x in pats)]
      rows.append(dict(revision=name, files=len(files), bytes=sum(p.stat().st_size for p in files),
                       bytes_to_fetch=0, cached=True))
      continue
    try:
      infos = _snapshot(repo_id, name, CONFIG_PATTERNS + SAFETENSORS_PATTERNS, cache_dir, dry_run=True)
      if not any(i.filename.endswith(".safetensors") for i in infos):
        infos = _snapshot(repo_id, name, CONFIG_PATTERNS + TORCH_PATTERNS, cache_dir, dry_run=True)
    except Exception as e:  # pylint: disable=broad-except
      raise _explain(e, repo_id, name) from e
    size = lambda i: i.file_size or 0
    rows.append(dict(revision=name, files=len(infos), bytes=sum(size(i) for i in infos),
                     bytes_to_fetch=sum(size(i) for i in infos if i.will_download),
                     cached=all(not i.will_download for i in infos)))
  return rows


def plan_table(repo_id: str, names: Sequence[str], cache_dir=None) -> str:
  """`plan` as a printable table with totals (sizes in GB of 1e9 bytes)."""
  rows = plan(repo_id, names, cache_dir)
  gb = lambda b: "?" if b is None else f"{b / 1e9:.2f}"
  lines = [f"{'revision':<28} {'files':>5} {'GB':>8} {'GB to fetch':>11}  cached"]
  lines += [f"{r['revision']:<28} {r['files']:>5} {gb(r['bytes']):>8} {gb(r['bytes_to_fetch']):>11}  "
            f"{'yes' if r['cached'] else 'no'}" for r in rows]
  todo = [r["bytes_to_fetch"] for r in rows if r["bytes_to_fetch"] is not None]
  lines.append(f"{len(rows)} revision(s) of {repo_id}; {sum(r['cached'] for r in rows)} cached; "
               f"{gb(sum(todo))} GB to fetch" + ("" if len(todo) == len(rows) else " (offline: uncached sizes unknown)"))
  return "\n".join(lines)


def revisions(repo_id: str, spec: str = "paper", *, cache_dir=None, dtype: str = "float32",
              tokens: Optional[dict] = None, check: bool = True, moe_impl: Optional[str] = None) -> list[Revision]:
  """Revisions of a Hub repository for `circuits.discovery.sweep`; each `load()` fetches (if needed) and
  converts in memory with weights in `dtype` (the attention and every measurement stay fp32).
  moe_impl: MoE models only, how the experts are computed (circuits.models.moe; None: the config's).

  tokens: optional {name: tokens seen} for names that do not carry them (step{N}, step{N}-tokens{X}B do).
  check: first make sure every revision exists (check_available), so a typo fails before hours of work."""
  if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo_id or ""):
    raise HubError(f"--hf_repo {repo_id!r}: expected owner/name, e.g. EleutherAI/pythia-1b")
  names = resolve(repo_id, spec, cache_dir)
  out = []
  for name in names:
    step, tok = parse_revision_name(name)
    tok = (tokens or {}).get(name, tok)
    if tok is None:
      raise HubError(f"{repo_id}@{name}: tokens seen are not derivable from the name (step{{N}} or "
                     "step{N}-tokens{X}B); pass them (tokens={name: n}) or use a revision list file")
    if not _is_pythia(repo_id) and re.fullmatch(r"step\d+", name):
      raise HubError(f"{repo_id}@{name}: {name!r} assumes Pythia's 2,097,152 tokens per step; give the "
                     "repo's branch name (step{N}-tokens{X}B)")

    def load(name=name):
      from circuits import convert  # pylint: disable=import-outside-toplevel
      over = {} if moe_impl is None else {"moe_impl": moe_impl}
      return convert.from_hf(fetch(repo_id, name, cache_dir), dtype=dtype, **over)

    out.append(Revision(safe_name(name), int(step if step is not None else len(out)), float(tok), loader=load,
                        source=f"hf://{repo_id}@{name}"))
  if check:
    check_available(repo_id, names, cache_dir)
  return out
