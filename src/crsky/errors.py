"""Exception types the command line maps to exit codes.

:class:`InputError` (a :class:`ValueError`) marks a problem with what the user gave:
a config value out of range, a malformed file, an unknown option. The command line
reports it in one line with exit code 2. :class:`NonFiniteError` is a computation
that produced NaN or infinity: exit code 1 with one line naming the realisation.
Any other exception is a failure of crsky itself: exit code 1, one line (the
traceback with ``crsky --debug``).
"""

from __future__ import annotations

__all__ = ["InputError", "NonFiniteError", "StorageError"]


class InputError(ValueError):
    """Bad user input; the message names the offending value and what is allowed."""


class NonFiniteError(RuntimeError):
    """A realisation produced a non-finite field, position or momentum; the message
    names the realisation, what is non-finite and the likely cause. Nothing of that
    realisation is written."""


class StorageError(Exception):
    """A write failed (disk full, read-only or unwritable, file too large).

    Not bad input and not a bug: the command line reports it in one line with exit
    code 1. The message names the path and, for a full disk, the space needed.
    """
