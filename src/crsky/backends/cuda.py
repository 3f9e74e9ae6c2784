"""CUDA backend: the scalar kernels of :mod:`crsky.kernels` compiled with
``numba.cuda.jit(device=True)``, one GPU thread per particle.

Several realisations run in one launch (12288 particles do not fill a large GPU):
the grid is laid out so that every block holds particles of one realisation only,
and the block first copies that realisation's mode arrays into shared memory (for
``N <= SHARED_MODES_MAX``; larger arrays are read from global memory, where all
threads of a block read the same address and the loads are broadcast).

Two precisions, selected like the CPU backend's (``[integration] precision``):

``"float64"`` (default)
    :func:`crsky.kernels.push`: ``math.cos`` of float64 phases, the reference.
``"mixed"``
    :func:`crsky.kernels.push_turns`: per mode, the phase in turns
    ``beta_n / 2 pi + k_n / 2 pi . x`` in float64 (3 FMA), reduced exactly to
    ``[-1/2, 1/2]`` and rounded to float32 (:func:`crsky.kernels.quarter_turns`),
    the cosine as a float32 polynomial (:func:`crsky.kernels.neg_sin_turns`), the
    field summed in float32 over blocks of
    :data:`crsky.kernels.TURNS_MODE_BLOCK` modes and in float64 across blocks;
    positions, velocities and the rotation (:func:`crsky.kernels.rotate_poly`)
    stay float64. The mode arrays are ``k / 2 pi``, ``beta / 2 pi`` (float64) and
    ``A xi`` (float32, padded to 4), 48 bytes per mode in shared memory.

    This differs in detail from the CPU backend's mixed path, which keeps float32
    phases at a per-particle reference point and adds float32 offsets: a GPU thread
    cannot keep N reference phases in registers (they would live in slow local
    memory), and the GPU's float64 units (half the float32 rate on an H100) make a
    float64 phase and reduction per mode affordable. The GPU scheme has no reference
    point and no refresh interval; its field error is at most 4.2e-7 of the rms
    field (rms 9e-8), measured with the CPU-compiled kernel at 2e5 points out to
    ``|x| = 1e3 L_c``, isotropic and composite fields (CPU mixed path: 5.7e-7); see
    ``docs/performance.md``, "CUDA backend: mixed path". The two mixed paths round
    differently, so their trajectories agree with each other, and with float64, only
    as chaotic orbits under a ~1e-7 perturbation do. Not yet timed on a GPU.

Runs in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) for the tests; the
``auto`` backend never picks the simulator.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from .. import kernels
from . import cuda_simulated

__all__ = ["trace", "trace_many", "THREADS_PER_BLOCK", "SHARED_MODES_MAX", "PRECISIONS", "MIXED_PAIRS"]

#: Accepted values of ``precision`` (the same names as the CPU backend's).
PRECISIONS = ("float64", "mixed")

#: Threads per block.
THREADS_PER_BLOCK = 128
#: Mixed path: two particles per thread (``True``) share each mode's three 16-byte
#: shared-memory loads and the loop overhead (predicted ~12 % fewer instructions per
#: mode evaluation) but need 82 instead of 64 registers, so fewer threads are resident
#: and a launch of 2^18 particles fills 1.5 instead of 1.9 waves of resident blocks
#: on an H100 (``docs/performance.md``, "CUDA backend: mixed path"). One per thread
#: until a GPU measurement decides (``benchmarks/cuda_mixed.py``).
MIXED_PAIRS = False
#: Largest mode count kept in shared memory (float64: 7 x 512 x 8 B = 28 KiB per
#: block; mixed: 512 x (4 x 8 + 4 x 4) B = 24 KiB).
SHARED_MODES_MAX = 512

KERNELS = kernels.compile_kernels(cuda.jit(device=True))
_push = KERNELS.push
_push_turns = KERNELS.push_turns
_push_turns2 = KERNELS.push_turns2

@cuda.jit(device=True)
def _load_state(positions, velocities, r, i):
    """Position (``L_c``) and velocity (``c``) of particle ``i`` of realisation ``r``."""
    return (positions[r, i, 0], positions[r, i, 1], positions[r, i, 2],
            velocities[r, i, 0], velocities[r, i, 1], velocities[r, i, 2])


@cuda.jit(device=True)
def _store_state(out_pos, out_vel, r, j, i, x, y, z, vx, vy, vz):
    """Record particle ``i`` of realisation ``r`` at snapshot ``j``."""
    out_pos[r, j, i, 0] = x
    out_pos[r, j, i, 1] = y
    out_pos[r, j, i, 2] = z
    out_vel[r, j, i, 0] = vx
    out_vel[r, j, i, 1] = vy
    out_vel[r, j, i, 2] = vz


_compiled: dict[tuple[str, str, int], object] = {}


def _make_kernel(n_modes: int, shared: bool):
    """The float64 trace kernel for ``n_modes`` modes (a compile-time constant for
    shared memory)."""

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
            x, y, z, vx, vy, vz = _load_state(positions, velocities, r, i)
            step = 0
            for j in range(snapshot_steps.shape[0]):
                while step < snapshot_steps[j]:
                    x, y, z, vx, vy, vz = _push(x, y, z, vx, vy, vz, m, sign, dtau, rl)
                    step += 1
                _store_state(out_pos, out_vel, r, j, i, x, y, z, vx, vy, vz)

    return kernel


def _make_kernel_mixed(n_modes: int, shared: bool, pairs: bool):
    """The mixed-precision trace kernel for ``n_modes`` modes: one particle per thread
    (:func:`crsky.kernels.push_turns`) or, with ``pairs``, two (particles ``2q`` and
    ``2q + 1`` in thread ``q``; :func:`crsky.kernels.push_turns2`). ``turns``
    (R, N, 4) float64 and ``amps`` (R, N, 4) float32 as from
    :func:`crsky.kernels.turns_mode_arrays`. The shared copies are 16-byte aligned so
    that a mode's row is read with 16-byte loads (numba's simulator accepts no
    alignment: None there)."""
    align = None if cuda_simulated() else 16
    per_thread = 2 if pairs else 1

    @cuda.jit
    def kernel(positions, velocities, turns, amps, sign, dtau, rl, snapshot_steps, blocks_per_real,
               out_pos, out_vel):
        n = positions.shape[1]
        r = cuda.blockIdx.x // blocks_per_real
        i = per_thread * ((cuda.blockIdx.x % blocks_per_real) * cuda.blockDim.x + cuda.threadIdx.x)
        if shared:
            local_turns = cuda.shared.array((n_modes, 4), float64, alignment=align)
            local_amps = cuda.shared.array((n_modes, 4), float32, alignment=align)
            for flat in range(cuda.threadIdx.x, 4 * n_modes, cuda.blockDim.x):
                local_turns[flat // 4, flat % 4] = turns[r, flat // 4, flat % 4]
                local_amps[flat // 4, flat % 4] = amps[r, flat // 4, flat % 4]
            cuda.syncthreads()
            mt = local_turns
            ma = local_amps
        else:
            mt = turns[r]
            ma = amps[r]
        if i < n and not pairs:
            x, y, z, vx, vy, vz = _load_state(positions, velocities, r, i)
            step = 0
            for j in range(snapshot_steps.shape[0]):
                while step < snapshot_steps[j]:
                    x, y, z, vx, vy, vz = _push_turns(x, y, z, vx, vy, vz, mt, ma, sign, dtau, rl)
                    step += 1
                _store_state(out_pos, out_vel, r, j, i, x, y, z, vx, vy, vz)
        elif i < n:
            k = i + 1 if i + 1 < n else i  # an odd last particle is traced twice, written once
            x0, y0, z0, vx0, vy0, vz0 = _load_state(positions, velocities, r, i)
            x1, y1, z1, vx1, vy1, vz1 = _load_state(positions, velocities, r, k)
            step = 0
            for j in range(snapshot_steps.shape[0]):
                while step < snapshot_steps[j]:
                    x0, y0, z0, vx0, vy0, vz0, x1, y1, z1, vx1, vy1, vz1 = _push_turns2(
                        x0, y0, z0, vx0, vy0, vz0, x1, y1, z1, vx1, vy1, vz1, mt, ma, sign, dtau, rl)
                    step += 1
                _store_state(out_pos, out_vel, r, j, i, x0, y0, z0, vx0, vy0, vz0)
                if k != i:
                    _store_state(out_pos, out_vel, r, j, k, x1, y1, z1, vx1, vy1, vz1)

    return kernel


def _kernel_for(n_modes: int, precision: str = "float64", pairs: bool = False):
    shared = n_modes <= SHARED_MODES_MAX
    pairs = bool(pairs) and precision == "mixed"
    key = (precision, pairs, "shared" if shared else "global", n_modes if shared else 0)
    if key not in _compiled:
        if precision == "float64":
            _compiled[key] = _make_kernel(max(n_modes, 1), shared)
        else:
            _compiled[key] = _make_kernel_mixed(max(n_modes, 1), shared, pairs)
    return _compiled[key]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r}: must be one of {', '.join(PRECISIONS)}")


def trace_many(positions, velocities, modes, sign, dtau, rl, snapshot_steps, precision="float64", pairs=None,
               timings=None):
    """Trace several realisations in one launch.

    Parameters
    ----------
    positions, velocities : numpy.ndarray, shape (R, n, 3), float64
        Initial positions (``L_c``) and unit velocities (``c``), per realisation.
    modes : numpy.ndarray, shape (R, 7, N), float64
        Per-mode arrays, one per realisation.
    sign, dtau, rl, snapshot_steps
        As in :func:`crsky.backends.cpu.trace`.
    precision : {"float64", "mixed"}
        Field evaluation: the float64 reference, or the mixed path (module
        docstring: float64 phase and reduction per mode, float32 cosine and sums;
        field error < 1e-6, measured at most 4.2e-7, of the rms field). Not the
        CPU's mixed algorithm: results agree with it statistically, not bitwise.
    pairs : bool, optional
        Mixed path only: two particles per GPU thread, sharing each mode's loads
        (default :data:`MIXED_PAIRS`). The results are bitwise the same either way;
        only the speed differs.
    timings : dict, optional
        If given, ``timings["kernel_s"]`` is set to the kernel's own run time in
        seconds (CUDA events; without the host-device copies), ``None`` in the
        simulator.

    Returns
    -------
    positions, velocities : numpy.ndarray, shape (R, m, n, 3)
        ``L_c`` and ``c`` at each snapshot.
    """
    _check_precision(precision)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    velocities = np.ascontiguousarray(velocities, dtype=np.float64)
    modes = np.ascontiguousarray(modes, dtype=np.float64)
    steps = np.ascontiguousarray(snapshot_steps, dtype=np.int64)
    n_real, n = positions.shape[:2]
    shape = (n_real, len(steps), n, 3)
    d_pos = cuda.device_array(shape, dtype=np.float64)
    d_vel = cuda.device_array(shape, dtype=np.float64)
    if n_real == 0 or n == 0:
        return d_pos.copy_to_host(), d_vel.copy_to_host()
    pairs = MIXED_PAIRS if pairs is None else bool(pairs)
    pairs = pairs and precision == "mixed"
    blocks_per_real = math.ceil(math.ceil(n / 2 if pairs else n) / THREADS_PER_BLOCK)
    kernel = _kernel_for(modes.shape[2], precision, pairs)
    if precision == "float64":
        mode_args = (cuda.to_device(modes),)
    else:
        turns = np.empty((n_real, modes.shape[2], 4))
        amps = np.empty((n_real, modes.shape[2], 4), np.float32)
        for k in range(n_real):
            turns[k], amps[k] = kernels.turns_mode_arrays(modes[k])
        mode_args = (cuda.to_device(turns), cuda.to_device(amps))
    args = (cuda.to_device(positions), cuda.to_device(velocities), *mode_args,
            float(sign), float(dtau), float(rl), cuda.to_device(steps), blocks_per_real, d_pos, d_vel)
    start, stop = cuda.event(), cuda.event()
    start.record()
    kernel[n_real * blocks_per_real, THREADS_PER_BLOCK](*args)
    stop.record()
    stop.synchronize()
    if timings is not None:
        elapsed_ms = start.elapsed_time(stop)
        timings["kernel_s"] = elapsed_ms / 1e3 if elapsed_ms >= 0 else None  # the simulator gives -1
    return d_pos.copy_to_host(), d_vel.copy_to_host()


def trace(positions, velocities, modes, sign, dtau, rl, snapshot_steps, precision="float64", pairs=None,
          timings=None):
    """One realisation; same signature, units and result shapes as
    :func:`crsky.backends.cpu.trace` (``precision``, ``pairs`` and ``timings`` as in
    :func:`trace_many`; the CPU's ``refresh`` has no meaning here)."""
    pos, vel = trace_many(
        np.asarray(positions)[None], np.asarray(velocities)[None], np.asarray(modes)[None],
        sign, dtau, rl, snapshot_steps, precision=precision, pairs=pairs, timings=timings,
    )
    return pos[0], vel[0]
