"""``numba.njit`` for the CPU loops, with an on-disk cache that notices kernel edits.

numba's cache keys a compiled function by the source of its own file only. The CPU
loops of :mod:`crsky.backends` compile the scalar physics of :mod:`crsky.kernels`
into themselves, so an edit there would leave a stale loop in the cache. :func:`njit`
caches with a locator whose source stamp also holds a hash of every kernel source
file (:data:`KERNEL_SOURCES`): any edit to one of them makes every cached loop
stale, and the next call recompiles, with no manual step. (A user who lists their own
locators in ``NUMBA_CACHE_LOCATOR_CLASSES`` overrides these, and the kernel hash with
them.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
from numba.core import caching

__all__ = ["njit", "KERNEL_SOURCES", "kernel_sources_digest"]

_PACKAGE = Path(__file__).resolve().parents[1]

#: The files whose code the CPU loops compile into themselves.
KERNEL_SOURCES = (
    _PACKAGE / "kernels.py",
    _PACKAGE / "backends" / "jit.py",
    _PACKAGE / "backends" / "cpu.py",
    _PACKAGE / "backends" / "cpu_float64.py",
    _PACKAGE / "backends" / "cpu_mixed.py",
)


def kernel_sources_digest(paths=KERNEL_SOURCES) -> str:
    """SHA-256 of the contents of ``paths`` (in order), hex."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


_DIGEST = kernel_sources_digest()


class _KernelSourcesStamp:
    """Locator mixin: the source stamp is numba's own (the function's file) plus the
    hash of all kernel sources."""

    def get_source_stamp(self):
        return super().get_source_stamp(), _DIGEST


class _UserProvidedLocator(_KernelSourcesStamp, caching.UserProvidedCacheLocator):
    pass


class _InTreeLocator(_KernelSourcesStamp, caching.InTreeCacheLocator):
    pass


class _UserWideLocator(_KernelSourcesStamp, caching.UserWideCacheLocator):
    pass


class _KernelCacheImpl(caching.CompileResultCacheImpl):
    # numba's own order of places: NUMBA_CACHE_DIR, __pycache__ beside the source, the
    # user-wide cache directory.
    _locator_classes = [_UserProvidedLocator, _InTreeLocator, _UserWideLocator]


class _KernelFunctionCache(caching.FunctionCache):
    _impl_class = _KernelCacheImpl


def njit(**options):
    """``numba.njit(**options)`` with the on-disk cache of this module (``cache`` is
    not an option: it is always on)."""

    def wrap(function):
        dispatcher = numba.njit(**options)(function)
        # What Dispatcher.enable_caching() does, with the cache class that knows the
        # kernel sources.
        dispatcher._cache = _KernelFunctionCache(function)
        return dispatcher

    return wrap
