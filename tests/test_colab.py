"""circuits.colab, without network: the install choice for every runtime kind (CPU; GPU whose driver supports
CUDA 12, 13, an unknown or a too-old CUDA; TPU), starting from a Colab-like set of installed distributions
(an older jax with its CUDA 12 plugin, a CUDA torch, TensorFlow) and from the pinned set (nothing to do);
runtime detection from facts and from a fake `nvidia-smi` on PATH; the extras and libtpu pin of the installed
jax's own metadata; the notebooks' setup cells.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import runpy
import stat
from pathlib import Path

import pytest

from circuits import colab

ROOT = Path(__file__).resolve().parents[1]
PINS = colab.read_pins((ROOT / "requirements.txt").read_text())
JV = PINS["jax"]
NEVER = ("tensorflow", "seqio", "sentencepiece", "transformers", "pytest", "ruff", "nbclient", "ipykernel")

# What a Colab runtime brings before the notebook runs (versions are illustrative, not the pins).
COLAB = {"jax": "0.5.2", "jaxlib": "0.5.1", "jax-cuda12-plugin": "0.5.1", "jax-cuda12-pjrt": "0.5.1",
         "numpy": "2.0.2", "pandas": "2.2.2", "matplotlib": "3.10.0", "torch": "2.6.0+cu124",
         "tensorflow": "2.18.0", "flax": "0.10.4", "tqdm": "4.67.1", "absl-py": "1.4.0"}

SMI = """Thu Dec  3 08:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  Tesla T4                       Off |   00000000:00:04.0 Off |                    0 |
"""


def _reqs(cmds):
  """The requirements of the (single) install command, and the other commands."""
  inst = [c for c in cmds if c[:2] == ["install", "-q"] and "--index-url" not in c]
  assert len(inst) <= 1, cmds
  return (inst[0][2:] if inst else []), [c for c in cmds if c not in inst]


def test_pins_cover_every_notebook():
  for nb, names in colab.NEEDS.items():
    assert set(map(colab.norm, names)) <= set(PINS), (nb, set(names) - set(PINS))
  assert "torch" in PINS and JV == PINS["jaxlib"]
  assert colab.read_pins("# c\njax==1.2.3  # x\nml_collections == 1.0\n-r other.txt\nfoo>=2\n") == {
      "jax": "1.2.3", "ml-collections": "1.0"}


def test_jax_extras_from_its_metadata():
  """The extras named here exist in the pinned jax's METADATA, and jax[tpu] pins the libtpu checked here."""
  meta = md.metadata("jax")
  assert md.version("jax") == JV
  assert {"cuda12", "cuda13", "tpu"} <= set(meta.get_all("Provides-Extra"))
  reqs = md.requires("jax")
  assert any(r.startswith(f"libtpu=={colab.LIBTPU}.*") and 'extra == "tpu"' in r for r in reqs), reqs
  for major in (12, 13):
    assert any(r.startswith(f"jax-cuda{major}-plugin[with-cuda]") and f"<={JV}" in r
               and f'extra == "cuda{major}"' in r for r in reqs), reqs


@pytest.mark.parametrize("facts, kind, cuda", [
    (colab.Facts(), "cpu", None),
    (colab.Facts(env={"COLAB_GPU": "0"}), "cpu", None),
    (colab.Facts(nvidia_smi=SMI.format(cuda="12.4")), "gpu", 12),
    (colab.Facts(nvidia_smi=SMI.format(cuda="13.0")), "gpu", 13),
    (colab.Facts(nvidia_proc=True), "gpu", None),
    (colab.Facts(env={"COLAB_GPU": "1"}), "gpu", None),
    (colab.Facts(env={"COLAB_TPU_ADDR": "10.0.0.2:8470"}), "tpu", None),
    (colab.Facts(env={"TPU_ACCELERATOR_TYPE": "v5litepod-1"}), "tpu", None),
    (colab.Facts(tpu_devices=("/dev/accel0",)), "tpu", None),
    (colab.Facts(tpu_devices=("/dev/vfio/0",)), "tpu", None),
])
def test_classify(facts, kind, cuda):
  rt = colab.classify(facts)
  assert (rt.kind, rt.cuda) == (kind, cuda) and rt.why
  if facts.nvidia_smi:
    assert "Tesla T4" in rt.why and f"CUDA {cuda}." in rt.why


@pytest.mark.parametrize("rt, spec", [
    (colab.Runtime("cpu"), f"jax=={JV}"),
    (colab.Runtime("gpu", 12), f"jax[cuda12]=={JV}"),
    (colab.Runtime("gpu", 13), f"jax[cuda13]=={JV}"),
    (colab.Runtime("gpu", None), f"jax[cuda12]=={JV}"),
    (colab.Runtime("tpu"), f"jax[tpu]=={JV}"),
])
@pytest.mark.parametrize("notebook", sorted(colab.NEEDS))
def test_install_on_a_colab_runtime(rt, spec, notebook):
  cmds = colab.pip_commands(rt, PINS, notebook, COLAB)
  reqs, other = _reqs(cmds)
  assert reqs[0] == spec and f"jaxlib=={JV}" in reqs
  names = [colab.norm(r.split("[")[0].split("==")[0]) for r in reqs]
  assert sorted(names) == sorted(map(colab.norm, colab.NEEDS[notebook]))
  for r in reqs:  # every requirement is exactly the pin
    name, version = r.split("==")
    assert version == PINS[colab.norm(name.split("[")[0])]
  assert not set(NEVER) & set(names) and "torch" not in names
  # the runtime's CUDA 12 plugin (of its older jax) is upgraded by jax[cuda12], removed otherwise
  expect = [] if spec.startswith("jax[cuda12]") else [["uninstall", "-y", "jax-cuda12-pjrt", "jax-cuda12-plugin"]]
  assert other == expect                       # the runtime's torch 2.6 (CUDA build) is kept


def test_torch_only_where_pickles_are_read_and_none_is_installed():
  rt = colab.Runtime("tpu")
  no_torch = {k: v for k, v in COLAB.items() if k != "torch"}
  cpu_torch = ["install", "-q", f"torch=={PINS['torch']}", "--index-url", colab.TORCH_CPU_INDEX]
  assert colab.pip_commands(rt, PINS, "public_revisions", no_torch)[-1] == cpu_torch
  assert colab.pip_commands(rt, PINS, "public_revisions", dict(COLAB, torch="1.12.1"))[-1] == cpu_torch
  assert cpu_torch not in colab.pip_commands(rt, PINS, "public_revisions", COLAB)
  for nb in ("quickstart", "run_analysis"):
    assert cpu_torch not in colab.pip_commands(rt, PINS, nb, no_torch)


@pytest.mark.parametrize("kind, cuda, accel", [
    ("cpu", None, {}),
    ("gpu", 12, {"jax-cuda12-plugin": JV, "jax-cuda12-pjrt": JV}),
    ("gpu", 13, {"jax-cuda13-plugin": JV, "jax-cuda13-pjrt": JV}),
    ("tpu", None, {"libtpu": colab.LIBTPU + ".1"}),
])
def test_second_run_installs_nothing(kind, cuda, accel):
  """Everything at its pin (after the first run and a restart): no command. The pinned CPU jax alone on a
  GPU or TPU runtime (the development stack) is not enough: the accelerator build is installed."""
  rt = colab.Runtime(kind, cuda)
  done = dict({n: PINS[colab.norm(n)] for n in colab.NEEDS["public_revisions"]}, torch="2.6.0", **accel)
  assert colab.pip_commands(rt, PINS, "public_revisions", done) == []
  if accel:
    bare = {k: v for k, v in done.items() if k not in accel}
    assert colab.pip_commands(rt, PINS, "public_revisions", bare) == [["install", "-q", colab.jax_spec(rt, JV)]]


def test_clear_errors():
  with pytest.raises(colab.SetupError, match=r"supports CUDA 11 only.*driver >= 525"):
    colab.pip_commands(colab.Runtime("gpu", 11), PINS, "quickstart", {})
  with pytest.raises(colab.SetupError, match="expected one of"):
    colab.pip_commands(colab.Runtime("cpu"), PINS, "quickstrat", {})
  with pytest.raises(colab.SetupError, match=r"no `name==version` pin for \['pandas'\]"):
    colab.pip_commands(colab.Runtime("cpu"), {k: v for k, v in PINS.items() if k != "pandas"}, "quickstart", {})


def test_facts_from_a_fake_nvidia_smi(tmp_path):
  """facts() runs the `nvidia-smi` found on PATH; a failing one counts as none."""
  smi = tmp_path / "nvidia-smi"
  smi.write_text("#!/bin/sh\ncat <<'EOF'\n" + SMI.format(cuda="13.0") + "EOF\n")
  smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
  path = os.pathsep.join([str(tmp_path), "/usr/bin", "/bin"])
  f = colab.facts({"PATH": path, "COLAB_GPU": "1"})
  assert f.env == {"COLAB_GPU": "1"} and "CUDA Version: 13.0" in f.nvidia_smi
  assert colab.classify(f) == colab.Runtime("gpu", 13, "nvidia-smi: Tesla T4, driver supports CUDA 13.0")
  assert f.installed["jax"] == JV
  smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
  assert colab.facts({"PATH": path}).nvidia_smi is None


def test_stale_modules():
  cmds = [["install", "-q", f"jax[cuda12]=={JV}", f"numpy=={PINS['numpy']}"],
          ["install", "-q", "torch==2.13.0", "--index-url", colab.TORCH_CPU_INDEX]]
  assert colab.stale_modules(cmds, {"numpy": None, "json": None}) == ["numpy"]
  assert colab.stale_modules(cmds, {"json": None}) == []


def test_accelerator_runtime_with_cpu_jax(capsys):
  """A GPU runtime whose jax sees only CPU devices: a warning without an install, an error after one."""
  rt = colab.Runtime("gpu", 12, "nvidia-smi")
  line = colab.print_devices(rt)                 # this machine's jax is the CPU build
  assert line.startswith("cpu ")
  assert "jax computes on its CPU" in capsys.readouterr().out
  with pytest.raises(colab.SetupError, match=rf"Restart session.*jax\[cuda12\]=={JV}"):
    colab.print_devices(rt, strict=True)
  assert colab.print_devices(colab.Runtime("cpu")).startswith("cpu ")
  assert "warning" not in capsys.readouterr().out


def test_notebooks_set_up_through_colab():
  """Each notebook's first code cell calls colab.setup with its own name (the public one checks devices in a
  child process) and installs nothing itself; the .ipynb files are what notebooks/_build.py writes."""
  built = runpy.run_path(str(ROOT / "notebooks" / "_build.py"), run_name="build")
  for name, cells in (("quickstart", built["QUICKSTART"]), ("run_analysis", built["RUN_ANALYSIS"]),
                      ("public_revisions", built["PUBLIC"])):
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code == [c for c in cells if not c.startswith("md:")], f"{name}.ipynb: run python notebooks/_build.py"
    first = code[0]
    call = f'colab.setup("{name}", root=ROOT, install=IN_COLAB or os.environ.get("CIRCUITS_INSTALL") == "1"'
    assert call in first and ("subprocess_check=True" in first) == (name == "public_revisions")
    assert "requirements.txt" not in "".join(code) and "pip" not in first.split("from circuits import colab")[0]
  assert "--hf_repo" in "".join(built["PUBLIC"]) and "launch.discover" in "".join(built["PUBLIC"])


def test_setup_installs_then_asks_for_a_restart(monkeypatch, capsys):
  """setup(install=True) runs the planned pip commands with this interpreter; replacing a module this
  session already imported (numpy here) ends in a SetupError asking for a restart; the rerun installs nothing."""
  import numpy  # noqa: F401 -- imported by this session before the install
  ran = []
  monkeypatch.setattr(colab.subprocess, "check_call", lambda cmd, **kw: ran.append(cmd))
  monkeypatch.setattr(colab, "facts", lambda env=None: colab.Facts(installed=COLAB))
  with pytest.raises(colab.SetupError, match=r"'numpy'.*restart the session"):
    colab.setup("quickstart", root=ROOT, install=True)
  plan = colab.pip_commands(colab.Runtime("cpu"), PINS, "quickstart", COLAB)
  assert ran == [[colab.sys.executable, "-m", "pip", *c] for c in plan] and len(plan) == 2
  assert "runtime: cpu" in capsys.readouterr().out
  done = dict({n: PINS[colab.norm(n)] for n in colab.NEEDS["quickstart"]})
  monkeypatch.setattr(colab, "facts", lambda env=None: colab.Facts(installed=done))
  ran.clear()
  assert colab.setup("quickstart", root=ROOT, install=True) == colab.Runtime("cpu", None, "no GPU or TPU found")
  out = capsys.readouterr().out
  assert ran == [] and "everything this notebook needs is in place" in out and "jax devices: cpu" in out
