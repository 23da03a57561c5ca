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
test_resume) and test_cli keep their own cache folders (their `env` fixtures)."""

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


def pytest_unconfigure(config):
  del config
  if os.environ.get(_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ.get("JAX_COMPILATION_CACHE_DIR", ""), ignore_errors=True)
