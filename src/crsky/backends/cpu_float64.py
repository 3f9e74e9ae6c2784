"""CPU backend, ``precision="float64"``: the reference path, one particle at a time.

:func:`crsky.kernels.push` (``math.cos`` of float64 phases, Rodrigues rotation)
compiled with numba's default floating-point flags (no contraction, no
reassociation), so that the results are bitwise those of plain IEEE float64
arithmetic in the order the kernels write it.
"""

from __future__ import annotations

from numba import prange

from .. import kernels
from .jit import njit

__all__ = ["trace_chunk", "field_at_points"]


@njit(nogil=True)
def trace_chunk(i0, i1, positions, velocities, modes, sign, dtau, rl, snapshot_steps, out_pos, out_vel):
    """Particles ``i0 <= i < i1``: step each until every snapshot step, record its
    state (``out_pos[j, i]``, ``out_vel[j, i]``) at snapshot ``j``.

    Arguments as in :meth:`crsky.backends.cpu.CpuBackend.trace_many` for one
    realisation: ``positions, velocities`` (n, 3), ``modes`` (7, N),
    ``snapshot_steps`` (m,) int64, outputs (m, n, 3).
    """
    for i in range(i0, i1):
        x = positions[i, 0]
        y = positions[i, 1]
        z = positions[i, 2]
        vx = velocities[i, 0]
        vy = velocities[i, 1]
        vz = velocities[i, 2]
        step = 0
        for j in range(snapshot_steps.shape[0]):
            while step < snapshot_steps[j]:
                x, y, z, vx, vy, vz = kernels.push(x, y, z, vx, vy, vz, modes, sign, dtau, rl)
                step += 1
            out_pos[j, i, 0] = x
            out_pos[j, i, 1] = y
            out_pos[j, i, 2] = z
            out_vel[j, i, 0] = vx
            out_vel[j, i, 1] = vy
            out_vel[j, i, 2] = vz


@njit(parallel=True)
def field_at_points(modes, points, out):
    """``out[i] = kernels.field_at(points[i])`` for ``points`` (n, 3) in ``L_c``;
    ``modes`` (7, N); ``out`` (n, 3) in ``B0``."""
    for i in prange(points.shape[0]):
        bx, by, bz = kernels.field_at(points[i, 0], points[i, 1], points[i, 2], modes)
        out[i, 0] = bx
        out[i, 1] = by
        out[i, 2] = bz
