"""CPU backend: the scalar kernels compiled with ``numba.njit``, parallel over
particles with ``prange`` (one particle per iteration, all threads of the process).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import kernels

__all__ = ["trace", "field_at_points", "KERNELS"]

#: The scalar kernels compiled for the CPU.
KERNELS = kernels.compile_kernels(numba.njit(cache=True))
_push = KERNELS.push
_field_at = KERNELS.field_at


@numba.njit(parallel=True, cache=True)
def _field_at_points(modes, points, out):
    for i in prange(points.shape[0]):
        bx, by, bz = _field_at(points[i, 0], points[i, 1], points[i, 2], modes)
        out[i, 0] = bx
        out[i, 1] = by
        out[i, 2] = bz


@numba.njit(parallel=True, cache=True)
def _trace(positions, velocities, modes, sign, dtau, rl, snapshot_steps, out_pos, out_vel):
    for i in prange(positions.shape[0]):
        x = positions[i, 0]
        y = positions[i, 1]
        z = positions[i, 2]
        vx = velocities[i, 0]
        vy = velocities[i, 1]
        vz = velocities[i, 2]
        step = 0
        for j in range(snapshot_steps.shape[0]):
            while step < snapshot_steps[j]:
                x, y, z, vx, vy, vz = _push(x, y, z, vx, vy, vz, modes, sign, dtau, rl)
                step += 1
            out_pos[j, i, 0] = x
            out_pos[j, i, 1] = y
            out_pos[j, i, 2] = z
            out_vel[j, i, 0] = vx
            out_vel[j, i, 1] = vy
            out_vel[j, i, 2] = vz


def field_at_points(modes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``B / B0`` at ``points`` (shape (n, 3), in ``L_c``); returns shape (n, 3)."""
    out = np.empty_like(points)
    _field_at_points(modes, points, out)
    return out


def trace(
    positions: np.ndarray,
    velocities: np.ndarray,
    modes: np.ndarray,
    sign: float,
    dtau: float,
    rl: float,
    snapshot_steps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate particles forward and record their state at given step counts.

    Parameters
    ----------
    positions, velocities : numpy.ndarray, shape (n, 3), float64
        Initial positions (``L_c``) and unit velocities (``c``).
    modes : numpy.ndarray, shape (7, N), float64
        Per-mode field array.
    sign : float
        Sign of the traced charge, +1 or -1.
    dtau : float
        Step ``Omega dt``.
    rl : float
        ``r_L / L_c``.
    snapshot_steps : numpy.ndarray, shape (m,), int64
        Strictly increasing step counts at which the state is recorded.

    Returns
    -------
    positions, velocities : numpy.ndarray, shape (m, n, 3)
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    velocities = np.ascontiguousarray(velocities, dtype=np.float64)
    modes = np.ascontiguousarray(modes, dtype=np.float64)
    steps = np.ascontiguousarray(snapshot_steps, dtype=np.int64)
    shape = (len(steps), len(positions), 3)
    out_pos = np.empty(shape)
    out_vel = np.empty(shape)
    _trace(positions, velocities, modes, float(sign), float(dtau), float(rl), steps, out_pos, out_vel)
    return out_pos, out_vel
