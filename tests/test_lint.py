"""The tree passes `ruff check` with the repository's pyproject.toml (the pinned ruff of requirements.txt)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff() -> str:
  exe = os.path.join(os.path.dirname(sys.executable), "ruff")
  exe = exe if os.path.exists(exe) else shutil.which("ruff")
  if not exe:
    pytest.skip("ruff is not installed: pip install -r requirements.txt")
  return exe


def test_ruff_check_passes():
  r = subprocess.run([_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]


def test_ruff_flags_what_the_config_selects(tmp_path):
  """The config is in force: an unused import in a file under the tree fails the check."""
  bad = tmp_path / "bad.py"
  bad.write_text("import os\n")
  r = subprocess.run([_ruff(), "check", "--no-cache", "--config", os.path.join(ROOT, "pyproject.toml"), str(bad)],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 1 and "F401" in r.stdout
