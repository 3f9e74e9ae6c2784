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
    (:func:`crsky.kernels.cos_turns`, double-angle form). :data:`LANES` particles are
    stepped together, one per float32 vector lane (16 per 512-bit instruction, 8 per
    AVX2 one): the field sum, the drifts, the refreshes and the rotation all vectorise
    over particles, and each lane sums its own field (no horizontal sums). Positions,
    velocities and the rotation stay float64. About 50x faster than float64; field
    error < 1e-6 (measured max ~5.6e-7, rms ~1.9e-7) of its rms value.
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
#: (see :mod:`crsky.kernels`). The loops vectorise over particles, so no sum needs
#: reassociating.
_CONTRACT = {"contract"}

#: The scalar kernels compiled with FMA contraction (the mixed path).
FAST_KERNELS = kernels.compile_kernels(
    numba.njit(cache=True, fastmath=_CONTRACT, error_model="numpy"), variant="contract"
)
_cos = FAST_KERNELS.cos_turns
_reference_phases = FAST_KERNELS.reference_phases
_reference_phase = FAST_KERNELS.reference_phase
_field_at_mixed = FAST_KERNELS.field_at_mixed
_rotate_poly = FAST_KERNELS.rotate_poly
_rotate_taylor = FAST_KERNELS.rotate_taylor

#: Particles advanced together by the mixed path, one per vector lane (four 512-bit
#: or eight 256-bit float32 vectors per mode; 32 and 128 measured slower).
LANES = 64
#: Modes per reference point and per float32 partial sum of the mixed path. The lane
#: sums are sequential, so longer blocks lose accuracy (field error max 5.2e-7 of the
#: rms field with 16, 6.7e-7 with 32, 1.2e-6 with 64: docs/performance.md).
MODE_BLOCK = 16
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


@numba.njit(cache=True, fastmath=_CONTRACT, error_model="numpy")
def _field_mixed(m32, phases, d, b, acc):
    """The total field at :data:`LANES` particles into ``b``.

    Parameters
    ----------
    m32 : numpy.ndarray, shape (6, N), float32
        ``k / 2 pi`` (turns per ``L_c``) and ``A xi`` (``B0``) of each mode
        (:func:`crsky.kernels.mixed_mode_arrays`).
    phases : numpy.ndarray, shape (N, LANES), float32
        Reference phases (turns) of each mode at each particle's reference point for
        that mode's block.
    d : numpy.ndarray, shape (n_blocks, 3, LANES), float32
        Offsets (``L_c``) of the particles from the reference point of each block of
        :data:`MODE_BLOCK` modes.
    b : numpy.ndarray, shape (3, LANES), float64
        Output: ``B / B0`` at the particles, the regular field ``z_hat`` included.
    acc : numpy.ndarray, shape (3, LANES), float32
        Scratch.

    The particles are the vector lanes: the loop over ``p`` is what LLVM vectorises
    (16 float32 lanes per 512-bit instruction, 8 per AVX2 one; ``LANES`` of them are a
    few independent instructions per mode, which hides the latency of the chain from
    phase to sum). The mode data are broadcast. No horizontal sums: each lane sums its
    own particle's field, in float32 over one block of ``MODE_BLOCK`` modes, then in
    float64 across blocks.
    """
    for p in range(LANES):
        b[0, p] = 0.0
        b[1, p] = 0.0
        b[2, p] = 1.0
    n_modes = m32.shape[1]
    for k in range(d.shape[0]):
        for p in range(LANES):
            acc[0, p] = float32(0.0)
            acc[1, p] = float32(0.0)
            acc[2, p] = float32(0.0)
        # Unsigned bounds: numba then drops its negative-index handling of n.
        for n in range(numba.uint64(k * MODE_BLOCK), numba.uint64(min((k + 1) * MODE_BLOCK, n_modes))):
            kx = m32[0, n]
            ky = m32[1, n]
            kz = m32[2, n]
            ax = m32[3, n]
            ay = m32[4, n]
            az = m32[5, n]
            for p in range(LANES):
                c = _cos(phases[n, p] + kx * d[k, 0, p] + ky * d[k, 1, p] + kz * d[k, 2, p])
                acc[0, p] += ax * c
                acc[1, p] += ay * c
                acc[2, p] += az * c
        for p in range(LANES):
            b[0, p] += acc[0, p]
            b[1, p] += acc[1, p]
            b[2, p] += acc[2, p]


@numba.njit(nogil=True, cache=True, fastmath=_CONTRACT, error_model="numpy")
def _trace_mixed(g0, g1, positions, velocities, modes_turns, modes32, sign, dtau, rl, snapshot_steps, every,
                 out_pos, out_vel):
    """Groups ``g0 <= g < g1`` of :data:`LANES` particles (see :func:`trace`).

    ``every[k]``: steps between refreshes of the reference point of mode block ``k``.
    Every per-particle loop below runs over the lanes, so LLVM vectorises the drifts,
    the refreshes, the offsets and the rotation as well as the field sum.
    """
    n = positions.shape[0]
    n_modes = modes_turns.shape[1]
    n_blocks = every.shape[0]
    half = 0.5 * dtau * rl
    scale = -sign * dtau
    for g in range(g0, g1):
        phases = np.empty((n_modes, LANES), np.float32)
        s = np.empty((6, LANES))  # x, y, z, vx, vy, vz
        old = np.empty((3, LANES))  # velocity before the rotation
        theta2 = np.empty(LANES)  # squared rotation angle
        ref = np.empty((n_blocks, 3, LANES))  # reference point of each block
        d = np.empty((n_blocks, 3, LANES), np.float32)
        b = np.empty((3, LANES))
        acc = np.empty((3, LANES), np.float32)
        since = every.copy()  # every block is refreshed at the first step
        for q in range(LANES):
            i = min(g * LANES + q, n - 1)  # the last group repeats its last particle
            for c in range(3):
                s[c, q] = positions[i, c]
                s[3 + c, q] = velocities[i, c]
        step = 0
        for j in range(snapshot_steps.shape[0]):
            while step < snapshot_steps[j]:
                for q in range(LANES):
                    s[0, q] += half * s[3, q]
                    s[1, q] += half * s[4, q]
                    s[2, q] += half * s[5, q]
                for k in range(n_blocks):
                    if since[k] >= every[k]:
                        # Move the block's reference points to the particles (where the
                        # field is evaluated this step); its phases there in float64.
                        for c in range(3):
                            for q in range(LANES):
                                ref[k, c, q] = s[c, q]
                        for m in range(k * MODE_BLOCK, min((k + 1) * MODE_BLOCK, n_modes)):
                            for q in range(LANES):
                                phases[m, q] = _reference_phase(s[0, q], s[1, q], s[2, q], modes_turns, m)
                        since[k] = 0
                    since[k] += 1
                    for c in range(3):
                        for q in range(LANES):
                            d[k, c, q] = float32(s[c, q] - ref[k, c, q])
                _field_mixed(modes32, phases, d, b, acc)
                for q in range(LANES):
                    old[0, q] = s[3, q]
                    old[1, q] = s[4, q]
                    old[2, q] = s[5, q]
                    theta2[q] = scale * scale * (b[0, q] * b[0, q] + b[1, q] * b[1, q] + b[2, q] * b[2, q])
                    vx, vy, vz = _rotate_taylor(s[3, q], s[4, q], s[5, q], b[0, q], b[1, q], b[2, q], scale)
                    s[3, q] = vx
                    s[4, q] = vy
                    s[5, q] = vz
                for q in range(LANES):
                    if theta2[q] > 1.0:  # rare (|b| dtau > 1): redone with math.cos
                        vx, vy, vz = _rotate_poly(old[0, q], old[1, q], old[2, q], b[0, q], b[1, q], b[2, q], scale)
                        s[3, q] = vx
                        s[4, q] = vy
                        s[5, q] = vz
                for q in range(LANES):
                    s[0, q] += half * s[3, q]
                    s[1, q] += half * s[4, q]
                    s[2, q] += half * s[5, q]
                step += 1
            for q in range(LANES):
                i = g * LANES + q
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
    large ``A_n k_n`` (``k`` near ``1 / L_c`` for the paper's spectrum) get less than
    the full budget (down to 0.15 of it for 256 modes in blocks of 16); the field
    error is then the same as with one reference point (``tests/test_fast_kernels.py``).
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
    the paper's spectrum (``k`` log-spaced over four decades), 256 modes and blocks of
    16 the intervals run from 4096 steps (the cap) for the lowest blocks to 9 for the
    highest (``Omega dt = 0.05``); a refresh of a block costs about half its field
    sum, so the refreshes cost < 3 % of a run.
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
        _trace_mixed, (len(positions) + LANES - 1) // LANES, positions, velocities,
        *kernels.mixed_mode_arrays(modes), float(sign), float(dtau), float(rl), steps, every, out_pos, out_vel,
    )
    return out_pos, out_vel
