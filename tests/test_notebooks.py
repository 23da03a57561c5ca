"""Executes the three notebooks on tiny settings (environment variables they read in their parameter cells).

The kernel is the current interpreter's (nbclient's native python3 kernel, launched with sys.executable).
quickstart: 12 steps of the pythia family; run_analysis: an 8-step 2-layer stand-in run (checkpoints 0, 1, 2, 8),
swept; public_revisions: two random tiny GPT-NeoX fixtures saved locally (circuits/convert/fixtures.py), converted and swept -- no hub.
"""

from __future__ import annotations

import os
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
    "public_revisions": dict(),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs(name, tmp_path, monkeypatch):
  for k, v in TINY[name].items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("NB_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("NB_OUT", str(tmp_path / "out"))
  monkeypatch.setenv("CIRCUITS_ROOT", str(ROOT))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
  nb = nbformat.read(NB / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NB)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors, errors
  if name == "public_revisions":
    assert (tmp_path / "out" / "sweep" / "report.html").exists()
  if name == "quickstart":
    assert (tmp_path / "work" / "metrics.jsonl").exists()
