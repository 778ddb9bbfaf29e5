"""Errors a user can cause, and how they are reported.

Every kind derives from `UserError`; the CLI catches `USER_ERRORS` at its boundary and prints `error_line(e)`
(one line, exit code 2). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: reported in one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A user mistake in a config file or override (reported in one line, exit code 2)."""


class DataError(UserError, ValueError):
    """Data that cannot be used as configured (missing file, no usable sample, too many bad ones)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, incomplete or unsafe (reported in one line)."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, permission denied, ...); earlier checkpoints are untouched."""


class RunError(UserError, RuntimeError):
    """A run that cannot start or continue for a reason the user can fix (reported in one line)."""


# what the CLI reports in one line: the kinds above, and file-system errors (a missing or unreadable path)
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


def error_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message ("" when it has none), cut to `limit` characters: what one-line
    reports show of it."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return line[:limit] if limit is not None else line
