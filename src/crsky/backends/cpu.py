"""CPU backend: the scalar kernels compiled with ``numba.njit``, parallel over
particles on ``numba.get_num_threads()`` threads that take chunks of particles as
they finish (:func:`_run_dynamic`).

Two precisions (``docs/performance.md``):

``"float64"`` (default)
    The reference path: :func:`crsky.kernels.push` with ``math.cos`` on float64
    phases, one particle at a time. Bitwise what it always was.
``"mixed"``
    float64 reference phases at a reference point per particle and block of
    :data:`MODE_BLOCK` modes, float32 phase offsets and a float32 polynomial cosine
    (:func:`crsky.kernels.cos_turns`, double-angle form) vectorised over modes (8
    modes per AVX2 instruction, 16 with 512-bit vectors), four particles per inner
    loop; positions, velocities and the rotation stay float64. About 30-35x faster;
    field error < 1e-6 (measured max ~5.7e-7, rms ~1.8e-7) of its rms value.
"""

from __future__ import annotations

import concurrent.futures
import math

import numba
import numpy as np
from numba import float32, prange

from .. import kernels

__all__ = [
    "trace",
    "field_at_points",
    "refresh_interval",
    "KERNELS",
    "FAST_KERNELS",
    "PRECISIONS",
    "PHASE_BUDGET",
]

#: Accepted values of ``precision``.
PRECISIONS = ("float64", "mixed")

#: Largest ``|k| |x - x_ref|`` (rad) the mixed path lets a particle reach before it
#: moves its reference point. The field error hardly depends on it below ~50 rad
#: (measured: ``benchmarks/mixed_accuracy.py``); larger values save refreshes.
PHASE_BUDGET = 8 * math.pi
#: Cap on the refresh interval (steps), for fields with tiny ``k_max r_L dtau``.
MAX_REFRESH_INTERVAL = 4096

#: The scalar kernels compiled for the CPU, plain (the float64 path).
KERNELS = kernels.compile_kernels(numba.njit(cache=True))
_push = KERNELS.push
_field_at = KERNELS.field_at

#: Floating-point flags of the mixed path: FMA contraction, never reassociation
#: (see :mod:`crsky.kernels`); the mode loop adds reassociation of its own sums only.
_CONTRACT = {"contract"}
_REDUCE = {"contract", "reassoc", "nsz"}

#: The scalar kernels compiled with FMA contraction (the mixed path).
FAST_KERNELS = kernels.compile_kernels(
    numba.njit(cache=True, fastmath=_CONTRACT, error_model="numpy"), variant="contract"
)
_cos = FAST_KERNELS.cos_turns
_reference_phases = FAST_KERNELS.reference_phases
_reference_phases_range = FAST_KERNELS.reference_phases_range
_field_at_mixed = FAST_KERNELS.field_at_mixed
_rotate_poly = FAST_KERNELS.rotate_poly

#: Particles advanced together by the mixed path (one :func:`_field_mixed4` call).
GROUP = 4
#: Modes per float32 partial sum of the mixed path; longer sums lose accuracy (the
#: field error at 1024 modes grows from 5e-7 to 9e-7 of the rms field without blocks).
MODE_BLOCK = 128
#: Work chunks per thread (:func:`_run_dynamic`).
CHUNKS_PER_THREAD = 16


def _run_dynamic(kernel, n_items: int, *args) -> None:
    """Call ``kernel(i0, i1, *args)`` over ``0 <= i < n_items`` in chunks that
    ``numba.get_num_threads()`` threads take as they finish.

    ``kernel`` is compiled with ``nogil=True``, so the threads run in parallel. Numba's
    ``prange`` would give each thread one fixed share; on a shared machine one vCPU
    is often slower than the other and the fast thread then waits (measured in
    ``docs/performance.md``). Particles are independent, so results do not depend on
    the chunking. On an exception (Ctrl-C included) chunks not yet started are
    cancelled; the running ones finish their chunk.
    """
    threads = max(1, numba.get_num_threads())
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


@numba.njit(parallel=True, cache=True)
def _field_at_points(modes, points, out):
    for i in prange(points.shape[0]):
        bx, by, bz = _field_at(points[i, 0], points[i, 1], points[i, 2], modes)
        out[i, 0] = bx
        out[i, 1] = by
        out[i, 2] = bz


@numba.njit(nogil=True, cache=True)
def _trace(i0, i1, positions, velocities, modes, sign, dtau, rl, snapshot_steps, out_pos, out_vel):
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
                x, y, z, vx, vy, vz = _push(x, y, z, vx, vy, vz, modes, sign, dtau, rl)
                step += 1
            out_pos[j, i, 0] = x
            out_pos[j, i, 1] = y
            out_pos[j, i, 2] = z
            out_vel[j, i, 0] = vx
            out_vel[j, i, 1] = vy
            out_vel[j, i, 2] = vz


# --------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True, fastmath=_CONTRACT, error_model="numpy")
def _field_at_points_mixed(modes_turns, modes32, points, references, out):
    for i in prange(points.shape[0]):
        phases = np.empty(modes_turns.shape[1], np.float32)
        _reference_phases(references[i, 0], references[i, 1], references[i, 2], modes_turns, phases)
        bx, by, bz = _field_at_mixed(
            float32(points[i, 0] - references[i, 0]),
            float32(points[i, 1] - references[i, 1]),
            float32(points[i, 2] - references[i, 2]),
            modes32, phases,
        )
        out[i, 0] = bx
        out[i, 1] = by
        out[i, 2] = bz


@numba.njit(cache=True, fastmath=_REDUCE, error_model="numpy")
def _field_block4(m32, phases, d, b, n0, n1):
    """Add the field of modes ``n0 <= n < n1`` at four particles to ``b``.

    ``m32`` the float32 (6, N) ``k / 2 pi, A xi`` array, ``phases`` (4, N) float32
    reference phases (turns), ``d`` (3, 4) float32 offsets from the reference points,
    ``b`` (3, 4) float64 (x, y, z by particle). ``n0`` and ``n1``
    are unsigned so that numba drops its negative-index handling and LLVM vectorises.

    The mode loop is what LLVM vectorises: 8 (AVX2) modes per instruction, four
    independent particles per iteration to hide the latency of the per-step work.
    The sums are float32 in the vector lanes (each lane adds at most
    ``MODE_BLOCK / 8`` terms), then float64 in ``b``.
    """
    dx0 = d[0, 0]
    dy0 = d[1, 0]
    dz0 = d[2, 0]
    dx1 = d[0, 1]
    dy1 = d[1, 1]
    dz1 = d[2, 1]
    dx2 = d[0, 2]
    dy2 = d[1, 2]
    dz2 = d[2, 2]
    dx3 = d[0, 3]
    dy3 = d[1, 3]
    dz3 = d[2, 3]
    bx0 = by0 = bz0 = float32(0.0)
    bx1 = by1 = bz1 = float32(0.0)
    bx2 = by2 = bz2 = float32(0.0)
    bx3 = by3 = bz3 = float32(0.0)
    for n in range(n0, n1):
        kx = m32[0, n]
        ky = m32[1, n]
        kz = m32[2, n]
        ax = m32[3, n]
        ay = m32[4, n]
        az = m32[5, n]
        c0 = _cos(kx * dx0 + ky * dy0 + kz * dz0 + phases[0, n])
        c1 = _cos(kx * dx1 + ky * dy1 + kz * dz1 + phases[1, n])
        c2 = _cos(kx * dx2 + ky * dy2 + kz * dz2 + phases[2, n])
        c3 = _cos(kx * dx3 + ky * dy3 + kz * dz3 + phases[3, n])
        bx0 += ax * c0
        by0 += ay * c0
        bz0 += az * c0
        bx1 += ax * c1
        by1 += ay * c1
        bz1 += az * c1
        bx2 += ax * c2
        by2 += ay * c2
        bz2 += az * c2
        bx3 += ax * c3
        by3 += ay * c3
        bz3 += az * c3
    b[0, 0] += bx0
    b[1, 0] += by0
    b[2, 0] += bz0
    b[0, 1] += bx1
    b[1, 1] += by1
    b[2, 1] += bz1
    b[0, 2] += bx2
    b[1, 2] += by2
    b[2, 2] += bz2
    b[0, 3] += bx3
    b[1, 3] += by3
    b[2, 3] += bz3


@numba.njit(cache=True, fastmath=_CONTRACT, error_model="numpy")
def _field_mixed4(m32, phases, d, b):
    """The total field at four particles into ``b`` (3, 4): :func:`_field_block4`
    over blocks of :data:`MODE_BLOCK` modes, the block sums added in float64.

    ``d`` (n_blocks, 3, 4) float32: the offsets of the four particles from the
    reference point of each block (each block has its own, :func:`refresh_intervals`).
    """
    for q in range(4):
        b[0, q] = 0.0
        b[1, q] = 0.0
        b[2, q] = 1.0
    n = m32.shape[1]
    for k in range(d.shape[0]):
        n0 = k * MODE_BLOCK
        _field_block4(m32, phases, d[k], b, numba.uint64(n0), numba.uint64(min(n0 + MODE_BLOCK, n)))


@numba.njit(nogil=True, cache=True, fastmath=_CONTRACT, error_model="numpy")
def _trace_mixed(g0, g1, positions, velocities, modes_turns, modes32, sign, dtau, rl, snapshot_steps, every,
                 out_pos, out_vel):
    """Groups ``g0 <= g < g1`` of :data:`GROUP` particles (see :func:`trace`).

    ``every[k]``: steps between refreshes of the reference point of mode block ``k``.
    """
    n = positions.shape[0]
    n_modes = modes_turns.shape[1]
    n_blocks = every.shape[0]
    half = 0.5 * dtau * rl
    scale = -sign * dtau
    for g in range(g0, g1):
        phases = np.empty((GROUP, n_modes), np.float32)
        s = np.empty((6, GROUP))  # x, y, z, vx, vy, vz
        ref = np.empty((n_blocks, 3, GROUP))  # reference point of each block
        d = np.empty((n_blocks, 3, GROUP), np.float32)
        b = np.empty((3, GROUP))
        since = every.copy()  # every block is refreshed at the first step
        for q in range(GROUP):
            i = min(g * GROUP + q, n - 1)  # the last group repeats its last particle
            for c in range(3):
                s[c, q] = positions[i, c]
                s[3 + c, q] = velocities[i, c]
        step = 0
        for j in range(snapshot_steps.shape[0]):
            while step < snapshot_steps[j]:
                for q in range(GROUP):
                    for c in range(3):
                        s[c, q] += half * s[3 + c, q]
                for k in range(n_blocks):
                    if since[k] >= every[k]:
                        # Move the block's reference points to the particles (where the
                        # field is evaluated this step); its phases there in float64.
                        n0 = numba.uint64(k * MODE_BLOCK)
                        n1 = numba.uint64(min((k + 1) * MODE_BLOCK, n_modes))
                        for q in range(GROUP):
                            for c in range(3):
                                ref[k, c, q] = s[c, q]
                            _reference_phases_range(s[0, q], s[1, q], s[2, q], modes_turns, phases[q], n0, n1)
                        since[k] = 0
                    since[k] += 1
                    for q in range(GROUP):
                        for c in range(3):
                            d[k, c, q] = float32(s[c, q] - ref[k, c, q])
                _field_mixed4(modes32, phases, d, b)
                for q in range(GROUP):
                    vx, vy, vz = _rotate_poly(s[3, q], s[4, q], s[5, q], b[0, q], b[1, q], b[2, q], scale)
                    s[3, q] = vx
                    s[4, q] = vy
                    s[5, q] = vz
                    for c in range(3):
                        s[c, q] += half * s[3 + c, q]
                step += 1
            for q in range(GROUP):
                i = g * GROUP + q
                if i < n:
                    for c in range(3):
                        out_pos[j, i, c] = s[c, q]
                        out_vel[j, i, c] = s[3 + c, q]


def refresh_interval(modes: np.ndarray, dtau: float, rl: float, phase_budget: float = PHASE_BUDGET) -> int:
    """Steps between reference-point refreshes of the mixed path.

    A particle moves at most ``r_L dtau`` (in ``L_c``) per step, so ``m`` steps after a
    refresh its phase offsets are at most ``m k_max r_L dtau``; the interval
    ``1 + floor(phase_budget / (k_max r_L dtau))`` keeps them below ``phase_budget``.
    """
    kmax = float(np.sqrt((np.asarray(modes)[0:3] ** 2).sum(axis=0)).max(initial=0.0))
    per_step = kmax * abs(rl * dtau)
    if per_step * MAX_REFRESH_INTERVAL <= phase_budget:
        return MAX_REFRESH_INTERVAL
    return 1 + int(phase_budget / per_step * (1 + 1e-12))  # exact ratios (pi / pi) count


def block_phase_budgets(modes: np.ndarray, phase_budget: float = PHASE_BUDGET) -> np.ndarray:
    """Phase budget (rad) of each block of :data:`MODE_BLOCK` modes, at most
    ``phase_budget``.

    The float32 phase of mode ``n`` at offset ``d`` from its reference point is off by
    rounding of order ``eps |k_n . d|``, so its field error scales as
    ``A_n k_n |d|``. With one reference point for all modes (offsets up to
    ``phase_budget / k_max``, the path validated against float64) the worst mode
    error is ``max_n(A_n k_n) phase_budget / k_max``. Each block gets the largest
    budget whose worst mode error is no larger: ``phase_budget * min(1,
    [max_n(A_n k_n) / k_max] / [max_block(A_n k_n) / k_max(block)])``. Blocks of
    small ``k`` and large amplitude (the inertial range's low end) get less than the
    full budget (0.21 of it for the paper's 256 modes); the field error is then the
    same as with one reference point (``tests/test_fast_kernels.py``).
    """
    modes = np.asarray(modes)
    k = np.sqrt((modes[0:3] ** 2).sum(axis=0))
    ak = np.sqrt((modes[3:6] ** 2).sum(axis=0)) * k
    if k.size == 0 or k.max() == 0.0:
        return np.full(-(-k.size // MODE_BLOCK), float(phase_budget))
    worst = ak.max() / k.max()
    budgets = []
    for a in range(0, k.size, MODE_BLOCK):
        kb, akb = k[a:a + MODE_BLOCK], ak[a:a + MODE_BLOCK]
        block = akb.max() / kb.max() if kb.max() > 0.0 else 0.0
        budgets.append(phase_budget * (min(1.0, worst / block) if block > 0.0 else 1.0))
    return np.array(budgets)


def refresh_intervals(modes: np.ndarray, dtau: float, rl: float, phase_budget: float = PHASE_BUDGET) -> np.ndarray:
    """Steps between refreshes of each block of :data:`MODE_BLOCK` modes (int64 array):
    :func:`refresh_interval` of the block's modes with the block's budget
    (:func:`block_phase_budgets`).

    Each block of the mixed path keeps its own reference point, so a block of small
    ``k`` refreshes its phases less often than the block with the largest ``k``. With
    the paper's spectrum (``k`` log-spaced over four decades) and 256 modes the low
    block needs a refresh every 175 steps, the high one every 9 (``Omega dt = 0.05``),
    which halves the cost of the refreshes (a refresh costs about one step of the
    field sum).
    """
    modes = np.asarray(modes)
    budgets = block_phase_budgets(modes, phase_budget)
    return np.array(
        [refresh_interval(modes[:, a:a + MODE_BLOCK], dtau, rl, budget)
         for a, budget in zip(range(0, modes.shape[1], MODE_BLOCK), budgets)],
        dtype=np.int64,
    )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r}: must be one of {', '.join(PRECISIONS)}")


def field_at_points(
    modes: np.ndarray, points: np.ndarray, precision: str = "float64", references: np.ndarray | None = None
) -> np.ndarray:
    """``B / B0`` at ``points`` (shape (n, 3), in ``L_c``); returns shape (n, 3).

    With ``precision="mixed"`` the field is evaluated as the mixed path of
    :func:`trace` does: reference phases at ``references`` (shape (n, 3); default the
    points themselves), float32 offsets ``points - references``.
    """
    _check_precision(precision)
    points = np.ascontiguousarray(points, dtype=np.float64)
    out = np.empty_like(points)
    if precision == "float64":
        _field_at_points(modes, points, out)
        return out
    modes = np.ascontiguousarray(modes, dtype=np.float64)
    refs = points if references is None else np.ascontiguousarray(references, dtype=np.float64)
    if refs.shape != points.shape:
        raise ValueError(f"references has shape {refs.shape}, points {points.shape}")
    _field_at_points_mixed(*kernels.mixed_mode_arrays(modes), points, refs, out)
    return out


def trace(
    positions: np.ndarray,
    velocities: np.ndarray,
    modes: np.ndarray,
    sign: float,
    dtau: float,
    rl: float,
    snapshot_steps: np.ndarray,
    precision: str = "float64",
    refresh: int | None = None,
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
    precision : {"float64", "mixed"}
        Field evaluation: float64 reference, or the mixed-precision fast path
        (module docstring; ``docs/performance.md``).
    refresh : int, optional
        Mixed path only: steps between reference-point refreshes, the same for every
        block of modes (default: each block's own, :func:`refresh_intervals`).

    Returns
    -------
    positions, velocities : numpy.ndarray, shape (m, n, 3)
    """
    _check_precision(precision)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    velocities = np.ascontiguousarray(velocities, dtype=np.float64)
    modes = np.ascontiguousarray(modes, dtype=np.float64)
    steps = np.ascontiguousarray(snapshot_steps, dtype=np.int64)
    shape = (len(steps), len(positions), 3)
    out_pos = np.empty(shape)
    out_vel = np.empty(shape)
    if precision == "float64":
        _run_dynamic(_trace, len(positions), positions, velocities, modes, float(sign), float(dtau), float(rl),
                     steps, out_pos, out_vel)
        return out_pos, out_vel
    if len(positions) == 0:
        return out_pos, out_vel
    every = refresh_intervals(modes, dtau, rl)
    if refresh is not None:
        if int(refresh) < 1:
            raise ValueError(f"refresh = {refresh}: must be >= 1")
        every[:] = int(refresh)
    _run_dynamic(
        _trace_mixed, (len(positions) + GROUP - 1) // GROUP, positions, velocities,
        *kernels.mixed_mode_arrays(modes), float(sign), float(dtau), float(rl), steps, every, out_pos, out_vel,
    )
    return out_pos, out_vel
