"""Executes the three notebooks on tiny settings (environment variables they read in their parameter cells).

The kernel is the current interpreter's (nbclient's native python3 kernel, launched with sys.executable).
quickstart: 12 steps of the pythia family; run_analysis: an 8-step 2-layer stand-in run (checkpoints 0, 1, 2, 8),
swept; public_revisions: its one command (`python -m launch.discover --hf_repo EleutherAI/pythia-1b ...`) on two
revisions of a local cache laid out as the Hugging Face Hub's (random tiny GPT-NeoX weights, circuits.convert.
random_hf) with HF_HUB_OFFLINE=1 -- no network. Each notebook's setup cell prints the runtime and jax's devices
and installs nothing (not on Colab). A last cell lists the modules the kernel imported: each comes from what
circuits.colab installs for that notebook (NEEDS and their dependencies), the kernel's own packages, or an
optional import (OPTIONAL); never TensorFlow, seqio, sentencepiece or transformers, and for public_revisions not
torch (its revisions are safetensors).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"

TINY = {
    "quickstart": dict(NB_STEPS="12", NB_FAMILY="pythia"),
    "run_analysis": dict(NB_STEPS="8", NB_FAMILY="pythia"),
    "public_revisions": dict(NB_REVISIONS="step1,step143000", NB_N="32", NB_SEQ_LEN="32", NB_SEEDS="2",
                             NB_N_DETECT="1", HF_HUB_OFFLINE="1"),
}
NOT_NEEDED = ("tensorflow", "seqio", "transformers", "sentencepiece")
# imported when present, needed by nothing here: torch (tensorboardX), pyarrow (pandas), flatbuffers (jax.export),
# charset-normalizer (numpy.f2py), setuptools (its _distutils_hack .pth)
OPTIONAL = ("torch", "pyarrow", "flatbuffers", "charset-normalizer", "setuptools")


def _closure(names) -> set[str]:
  """Canonical names of the installed distributions `names` and everything they require (with extras)."""
  from packaging.requirements import Requirement
  from circuits.colab import norm
  todo, seen = [(norm(n), frozenset()) for n in names], set()
  while todo:
    name, extras = todo.pop()
    if (name, extras) in seen:
      continue
    seen.add((name, extras))
    try:
      reqs = md.requires(name) or []
    except md.PackageNotFoundError:
      continue
    for r in map(Requirement, reqs):
      if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras)):
        todo.append((norm(r.name), frozenset(r.extras)))
  return {n for n, _ in seen}


def _unexpected(name: str, modules) -> dict:
  """{top-level module: its distributions} for imported modules outside what the notebook may import."""
  from circuits import colab
  allowed = _closure(colab.NEEDS[name]) | _closure(("ipykernel",)) | _closure(OPTIONAL)
  owners = md.packages_distributions()
  return {m: owners[m] for m in modules if m in owners and not {colab.norm(d) for d in owners[m]} & allowed}


def _hub_cache(cache: Path, repo_id: str, branches, src: Path) -> None:
  """Copies the files of `src` into a Hugging Face cache layout (refs/, snapshots/, blobs/) as each branch."""
  root = cache / ("models--" + repo_id.replace("/", "--"))
  (root / "blobs").mkdir(parents=True, exist_ok=True)
  (root / "refs").mkdir(exist_ok=True)
  for branch in branches:
    commit = hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
      blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
      shutil.copyfile(f, blob)
      (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    (root / "refs" / branch).write_text(commit)


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs(name, tmp_path, monkeypatch):
  for k, v in TINY[name].items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("NB_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("NB_OUT", str(tmp_path / "out"))
  monkeypatch.setenv("CIRCUITS_ROOT", str(ROOT))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
  if name == "public_revisions":  # EleutherAI/pythia-1b's layout, tiny random weights, offline
    from circuits.convert import random_hf
    tiny = dict(random_hf.PUBLISHED["EleutherAI/pythia-1b"], vocab_size=128, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    src = random_hf.write(tmp_path / "tiny", tiny, std=0.2)
    _hub_cache(tmp_path / "hf_cache", "EleutherAI/pythia-1b", ("step1", "step143000"), src)
    monkeypatch.setenv("NB_CACHE_DIR", str(tmp_path / "hf_cache"))
  nb = nbformat.read(NB / f"{name}.ipynb", as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell("import json, sys; print(json.dumps(sorted(sys.modules)))"))
  client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NB)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors, errors
  printed = "".join(o.get("text", "") for o in nb.cells[1].outputs)
  assert "runtime: " in printed and "jax devices: " in printed, printed
  modules = {m.split(".")[0] for m in json.loads(nb.cells[-1].outputs[0]["text"])}
  assert "circuits" in modules and not set(NOT_NEEDED) & modules, set(NOT_NEEDED) & modules
  assert not _unexpected(name, modules), f"imported, not installed by circuits.colab: {_unexpected(name, modules)}"
  if name == "public_revisions":
    assert "torch" not in modules
    assert (tmp_path / "out" / "report.html").exists()
    table = (tmp_path / "out" / "table.csv").read_text().splitlines()
    assert len(table) == 1 + 2 * 2 * 4, len(table)   # header + 2 revisions x 2 layers x 4 heads
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
  if name == "quickstart":
    assert (tmp_path / "work" / "metrics.jsonl").exists()
