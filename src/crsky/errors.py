"""The one exception type for bad user input.

:class:`InputError` (a :class:`ValueError`) marks a problem with what the user gave:
a config value out of range, a malformed file, an unknown option. The command line
reports it in one line with exit code 2 (SPEC section 7); any other exception is a
failure of crsky itself and is reported with its traceback and exit code 1.
"""

from __future__ import annotations

__all__ = ["InputError", "StorageError"]


class InputError(ValueError):
    """Bad user input; the message names the offending value and what is allowed."""


class StorageError(Exception):
    """A write failed (disk full, read-only or unwritable, file too large).

    Not bad input and not a bug: the command line reports it in one line with exit
    code 1. The message names the path and, for a full disk, the space needed.
    """
