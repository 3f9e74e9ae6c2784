"""CPU backend: numba-compiled loops over particles on ``threads`` threads that take
chunks of particles as they finish (:func:`run_chunks`).

Two execution modes, one module each: :mod:`crsky.backends.cpu_float64` (the
reference, one particle at a time) and :mod:`crsky.backends.cpu_mixed` (mixed
precision, particles in the vector lanes). :class:`CpuBackend` is their common
interface (:class:`crsky.backends.Backend`).
"""

from __future__ import annotations

import concurrent.futures

import numba
import numpy as np

from . import cpu_float64, cpu_mixed
from .interface import Backend, check_precision, check_trace_args

__all__ = ["CpuBackend", "run_chunks", "CHUNKS_PER_THREAD"]

#: Work chunks per thread (:func:`run_chunks`).
CHUNKS_PER_THREAD = 16


def run_chunks(kernel, n_items: int, threads: int, *args) -> None:
    """Call ``kernel(i0, i1, *args)`` over ``0 <= i < n_items`` in chunks that
    ``threads`` threads take as they finish.

    ``kernel`` is compiled with ``nogil=True``, so the threads run in parallel. Numba's
    ``prange`` would give each thread one fixed share; on a shared machine one vCPU
    is often slower than the other and the fast thread then waits (measured in
    ``docs/performance.md``). Particles are independent, so results do not depend on
    the chunking. On an exception (Ctrl-C included) chunks not yet started are
    cancelled; the running ones finish their chunk.
    """
    threads = max(1, threads)
    size = max(1, -(-n_items // (CHUNKS_PER_THREAD * threads)))
    bounds = [(a, min(a + size, n_items)) for a in range(0, n_items, size)]
    if threads == 1 or len(bounds) <= 1:
        for a, b in bounds:
            kernel(a, b, *args)
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="crsky-cpu")
    try:
        for future in [pool.submit(kernel, a, b, *args) for a, b in bounds]:
            future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class CpuBackend(Backend):
    """The CPU backend with its options fixed.

    Parameters
    ----------
    precision : {"float64", "mixed"}
        Field evaluation: the float64 reference (:mod:`crsky.backends.cpu_float64`)
        or the mixed-precision fast path (:mod:`crsky.backends.cpu_mixed`).
    threads : int, optional
        Threads per trace; default ``numba.get_num_threads()`` at each call.
    refresh : int, optional
        Mixed path only: steps between reference-point refreshes, the same for every
        block of modes (default: each block's own,
        :func:`crsky.backends.cpu_mixed.refresh_intervals`). For studies of the
        refresh interval; results change at the rounding level.
    """

    name = "cpu"

    def __init__(self, precision: str = "float64", threads: int | None = None, refresh: int | None = None):
        self.precision = check_precision(precision)
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads = {threads}: must be >= 1")
        if refresh is not None and int(refresh) < 1:
            raise ValueError(f"refresh = {refresh}: must be >= 1")
        self.threads = None if threads is None else int(threads)
        self.refresh = None if refresh is None else int(refresh)
        self.last_kernel_seconds = None

    def _threads(self) -> int:
        return numba.get_num_threads() if self.threads is None else self.threads

    def trace_many(self, x0, v0, modes, *, sign, dt, rl, snapshot_steps):
        x0, v0, modes, steps = check_trace_args(x0, v0, modes, snapshot_steps)
        out_pos = np.empty((len(x0), len(steps), x0.shape[1], 3))
        out_vel = np.empty_like(out_pos)
        for r in range(len(x0)):
            self._trace_one(x0[r], v0[r], modes[r], float(sign), float(dt), float(rl), steps, out_pos[r], out_vel[r])
        return out_pos, out_vel

    def _trace_one(self, positions, velocities, modes, sign, dtau, rl, steps, out_pos, out_vel):
        n = len(positions)
        if self.precision == "float64":
            run_chunks(cpu_float64.trace_chunk, n, self._threads(), positions, velocities, modes, sign, dtau, rl,
                       steps, out_pos, out_vel)
            return
        if n == 0:
            return
        every = cpu_mixed.refresh_intervals(modes, dtau, rl)
        if self.refresh is not None:
            every[:] = self.refresh
        run_chunks(cpu_mixed.trace_groups, -(-n // cpu_mixed.LANES), self._threads(), positions, velocities,
                   *cpu_mixed.mode_arrays_soa(modes), sign, dtau, rl, steps, every, out_pos, out_vel)

    def field_at_points(self, modes, points):
        modes = np.ascontiguousarray(modes, dtype=np.float64)
        points = np.ascontiguousarray(points, dtype=np.float64)
        if self.precision == "mixed":
            return cpu_mixed.field_as_traced(modes, points)
        out = np.empty_like(points)
        cpu_float64.field_at_points(modes, points, out)
        return out

    def compiled_on_first_call(self) -> bool | None:
        """Whether the trace loop was compiled (True) or loaded from numba's on-disk
        cache (False) in this process; None before its first call."""
        loop = cpu_float64.trace_chunk if self.precision == "float64" else cpu_mixed.trace_groups
        stats = loop.stats
        return bool(stats.cache_misses) if stats.cache_hits or stats.cache_misses else None
