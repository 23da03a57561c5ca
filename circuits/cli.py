"""The one boundary of every `python -m launch.<name>` binary: a mistake becomes one line and exit 2.

    from circuits import cli
    if __name__ == "__main__":
      cli.run(main)          # absl binaries (instead of app.run(main))
      cli.run_plain(main)    # binaries with their own argument parser (launch.memory_1b)

`run(main)` is absl's `app.run(main, flags_parser=parse_flags)` with `main` inside `boundary()`:

- parse_flags checks, before absl parses anything, that every `--config` file (a flag defined with
  ml_collections' DEFINE_config_file) exists and that every `--config.<field>` override names a field of
  it (with close matches from difflib); absl's own flag errors (a missing required flag, a bad value) are
  reported the same way.
- boundary() turns the project's errors (every one subclasses circuits.errors.CircuitsError: ConfigError,
  CheckpointCorruptError, RevisionError, CacheError, ...) and absl's app.UsageError into one line.

One line means: `error: <message>` on stderr, the message's own lines joined, no traceback and no chained
exception, exit status EXIT_USAGE (2). Any other exception is a bug and keeps its traceback (exit 1).
Unless --verbosity is given, absl logging is set to ERROR (Orbax logs every save and restore at INFO and
routine notices, such as a read-only manager's options, at WARNING) and asyncio's logger to CRITICAL.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import sys
from typing import Callable, NoReturn, Sequence

from circuits import errors

EXIT_USAGE = 2
_BINARY = {"on": False}  # set by run()/run_plain(): this process is a binary, fail() may silence its teardown


def one_line(message) -> str:
  """`message` on one line: its non-blank lines stripped and joined (after ':' by a space, else by '; ')."""
  out = ""
  for line in str(message).splitlines():
    line = line.strip()
    if not line:
      continue
    out = line if not out else out + (" " if out.endswith((":", ";", ",")) else "; ") + line
  return out or type(message).__name__


def fail(message) -> NoReturn:
  """Print `error: <message>` (one line) on stderr and exit with status 2.

  In a binary (run()/run_plain()), stderr is pointed at /dev/null first and the line written to a copy of
  it: Orbax's threads may still be logging the errors of a damaged checkpoint's pending async reads, and
  their output (now, or at interpreter exit) must not tear or follow the one line.
  """
  line = f"error: {one_line(message)}\n"
  if _BINARY["on"]:
    try:
      sys.stderr.flush()
      real = os.dup(2)
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 2)
      os.write(real, line.encode("utf-8", "replace"))
      sys.exit(EXIT_USAGE)
    except OSError:  # no usable fd 2: print below
      pass
  sys.stderr.write(line)
  sys.stderr.flush()
  sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def boundary():
  """Inside: the project's errors and absl's UsageError become one line on stderr and exit 2."""
  from absl import app
  try:
    yield
  except app.UsageError as e:
    fail(e)
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless it is one of the project's errors)
    if not errors.is_user_error(e):
      raise
    fail(e)


# ----- flag parsing -----

def _config_file_flags(flag_values) -> dict:
  """{name: flag} of the flags defined with ml_collections.config_flags.DEFINE_config_file."""
  from ml_collections.config_flags import config_flags
  return {name: flag_values[name] for name in flag_values
          if isinstance(flag_values[name].parser, config_flags.ConfigFileFlagParser) and name == flag_values[name].name}


def _args(argv: Sequence[str]) -> list[str]:
  args = list(argv[1:])
  return args[:args.index("--")] if "--" in args else args


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The last value given to --name (as --name=V, --name V, -name=V or -name V), or None."""
  args, value = _args(argv), None
  for i, a in enumerate(args):
    for prefix in ("--", "-"):
      if a == prefix + name and i + 1 < len(args):
        value = args[i + 1]
      elif a.startswith(prefix + name + "="):
        value = a[len(prefix + name) + 1:]
  return value


def _overrides(argv: Sequence[str], name: str) -> list[tuple[str, str]]:
  """(field path, argument) of every --name.<path>[=value] / --noname.<path> override."""
  out = []
  for a in _args(argv):
    flag = a.lstrip("-").split("=", 1)[0]
    if not a.startswith("-"):
      continue
    for head in (name + ".", "no" + name + "."):
      if flag.startswith(head):
        out.append((flag[len(head):], a))
        break
  return out


def _missing_file(name: str, path: str) -> str:
  folder = os.path.dirname(path) or "."
  msg = f"--{name}: config file {path!r} does not exist"
  if os.path.isdir(folder):
    files = sorted(os.path.join(os.path.dirname(path), f) for f in os.listdir(folder)
                   if f.endswith(".py") and not f.startswith("_"))
    close = difflib.get_close_matches(path, files, n=3, cutoff=0.6)
    if close:
      return msg + f"; did you mean {' or '.join(close)}?"
    if files:
      return msg + f"; the configs in {folder}/ are {', '.join(os.path.basename(f) for f in files)}"
  return msg + f" (no folder {folder!r} either); give a path relative to the repository root, e.g. configs/<name>.py"


def _load_config(value: str):
  """get_config(*args) of the config file `path[:args]` (as ml_collections loads it)."""
  path, *arg = value.split(":", 1)
  spec = importlib.util.spec_from_file_location("_circuits_cli_config_check", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def _unknown_field(name: str, value: str, config, field: str, arg: str) -> str | None:
  """The message for an override `arg` whose `field` is not in `config`, or None when it is."""
  node, done = config, []
  for key in field.split("."):
    if "[" in key or not hasattr(node, "keys"):  # indexing or a non-dict leaf: leave it to ml_collections
      return None
    if key not in node.keys():
      here = ".".join(done)
      keys = sorted(str(k) for k in node.keys())
      prefix = here + "." if here else ""
      close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
      hint = (f"did you mean {' or '.join(prefix + c for c in close)}?" if close else
              f"the fields of {here or 'the config'} are {', '.join(keys)}")
      return f"{arg}: the config {value!r} has no field {prefix + key!r}; {hint}"
    node, done = node[key], done + [key]
  return None


def check_config_flags(argv: Sequence[str], flag_values=None) -> None:
  """fail() on a missing --config file or an override naming no field of it (before absl parses)."""
  from absl import flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  for name in _config_file_flags(flag_values):
    value = _flag_value(argv, name)
    if value is None:
      continue  # absl reports a missing required flag
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
      fail(_missing_file(name, path))
    with boundary():  # get_config may raise the project's errors (e.g. an unknown family)
      config = _load_config(value)
    for field, arg in _overrides(argv, name):
      msg = _unknown_field(name, value, config, field, arg)
      if msg:
        fail(msg)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with the checks of check_config_flags; flag errors become one line, exit 2."""
  from absl import flags
  check_config_flags(argv)
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    fail(f"{e} (run with --helpshort for the flags)")


def _quiet_logging() -> None:
  import logging as std_logging

  from absl import flags, logging
  if "verbosity" not in flags.FLAGS or not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
    # Orbax's abandoned async reads of a damaged checkpoint: "Task exception was never retrieved", logged
    # when the task is collected, possibly while the error that explains them is on its way to fail()
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)


def _drop_orbax_coroutine_errors() -> None:
  """Unraisable errors of Orbax's abandoned read coroutines are not printed (all others are).

  When one array of a damaged checkpoint cannot be read, Orbax raises (CheckpointCorruptError names it) but
  leaves its other async reads pending; as they are collected, each prints "Exception ignored in:
  <coroutine object _read_array_index_and_device_put ...>" and a TensorStore traceback, from whichever thread
  collects it, around the one line of fail(); their TensorStore callbacks, arriving after Orbax closed its
  event loop, print "RuntimeError: Event loop is closed" tracebacks.
  """
  default = sys.unraisablehook

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return  # an abandoned Orbax read coroutine
    if unraisable.object is None and str(unraisable.exc_value) == "Event loop is closed":
      return  # a TensorStore callback of such a read, arriving after Orbax closed its event loop
    default(unraisable)

  sys.unraisablehook = hook


def run(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
  """app.run(main) behind the boundary (module docstring); never returns."""
  from absl import app

  _BINARY["on"] = True
  _drop_orbax_coroutine_errors()

  def bounded(args):
    _quiet_logging()
    with boundary():
      return main(args)

  app.run(bounded, argv=argv, flags_parser=parse_flags)


def run_plain(main: Callable[[], object]) -> NoReturn:
  """sys.exit(main()) behind the boundary, for binaries that parse their own arguments."""
  _BINARY["on"] = True
  _drop_orbax_coroutine_errors()
  with boundary():
    code = main()
  sys.exit(code)
