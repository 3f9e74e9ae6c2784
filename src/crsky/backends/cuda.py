"""CUDA backend: the scalar kernels of :mod:`crsky.kernels` compiled with
``numba.cuda.jit(device=True)``, one GPU thread per particle.

Several realisations run in one launch (12288 particles do not fill a large GPU):
the grid is laid out so that every block holds particles of one realisation only,
and the block first copies that realisation's ``(7, N)`` mode array into shared
memory (for ``N <= SHARED_MODES_MAX``; larger arrays are read from global memory,
where all threads of a block read the same address and the loads are broadcast).

Runs in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) for the tests; the
``auto`` backend never picks the simulator.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .. import kernels

__all__ = ["trace", "trace_many", "THREADS_PER_BLOCK", "SHARED_MODES_MAX"]

#: Threads per block.
THREADS_PER_BLOCK = 128
#: Largest mode count kept in shared memory (7 x 512 x 8 B = 28 KiB per block).
SHARED_MODES_MAX = 512

KERNELS = kernels.compile_kernels(cuda.jit(device=True))
_push = KERNELS.push

_compiled: dict[tuple[str, int], object] = {}


def _make_kernel(n_modes: int, shared: bool):
    """The trace kernel for ``n_modes`` modes (a compile-time constant for shared memory)."""

    @cuda.jit
    def kernel(positions, velocities, modes, sign, dtau, rl, snapshot_steps, blocks_per_real, out_pos, out_vel):
        n = positions.shape[1]
        r = cuda.blockIdx.x // blocks_per_real
        i = (cuda.blockIdx.x % blocks_per_real) * cuda.blockDim.x + cuda.threadIdx.x
        if shared:
            local = cuda.shared.array((7, n_modes), float64)
            for flat in range(cuda.threadIdx.x, 7 * n_modes, cuda.blockDim.x):
                local[flat // n_modes, flat % n_modes] = modes[r, flat // n_modes, flat % n_modes]
            cuda.syncthreads()
            m = local
        else:
            m = modes[r]
        if i < n:
            x = positions[r, i, 0]
            y = positions[r, i, 1]
            z = positions[r, i, 2]
            vx = velocities[r, i, 0]
            vy = velocities[r, i, 1]
            vz = velocities[r, i, 2]
            step = 0
            for j in range(snapshot_steps.shape[0]):
                while step < snapshot_steps[j]:
                    x, y, z, vx, vy, vz = _push(x, y, z, vx, vy, vz, m, sign, dtau, rl)
                    step += 1
                out_pos[r, j, i, 0] = x
                out_pos[r, j, i, 1] = y
                out_pos[r, j, i, 2] = z
                out_vel[r, j, i, 0] = vx
                out_vel[r, j, i, 1] = vy
                out_vel[r, j, i, 2] = vz

    return kernel


def _kernel_for(n_modes: int):
    shared = n_modes <= SHARED_MODES_MAX
    key = ("shared" if shared else "global", n_modes if shared else 0)
    if key not in _compiled:
        _compiled[key] = _make_kernel(max(n_modes, 1), shared)
    return _compiled[key]


def trace_many(positions, velocities, modes, sign, dtau, rl, snapshot_steps):
    """Trace several realisations in one launch.

    Parameters
    ----------
    positions, velocities : numpy.ndarray, shape (R, n, 3), float64
        Initial positions (``L_c``) and unit velocities, per realisation.
    modes : numpy.ndarray, shape (R, 7, N), float64
        Per-mode arrays, one per realisation.
    sign, dtau, rl, snapshot_steps
        As in :func:`crsky.backends.cpu.trace`.

    Returns
    -------
    positions, velocities : numpy.ndarray, shape (R, m, n, 3)
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    velocities = np.ascontiguousarray(velocities, dtype=np.float64)
    modes = np.ascontiguousarray(modes, dtype=np.float64)
    steps = np.ascontiguousarray(snapshot_steps, dtype=np.int64)
    n_real, n = positions.shape[:2]
    shape = (n_real, len(steps), n, 3)
    d_pos = cuda.device_array(shape, dtype=np.float64)
    d_vel = cuda.device_array(shape, dtype=np.float64)
    blocks_per_real = math.ceil(n / THREADS_PER_BLOCK)
    kernel = _kernel_for(modes.shape[2])
    kernel[n_real * blocks_per_real, THREADS_PER_BLOCK](
        cuda.to_device(positions), cuda.to_device(velocities), cuda.to_device(modes),
        float(sign), float(dtau), float(rl), cuda.to_device(steps), blocks_per_real, d_pos, d_vel,
    )
    return d_pos.copy_to_host(), d_vel.copy_to_host()


def trace(positions, velocities, modes, sign, dtau, rl, snapshot_steps):
    """One realisation; same signature and result as :func:`crsky.backends.cpu.trace`."""
    pos, vel = trace_many(
        np.asarray(positions)[None], np.asarray(velocities)[None], np.asarray(modes)[None],
        sign, dtau, rl, snapshot_steps,
    )
    return pos[0], vel[0]
