"""What a notebook installs on the runtime it finds (Colab CPU, GPU or TPU), and the devices it will use.

    from circuits import colab
    colab.setup("public_revisions", root=ROOT, install=IN_COLAB)   # install what is missing, print devices

`requirements.txt` is the development stack: the CPU build of jax, TensorFlow and seqio (token caches
only), a pinned CPU torch, test tools. A notebook needs a part of it, and on an accelerator the
accelerator build of the same jax:

  kind   jax installed as                                         chosen when
  cpu    jax==V jaxlib==V                                         nothing below
  gpu    jax[cuda13]==V jaxlib==V (driver supports CUDA >= 13)    `nvidia-smi` works, /proc/driver/nvidia,
         jax[cuda12]==V jaxlib==V (CUDA 12, or unknown)           or COLAB_GPU=1
  tpu    jax[tpu]==V jaxlib==V (pulls its pinned libtpu)          COLAB_TPU_ADDR / TPU_NAME /
                                                                  TPU_ACCELERATOR_TYPE, /dev/accel*, /dev/vfio/N

plus the pins of NEEDS[notebook] (never tensorflow, seqio, sentencepiece, transformers or the test tools).
torch only reads old `pytorch_model.bin` revision branches (circuits.convert.reader): a notebook that may
read them keeps the runtime's torch (>= 2.0); only where none is installed is the pinned CPU wheel added.
A distribution already installed at its pin is not reinstalled, so a second run installs nothing; a jax GPU
plugin other than the one chosen (e.g. the runtime's CUDA 12 plugin of an older jax) is uninstalled.

`facts()` gathers the runtime facts (environment, `nvidia-smi`, device files, installed versions) without
network; `classify(facts)` and `pip_commands(...)` are pure functions of them (tests/test_colab.py checks
every runtime kind). Only the standard library and circuits.errors are imported here: this module runs
before anything is installed.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from circuits.errors import CircuitsError

# What each notebook imports, directly or through the package (requirements.txt names).
CORE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "numpy", "ml_collections",
        "absl-py", "tqdm", "matplotlib", "pandas")
TRAINS = ("tensorboardX",)                # the trainer's TensorBoard writer (circuits.train.writers)
NEEDS = {
    "quickstart": CORE + TRAINS,
    "run_analysis": CORE + TRAINS,
    "public_revisions": CORE + ("huggingface_hub", "safetensors"),
}
# Notebooks that may read torch pickles (older Hub revision branches): the runtime's torch serves.
TORCH_READERS = frozenset({"public_revisions"})
TORCH_MIN = (2, 0)                       # torch.load(weights_only=True) as circuits.convert.reader calls it
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# The libtpu that jax[tpu]==0.10.2 requires (its METADATA: libtpu==0.0.42.*; tests/test_colab.py reads it).
LIBTPU = "0.0.42"
KINDS = ("cpu", "gpu", "tpu")
TPU_ENV = ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")


class SetupError(CircuitsError, RuntimeError):
  """The runtime cannot be set up as found; the message says what to do."""


def norm(name: str) -> str:
  """A distribution name in its canonical form (PEP 503): lower case, runs of -_. as one -."""
  return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
  """{canonical name: version} of the `name==version` lines of a requirements file's text."""
  pins = {}
  for line in text.splitlines():
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(#.*)?", line)
    if m:
      pins[norm(m.group(1))] = m.group(2)
  return pins


@dataclasses.dataclass(frozen=True)
class Facts:
  """What the runtime shows without network: the relevant environment variables, the output of
  `nvidia-smi` (None when it is absent or fails), whether /proc/driver/nvidia exists, TPU device files,
  and installed distributions {canonical name: version}."""
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)
  nvidia_smi: Optional[str] = None
  nvidia_proc: bool = False
  tpu_devices: tuple = ()
  installed: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Runtime:
  """kind: cpu | gpu | tpu; cuda: the CUDA major version the GPU driver supports (None: unknown or no
  GPU); why: the evidence, for the printout."""
  kind: str
  cuda: Optional[int] = None
  why: str = ""


def installed_versions() -> dict[str, str]:
  """{canonical name: version} of every distribution importable by this interpreter."""
  out = {}
  for d in md.distributions():
    name = d.metadata["Name"]
    if name:
      out.setdefault(norm(name), d.version)
  return out


def facts(env: Optional[Mapping[str, str]] = None) -> Facts:
  """The runtime facts of this machine (runs `nvidia-smi` if it is on PATH; no network)."""
  env = dict(os.environ if env is None else env)
  smi = None
  try:
    r = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30, env=env, check=False)
    smi = r.stdout if r.returncode == 0 else None
  except (OSError, subprocess.SubprocessError):
    pass
  tpu = tuple(sorted(glob.glob("/dev/accel[0-9]*") + [p for p in glob.glob("/dev/vfio/*")
                                                       if os.path.basename(p).isdigit()]))
  keys = ("COLAB_GPU",) + TPU_ENV
  return Facts(env={k: env[k] for k in keys if env.get(k)}, nvidia_smi=smi,
               nvidia_proc=os.path.exists("/proc/driver/nvidia"), tpu_devices=tpu,
               installed=installed_versions())


def classify(f: Facts) -> Runtime:
  """The runtime kind from its facts: a GPU if `nvidia-smi` works, /proc/driver/nvidia exists or COLAB_GPU
  is set (not "0"); else a TPU if a TPU environment variable or device file is present; else CPU. The CUDA
  major version is the "CUDA Version" of `nvidia-smi`'s header (the newest the driver supports)."""
  colab_gpu = f.env.get("COLAB_GPU", "") not in ("", "0")
  if f.nvidia_smi is not None or f.nvidia_proc or colab_gpu:
    m = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", f.nvidia_smi or "")
    name = re.search(r"\|\s+\d+\s+(NVIDIA [^|]*?|Tesla [^|]*?)\s{2,}", f.nvidia_smi or "")
    why = ("nvidia-smi" + (f": {name.group(1).strip()}" if name else "")
           + (f", driver supports CUDA {m.group(1)}.{m.group(2)}" if m else ", CUDA version not shown")
           if f.nvidia_smi is not None else "/proc/driver/nvidia" if f.nvidia_proc else "COLAB_GPU")
    return Runtime("gpu", int(m.group(1)) if m else None, why)
  tpu_env = [k for k in TPU_ENV if f.env.get(k)]
  if tpu_env or f.tpu_devices:
    return Runtime("tpu", None, ", ".join(tpu_env + list(f.tpu_devices[:2])))
  return Runtime("cpu", None, "no GPU or TPU found")


def jax_spec(rt: Runtime, version: str) -> str:
  """The pip requirement of the pinned jax build for the runtime: jax[cuda12|cuda13|tpu]==V or jax==V."""
  if rt.kind == "cpu":
    return f"jax=={version}"
  if rt.kind == "tpu":
    return f"jax[tpu]=={version}"
  if rt.kind != "gpu":
    raise SetupError(f"runtime kind {rt.kind!r}: expected one of {KINDS}")
  if rt.cuda is not None and rt.cuda < 12:
    raise SetupError(f"the GPU driver supports CUDA {rt.cuda} only; jax {version} needs a driver for CUDA 12 or "
                     "newer (NVIDIA driver >= 525): choose a newer GPU runtime, or run on CPU")
  return f"jax[cuda{13 if rt.cuda is not None and rt.cuda >= 13 else 12}]=={version}"


def _accelerator_dists(rt: Runtime, version: str) -> dict[str, str]:
  """Distributions the accelerator extra brings, {name: required version prefix}."""
  if rt.kind == "gpu":
    major = jax_spec(rt, version).split("[cuda")[1].split("]")[0]
    return {f"jax-cuda{major}-plugin": version, f"jax-cuda{major}-pjrt": version}
  if rt.kind == "tpu":
    return {"libtpu": LIBTPU}
  return {}


def _have(installed: Mapping[str, str], name: str, version: str) -> bool:
  v = installed.get(norm(name))
  return v is not None and (v == version or v.startswith(version + "."))


def _version_tuple(v: str) -> tuple:
  return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:2])


def pip_commands(rt: Runtime, pins: Mapping[str, str], notebook: str,
                 installed: Mapping[str, str]) -> list[list[str]]:
  """pip argument lists (each for `python -m pip ...`, in order) that give `notebook` what it needs on the
  runtime `rt`: the pinned jax in the runtime's build (jax_spec) and the pins of NEEDS[notebook]; an
  installed distribution at its pin is skipped; every other jax GPU plugin (another CUDA major, or any on a
  CPU or TPU runtime) is uninstalled first; torch only for TORCH_READERS and only when the runtime has none >= 2.0
  (then the pinned CPU wheel). Empty when everything is in place."""
  if notebook not in NEEDS:
    raise SetupError(f"notebook {notebook!r}: expected one of {sorted(NEEDS)}")
  pins = {norm(k): v for k, v in pins.items()}
  installed = {norm(k): v for k, v in installed.items()}
  missing = [n for n in NEEDS[notebook] + (("torch",) if notebook in TORCH_READERS else ())
             if norm(n) not in pins]
  if missing:
    raise SetupError(f"requirements.txt has no `name==version` pin for {missing}; pin them there")
  jv = pins["jax"]
  accel = _accelerator_dists(rt, jv)
  cmds = []
  other = [n for n in installed if re.fullmatch(r"jax-(cuda|rocm)\d+-(plugin|pjrt)", n) and n not in accel]
  if other:  # a second GPU plugin conflicts with the chosen one; a stale one (older jax) fails to load
    cmds.append(["uninstall", "-y", *sorted(other)])
  reqs = []
  if not (_have(installed, "jax", jv) and all(_have(installed, n, v) for n, v in accel.items())):
    reqs.append(jax_spec(rt, jv))
  for name in NEEDS[notebook]:
    if norm(name) != "jax" and not _have(installed, name, pins[norm(name)]):
      reqs.append(f"{name}=={pins[norm(name)]}")
  if reqs:
    cmds.append(["install", "-q", *reqs])
  if notebook in TORCH_READERS:
    have = installed.get("torch")
    if have is None or _version_tuple(have) < TORCH_MIN:
      cmds.append(["install", "-q", f"torch=={pins['torch']}", "--index-url", TORCH_CPU_INDEX])
  return cmds


def _modules_of(dists: Sequence[str]) -> set[str]:
  """Top-level module names provided by the distributions `dists` (canonical names)."""
  want = {norm(d) for d in dists}
  return {mod for mod, ds in md.packages_distributions().items() if any(norm(d) in want for d in ds)}


def stale_modules(cmds: Sequence[Sequence[str]], loaded: Mapping[str, object]) -> list[str]:
  """Modules already imported in this process (`loaded`, e.g. sys.modules) that `cmds` replaced on disk:
  the new versions are used only after a restart of the Python session."""
  dists = [re.split(r"[\[=<>]", a)[0] for c in cmds for a in c[1:] if not a.startswith("-")
           and not a.startswith("http")]
  return sorted(m for m in _modules_of(dists) if m in loaded)


def print_devices(rt: Runtime, *, subprocess_check: bool = False, strict: bool = False) -> str:
  """Prints (and returns) jax's default backend and devices. subprocess_check: ask a child interpreter, so
  this process never opens the accelerator (a TPU admits one process; the GPU memory stays free for a
  `python -m launch...` child). strict: a GPU/TPU runtime whose jax sees only CPU devices is an error
  (else a warning)."""
  code = "import jax; print(jax.default_backend(), jax.devices())"
  if subprocess_check:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if r.returncode:
      raise SetupError(f"jax does not start on this runtime:\n{r.stderr.strip()[-2000:]}")
    line = r.stdout.strip().splitlines()[-1]
  else:
    import jax  # pylint: disable=import-outside-toplevel
    line = f"{jax.default_backend()} {jax.devices()}"
  print("jax devices:", line)
  if rt.kind != "cpu" and line.split()[0] == "cpu":
    msg = (f"the runtime has a {rt.kind.upper()} ({rt.why}) but jax computes on its CPU: restart the session "
           "(Runtime > Restart session) and run the notebook again, or install the accelerator build: "
           f"pip install '{jax_spec(rt, md.version('jax'))}'")
    if strict:
      raise SetupError(msg)
    print("warning:", msg)
  return line


def setup(notebook: str, *, root, install: bool, subprocess_check: bool = False,
          env: Optional[Mapping[str, str]] = None) -> Runtime:
  """Detects the runtime, (install=True) pip-installs what `notebook` lacks (pip_commands over the pins of
  `<root>/requirements.txt`), and prints the devices jax will use. After an install that replaced a module
  this session had already imported, raises SetupError asking for a restart (the rerun installs nothing)."""
  f = facts(env)
  rt = classify(f)
  print(f"runtime: {rt.kind} ({rt.why})")
  if install:
    cmds = pip_commands(rt, read_pins((Path(root) / "requirements.txt").read_text()), notebook, f.installed)
    for c in cmds:
      print("pip", " ".join(c))
      subprocess.check_call([sys.executable, "-m", "pip", *c])
    importlib.invalidate_caches()
    if not cmds:
      print("installed: everything this notebook needs is in place")
    stale = stale_modules(cmds, sys.modules)
    if stale:
      raise SetupError(f"installed new versions of {stale}, which this session had already imported: restart "
                       "the session (Runtime > Restart session) and run the notebook again (nothing is "
                       "installed the second time)")
  print_devices(rt, subprocess_check=subprocess_check, strict=install)
  return rt
