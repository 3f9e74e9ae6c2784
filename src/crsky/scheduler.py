"""Dask scheduler addresses: checked up front, connected with a timeout.

Kept apart from :mod:`crsky.ensemble` so that the command line can name
:class:`SchedulerError` without importing numba.
"""

from __future__ import annotations

import math
import socket
import time
from urllib.parse import urlsplit

from .errors import InputError

__all__ = ["CONNECT_TIMEOUT_S", "SchedulerError", "check_scheduler_address", "connect_scheduler"]

#: Default seconds to wait for a Dask scheduler to answer (``--connect-timeout``).
CONNECT_TIMEOUT_S = 30.0

_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


class SchedulerError(RuntimeError):
    """A well-formed Dask scheduler address that cannot be used (nothing listens,
    not a Dask scheduler, no answer within the timeout)."""


def check_scheduler_address(address) -> str:
    """Check the form of a Dask scheduler address; return it.

    Accepts ``[PROTOCOL://]HOST:PORT`` with PROTOCOL one of tcp, tls, ws, wss, ucx
    (default tcp), an IPv6 HOST in brackets, and ``inproc://`` addresses.

    Raises
    ------
    InputError
        Empty, malformed, or without a port in 1..65535.
    """
    text = "" if address is None else str(address).strip()
    shown = repr(address)
    if not text:
        raise InputError(f"--scheduler {shown}: empty; give the scheduler's address, e.g. tcp://host:8786")
    if text.startswith("inproc://"):
        return text
    scheme = text.split("://", 1)[0] if "://" in text else "tcp"
    if scheme not in _SCHEMES:
        raise InputError(f"--scheduler {shown}: unknown protocol {scheme!r}; allowed: {', '.join(_SCHEMES)}")
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InputError(f"--scheduler {shown}: not an address of the form [tcp://]HOST:PORT")
    if port is None or not 1 <= port <= 65535:
        raise InputError(f"--scheduler {shown}: needs a port in 1..65535, e.g. tcp://{parts.hostname}:8786")
    return text


def _probe(address: str, timeout: float) -> None:
    """Fail fast, in one line, where no Dask scheduler can answer at ``address``.

    A plain TCP connection shows a closed port at once (Dask alone retries until its
    timeout). On ``tcp://`` the scheduler speaks first: its handshake frame (an
    8-byte length, then a msgpack map naming ``compression``) must arrive within
    ``timeout``; an HTTP server or a silent port sends nothing. Dask's own
    ``timeout`` does not cover that read, so without this check such a port hangs.
    """
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    except socket.timeout:
        raise SchedulerError(f"Dask scheduler {address}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise SchedulerError(f"Dask scheduler {address}: cannot connect ({exc.strerror or exc})") from None
    with sock:
        if scheme != "tcp":  # the handshake is encrypted or framed otherwise
            return
        received = b""
        try:
            while b"compression" not in received and len(received) < 1 << 16:
                sock.settimeout(max(1e-3, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except (socket.timeout, OSError):
            pass
    if b"compression" not in received:
        what = "sent no Dask handshake" if not received else "answered, but not as a Dask scheduler"
        raise SchedulerError(
            f"Dask scheduler {address}: {what} within {timeout:g} s; is this the scheduler's port "
            "(default 8786), not the dashboard's?"
        )


def connect_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S):
    """A ``dask.distributed.Client`` connected to ``address`` within ``timeout`` seconds.

    A closed port fails at once; an open port that is not a Dask scheduler, or a
    scheduler that does not answer, fails after ``timeout`` seconds (:func:`_probe`,
    then ``Client(address, timeout=timeout)``).

    Raises
    ------
    InputError
        Malformed ``address`` or a ``timeout`` that is not a positive number.
    SchedulerError
        No Dask scheduler answered.
    """
    import logging

    address = check_scheduler_address(address)
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise InputError(f"--connect-timeout {timeout!r}: must be a positive number of seconds")
    if not address.startswith(("inproc://", "ucx://")):
        _probe(address, timeout)
    from dask.distributed import Client

    # distributed logs its own account of a failed connection; the exception says it in one line
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, protocol errors
        raise SchedulerError(
            f"Dask scheduler {address}: no Dask scheduler answered within {timeout:g} s ({type(exc).__name__})"
        ) from None
    finally:
        log.setLevel(level)
