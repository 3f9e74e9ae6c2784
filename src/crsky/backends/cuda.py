"""CUDA backend: the scalar kernels of :mod:`crsky.kernels` compiled by
``numba.cuda.jit``, one GPU thread per particle.

Several realisations run in one launch (12288 particles do not fill a large GPU):
the grid is laid out so that every block holds particles of one realisation only,
and the block first copies that realisation's mode arrays into shared memory (for
``N <= SHARED_MODES_MAX``; larger arrays are read from global memory, where all
threads of a block read the same address and the loads are broadcast). One kernel
body (:func:`_make_trace_kernel`) serves both precisions; they differ in the step
function and the mode arrays:

``"float64"``
    :func:`crsky.kernels.push`: ``math.cos`` of float64 phases, the reference. Mode
    array: the ``(7, N)`` modes.
``"mixed"``
    :func:`crsky.kernels.push_turns`: per mode, the phase in turns
    ``beta_n / 2 pi + k_n / 2 pi . x`` in float64 (3 FMA), reduced exactly to
    ``[-1/2, 1/2]`` and rounded to float32 (:func:`crsky.kernels.quarter_turns`),
    the cosine as a float32 polynomial (:func:`crsky.kernels.neg_sin_turns`), the
    field summed in float32 over blocks of :data:`crsky.kernels.TURNS_MODE_BLOCK`
    modes and in float64 across blocks; positions, velocities and the rotation
    (:func:`crsky.kernels.rotate_poly`) stay float64. Mode arrays
    (:func:`mode_arrays_aos`, one row per mode, "array of structures"): ``k / 2 pi``,
    ``beta / 2 pi`` (float64) and ``A xi`` (float32, padded to 4), 48 bytes per mode,
    read with 16-byte loads.

    This differs in detail from the CPU backend's mixed path, which keeps float32
    phases at a per-particle reference point and adds float32 offsets: a GPU thread
    cannot keep N reference phases in registers (they would live in slow local
    memory), and the GPU's float64 units (half the float32 rate on an H100) make a
    float64 phase and reduction per mode affordable. The GPU scheme has no reference
    point and no refresh interval; its field error is at most 4.2e-7 of the rms
    field (rms 9e-8; tests/test_fast_kernels.py). The two mixed paths round
    differently, so their trajectories agree with each other, and with float64, only
    as chaotic orbits under a ~1e-7 perturbation do.

Runs in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) for the tests; the
``auto`` backend never picks the simulator.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from .. import kernels
from . import cuda_simulated
from .interface import Backend, check_precision, check_trace_args

__all__ = ["CudaBackend", "mode_arrays_aos", "THREADS_PER_BLOCK", "SHARED_MODES_MAX"]

#: Threads per block.
THREADS_PER_BLOCK = 128
#: Largest mode count kept in shared memory (float64: 7 x 512 x 8 B = 28 KiB per
#: block; mixed: 512 x (4 x 8 + 4 x 4) B = 24 KiB).
SHARED_MODES_MAX = 512


def mode_arrays_aos(modes):
    """The GPU mixed path's mode arrays from the float64 ``(7, N)`` modes, one row per
    mode (a thread loads a mode with three 16-byte loads).

    Returns
    -------
    turns_aos : numpy.ndarray, shape (N, 4), float64
        ``k / 2 pi`` (turns per ``L_c``) and ``beta / 2 pi`` (turns).
    amps_aos : numpy.ndarray, shape (N, 4), float32
        ``A xi`` (``B0``), column 3 zero.
    """
    modes = np.asarray(modes, dtype=np.float64)
    turns = np.empty((modes.shape[1], 4))
    turns[:, 0:3] = modes[0:3].T / (2 * np.pi)
    turns[:, 3] = modes[6] / (2 * np.pi)
    amps = np.zeros((modes.shape[1], 4), np.float32)
    amps[:, 0:3] = modes[3:6].T
    return turns, amps


@cuda.jit(device=True)
def _push_float64(x, y, z, vx, vy, vz, modes, unused, sign, dtau, rl):
    """:func:`crsky.kernels.push` with the two-array signature of the kernel body."""
    return kernels.push(x, y, z, vx, vy, vz, modes, sign, dtau, rl)


@cuda.jit(device=True)
def _field_float64(x, y, z, modes, unused):
    return kernels.field_at(x, y, z, modes)


@cuda.jit(device=True)
def _store_state(out_pos, out_vel, r, j, i, x, y, z, vx, vy, vz):
    """Record particle ``i`` of realisation ``r`` at snapshot ``j``."""
    out_pos[r, j, i, 0] = x
    out_pos[r, j, i, 1] = y
    out_pos[r, j, i, 2] = z
    out_vel[r, j, i, 0] = vx
    out_vel[r, j, i, 1] = vy
    out_vel[r, j, i, 2] = vz


def _host_mode_arrays(precision: str, modes: np.ndarray):
    """The two per-realisation mode arrays of the kernel body, shape (R, rows, cols):
    float64 ``(7, N)`` modes and a 1 x 1 placeholder, or :func:`mode_arrays_aos`."""
    if precision == "float64":
        return modes, np.zeros((len(modes), 1, 1), np.float32)
    pairs = [mode_arrays_aos(m) for m in modes]
    return (np.stack([t for t, _ in pairs]) if pairs else np.empty((0, modes.shape[2], 4)),
            np.stack([a for _, a in pairs]) if pairs else np.empty((0, modes.shape[2], 4), np.float32))


#: Per precision: the step device function (two mode arrays), the field device
#: function (for :meth:`CudaBackend.field_at_points`), the dtypes of the two arrays.
_PATHS = {
    "float64": (_push_float64, _field_float64, float64, float32),
    "mixed": (kernels.push_turns, kernels.field_at_turns, float64, float32),
}


def _make_trace_kernel(precision: str, shape_a: tuple[int, int], shape_b: tuple[int, int], shared: bool):
    """The trace kernel: stage the realisation's mode arrays (shapes ``shape_a``,
    ``shape_b`` per realisation, compile-time constants) in shared memory if
    ``shared``, then step each thread's particle through the snapshots. The shared
    copies are 16-byte aligned so that a mode's row is read with 16-byte loads
    (numba's simulator accepts no alignment: None there)."""
    push, _, dtype_a, dtype_b = _PATHS[precision]
    align = None if cuda_simulated() else 16
    rows_a, cols_a = shape_a
    rows_b, cols_b = shape_b

    @cuda.jit
    def kernel(positions, velocities, modes_a, modes_b, sign, dtau, rl, snapshot_steps, blocks_per_real,
               out_pos, out_vel):
        n = positions.shape[1]
        r = cuda.blockIdx.x // blocks_per_real
        i = (cuda.blockIdx.x % blocks_per_real) * cuda.blockDim.x + cuda.threadIdx.x
        if shared:
            local_a = cuda.shared.array(shape_a, dtype_a, alignment=align)
            local_b = cuda.shared.array(shape_b, dtype_b, alignment=align)
            for flat in range(cuda.threadIdx.x, rows_a * cols_a, cuda.blockDim.x):
                local_a[flat // cols_a, flat % cols_a] = modes_a[r, flat // cols_a, flat % cols_a]
            for flat in range(cuda.threadIdx.x, rows_b * cols_b, cuda.blockDim.x):
                local_b[flat // cols_b, flat % cols_b] = modes_b[r, flat // cols_b, flat % cols_b]
            cuda.syncthreads()
            ma = local_a
            mb = local_b
        else:
            ma = modes_a[r]
            mb = modes_b[r]
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
                    x, y, z, vx, vy, vz = push(x, y, z, vx, vy, vz, ma, mb, sign, dtau, rl)
                    step += 1
                _store_state(out_pos, out_vel, r, j, i, x, y, z, vx, vy, vz)

    return kernel


def _make_field_kernel(precision: str):
    """One thread per point: the field of ``precision``'s step at ``points``."""
    field = _PATHS[precision][1]

    @cuda.jit
    def kernel(modes_a, modes_b, points, out):
        i = cuda.grid(1)
        if i < points.shape[0]:
            bx, by, bz = field(points[i, 0], points[i, 1], points[i, 2], modes_a, modes_b)
            out[i, 0] = bx
            out[i, 1] = by
            out[i, 2] = bz

    return kernel


_compiled: dict[tuple, object] = {}


def trace_kernel(precision: str, n_modes: int):
    """The compiled trace kernel of ``precision`` for ``n_modes`` modes (one per mode
    count while the modes fit in shared memory, one for all counts beyond)."""
    shared = n_modes <= SHARED_MODES_MAX
    n_modes = max(n_modes, 1) if shared else 1  # shapes of the (unused) shared arrays if not shared
    shapes = {"float64": ((7, n_modes), (1, 1)), "mixed": ((n_modes, 4), (n_modes, 4))}[precision]
    key = ("trace", precision, shared, n_modes)
    if key not in _compiled:
        _compiled[key] = _make_trace_kernel(precision, *shapes, shared)
    return _compiled[key]


class CudaBackend(Backend):
    """The CUDA backend with its precision fixed (``"float64"`` or ``"mixed"``, module
    docstring). :attr:`last_kernel_seconds` is the last trace's kernel time (CUDA
    events; None in the simulator)."""

    name = "cuda"

    def __init__(self, precision: str = "float64"):
        self.precision = check_precision(precision)
        self.last_kernel_seconds = None

    def trace_many(self, x0, v0, modes, *, sign, dt, rl, snapshot_steps):
        x0, v0, modes, steps = check_trace_args(x0, v0, modes, snapshot_steps)
        n_real, n = x0.shape[:2]
        shape = (n_real, len(steps), n, 3)
        d_pos = cuda.device_array(shape, dtype=np.float64)
        d_vel = cuda.device_array(shape, dtype=np.float64)
        self.last_kernel_seconds = None
        if n_real == 0 or n == 0:
            return d_pos.copy_to_host(), d_vel.copy_to_host()
        blocks_per_real = math.ceil(n / THREADS_PER_BLOCK)
        kernel = trace_kernel(self.precision, modes.shape[2])
        modes_a, modes_b = _host_mode_arrays(self.precision, modes)
        args = (cuda.to_device(x0), cuda.to_device(v0), cuda.to_device(modes_a), cuda.to_device(modes_b),
                float(sign), float(dt), float(rl), cuda.to_device(steps), blocks_per_real, d_pos, d_vel)
        start, stop = cuda.event(), cuda.event()
        start.record()
        kernel[n_real * blocks_per_real, THREADS_PER_BLOCK](*args)
        stop.record()
        stop.synchronize()
        elapsed_ms = start.elapsed_time(stop)
        self.last_kernel_seconds = elapsed_ms / 1e3 if elapsed_ms >= 0 else None  # the simulator gives -1
        return d_pos.copy_to_host(), d_vel.copy_to_host()

    def field_at_points(self, modes, points):
        modes = np.ascontiguousarray(modes, dtype=np.float64)
        points = np.ascontiguousarray(points, dtype=np.float64)
        out = np.empty_like(points)
        if len(points) == 0:
            return out
        key = ("field", self.precision)
        if key not in _compiled:
            _compiled[key] = _make_field_kernel(self.precision)
        modes_a, modes_b = _host_mode_arrays(self.precision, modes[None])
        d_out = cuda.device_array(points.shape, dtype=np.float64)
        _compiled[key][math.ceil(len(points) / THREADS_PER_BLOCK), THREADS_PER_BLOCK](
            cuda.to_device(modes_a[0]), cuda.to_device(modes_b[0]), cuda.to_device(points), d_out)
        return d_out.copy_to_host()
