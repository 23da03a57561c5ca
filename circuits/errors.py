"""The project's error types: mistakes a user can fix, each message naming the problem and the fix.

    CircuitsError        base class; the CLIs (circuits.cli) print its message as one line and exit 2
    user_errors()        every class the CLIs treat that way (CircuitsError and the project's older types)

Subclasses keep their historical module and their historical builtin base too (CacheError is still a
ValueError, WorkdirError an OSError), so `except ValueError` in existing code keeps working.
"""

from __future__ import annotations

import sys


class CircuitsError(Exception):
  """A mistake in the input (config, paths, data, checkpoints) that the message explains how to fix."""


# Error types defined in modules that do not (yet) subclass CircuitsError: (module, class name). An error
# can only have been raised if its module was imported, so user_errors() looks them up in sys.modules and
# imports nothing itself.
_OTHER_USER_ERRORS = (
    ("circuits.models.config", "ConfigError"),
    ("circuits.train.checkpoint", "CheckpointCorruptError"),
    ("circuits.discovery.revisions", "RevisionError"),
    ("circuits.discovery.table", "TableError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception classes whose message is for the user (CircuitsError first), among imported modules."""
  found = [CircuitsError]
  for module, name in _OTHER_USER_ERRORS:
    cls = getattr(sys.modules.get(module), name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException) and not issubclass(cls, CircuitsError):
      found.append(cls)
  return tuple(found)


def is_user_error(e: BaseException) -> bool:
  return isinstance(e, user_errors())
