"""The project's error types: mistakes a user can fix, each message naming the problem and the fix.

    CircuitsError        base class; the CLIs (circuits.cli) print its message as one line and exit 2
    user_errors()        the classes the CLIs treat that way (CircuitsError)

Subclasses keep their historical module and their historical builtin base too (CacheError is still a
ValueError, WorkdirError an OSError), so `except ValueError` in existing code keeps working.
"""

from __future__ import annotations


class CircuitsError(Exception):
  """A mistake in the input (config, paths, data, checkpoints) that the message explains how to fix."""


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception classes whose message is for the user: every project error subclasses CircuitsError."""
  return (CircuitsError,)


def is_user_error(e: BaseException) -> bool:
  return isinstance(e, user_errors())
