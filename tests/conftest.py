"""One JAX persistent compilation cache per test session, shared by the xdist workers and every subprocess.

Many tests compile the same program: above all the jitted train-state init of a tiny config (random init of
every parameter: about 10 s of XLA:CPU compile even at d_model 32, and independent of T and the batch), and
the same tiny train step in several modules and CLI subprocesses. The cache serves each such program compiled
once to every later process of the session.

Sound: the cache key is the lowered program, the compile options, the XLA flags (so the memory-optimised
scheduler of the memory tests has its own entries), the devices and the jax/jaxlib version; a hit returns the
serialized executable, whose memory_analysis() and as_text() equal a fresh compile's (checked on the attention
memory rows). Compile TIMES read in a session are therefore not cold-compile times; no test asserts on them.
The folder is fresh for every session (so the suite's duration is that of a cold start) and removed at the end.
A size limit is set only so that jax takes its file lock around each read and write (two workers writing the
same entry never hand a torn file to a reader). Modules that kill their subprocesses (test_faults,
test_resume) and test_cli keep their own cache folders (their `env` fixtures).

The session also sets jax's own JAX_DISABLE_MOST_OPTIMIZATIONS=1 (inherited by the workers and every
subprocess; set it to 0 to test the optimised code generation): XLA:CPU compiles with LLVM at -O0 and without
its expensive passes. The tests compile hundreds of tiny programs and run each a few times, so this cuts the
suite by about a third (tests/test_models.py + tests/test_train.py, one worker: 205 s -> 140 s, AMD, 2026-12-04).
It changes only the machine code: the optimised HLO text and memory_analysis() (what the memory and cost tests
read) are identical to a default compile's (checked 2026-12-04 on blockwise and exact steps, 1-layer and 10M
models, T 256-2048). Float rounding can differ: test_step_scale.py::test_microbatches_equal_full_batch, whose bound was measured
with the default code, switches it off for its own compiles. Benchmarks and `make run` never set it."""

from __future__ import annotations

import os
import shutil
import tempfile

_OWNER = "CIRCUITS_TEST_JAX_CACHE_OWNER"


def pytest_configure(config):
  del config
  if os.environ.get(_OWNER):  # an xdist worker: the controller made the folder and set the variables
    return
  d = tempfile.mkdtemp(prefix="circuits_jax_cache_")
  os.environ[_OWNER] = str(os.getpid())
  os.environ["JAX_COMPILATION_CACHE_DIR"] = d
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(16 * 2**30)  # never reached; turns on jax's file lock
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # see the module docstring
  # cache every program, not only those that took >= 1 s (jax's default) to compile: at -O0 most compile faster
  # than that, and the subprocesses then compiled them again (test_cli + test_resume + test_distributed +
  # test_train, two workers: 163 s -> 136 s, AMD, 2026-12-04)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_unconfigure(config):
  del config
  if os.environ.get(_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ.get("JAX_COMPILATION_CACHE_DIR", ""), ignore_errors=True)


# The modules whose tests take longest (about 30-150 s each on 2 cores), slowest first: collected ahead of the
# rest so that xdist's load scheduling starts them early and ends on short tests (no worker idles while the
# other finishes a long one). Within a module the order is unchanged (module fixtures stay together).
SLOW_FIRST = ("test_bench.py", "test_moe_impls.py", "test_distributed.py", "test_notebooks.py", "test_resume.py",
              "test_step_scale.py", "test_device_check.py", "test_sharding.py", "test_faults.py", "test_study.py",
              "test_models.py", "test_attention_impls.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order
