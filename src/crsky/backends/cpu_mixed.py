"""CPU backend, ``precision="mixed"``: particles in the vector lanes.

float64 reference phases at a reference point per particle and block of
:data:`MODE_BLOCK` modes (:func:`crsky.kernels.reference_phase`), float32 phase
offsets and a float32 polynomial cosine (:func:`crsky.kernels.cos_turns`,
double-angle form). :data:`LANES` particles are stepped together, one per float32
vector lane (16 per 512-bit instruction, 8 per AVX2 one): the field sum, the drifts,
the refreshes and the rotation all vectorise over particles, and each lane sums its
own field (no horizontal sums). Positions, velocities and the rotation stay float64.
About 50x faster than float64; field error < 1e-6 (measured max ~5.6e-7, rms
~1.9e-7) of its rms value (tests/test_fast_kernels.py, docs/performance.md).

Mode arrays (:func:`mode_arrays_soa`, one row per component, "structure of arrays"):
``turns_soa`` float64 (4, N), ``k / 2 pi`` and ``beta / 2 pi``, for the reference
phases; ``modes32_soa`` float32 (6, N), ``k / 2 pi`` and ``A xi``, for the offsets.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import float32

from .. import kernels
from .jit import njit

__all__ = [
    "trace_groups",
    "field_lanes",
    "field_as_traced",
    "mode_arrays_soa",
    "refresh_interval",
    "refresh_intervals",
    "block_phase_budgets",
    "JIT_OPTIONS",
    "LANES",
    "MODE_BLOCK",
    "PHASE_BUDGET",
    "MAX_REFRESH_INTERVAL",
]

#: Largest ``|k| |x - x_ref|`` (rad) the mixed path lets a particle reach before it
#: moves its reference point. The field error hardly depends on it below ~50 rad
#: (measured: ``validation/mixed_accuracy.py``); larger values save refreshes.
PHASE_BUDGET = 8 * math.pi
#: Cap on the refresh interval (steps), for fields with tiny ``k_max r_L dtau``.
MAX_REFRESH_INTERVAL = 4096

#: Compiler flags of the mixed path: FMA contraction, never reassociation (see
#: :mod:`crsky.kernels`). The loops vectorise over particles, so no sum needs
#: reassociating. The scalar kernels it calls inherit these flags.
JIT_OPTIONS = {"fastmath": {"contract"}, "error_model": "numpy"}

#: Particles advanced together, one per vector lane (four 512-bit or eight 256-bit
#: float32 vectors per mode; 32 and 128 measured slower).
LANES = 64
#: Modes per reference point and per float32 partial sum. The lane sums are
#: sequential, so longer blocks lose accuracy (field error max 5.2e-7 of the rms field
#: with 16, 6.7e-7 with 32, 1.2e-6 with 64: docs/performance.md).
MODE_BLOCK = 16


def mode_arrays_soa(modes):
    """The mixed path's mode arrays from the float64 ``(7, N)`` modes.

    Returns
    -------
    turns_soa : numpy.ndarray, shape (4, N), float64
        ``k / 2 pi`` (turns per ``L_c``) and ``beta / 2 pi`` (turns), one row per
        component: the reference phases.
    modes32_soa : numpy.ndarray, shape (6, N), float32
        ``k / 2 pi`` and ``A xi`` (``B0``): the float32 offsets and the field sum.
    """
    modes = np.asarray(modes, dtype=np.float64)
    turns = np.empty((4, modes.shape[1]))
    turns[0:3] = modes[0:3] / (2 * np.pi)
    turns[3] = modes[6] / (2 * np.pi)
    modes32 = np.empty((6, modes.shape[1]), np.float32)
    modes32[0:3] = turns[0:3]
    modes32[3:6] = modes[3:6]
    return turns, modes32


@njit(**JIT_OPTIONS)
def field_lanes(m32, phases, d, b, acc):
    """The total field at :data:`LANES` particles into ``b``.

    Parameters
    ----------
    m32 : numpy.ndarray, shape (6, N), float32
        ``modes32_soa`` of :func:`mode_arrays_soa`.
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
                c = kernels.cos_turns(phases[n, p] + kx * d[k, 0, p] + ky * d[k, 1, p] + kz * d[k, 2, p])
                acc[0, p] += ax * c
                acc[1, p] += ay * c
                acc[2, p] += az * c
        for p in range(LANES):
            b[0, p] += acc[0, p]
            b[1, p] += acc[1, p]
            b[2, p] += acc[2, p]


@njit(nogil=True, **JIT_OPTIONS)
def trace_groups(g0, g1, positions, velocities, turns, m32, sign, dtau, rl, snapshot_steps, every,
                 out_pos, out_vel):
    """Groups ``g0 <= g < g1`` of :data:`LANES` particles: step each group until every
    snapshot step, record its state at snapshot ``j`` (``out_pos[j, i]``,
    ``out_vel[j, i]``).

    ``turns, m32`` from :func:`mode_arrays_soa`; ``every[k]``: steps between
    refreshes of the reference point of mode block ``k`` (:func:`refresh_intervals`).
    Every per-particle loop runs over the lanes, so LLVM vectorises the drifts, the
    refreshes, the offsets and the rotation as well as the field sum. The rotation is
    the branch-free Taylor form for every lane, then the rare angles beyond 1 rad
    redone from the old velocity with :func:`crsky.kernels.rotate_poly`. The last
    group repeats its last particle into the unused lanes (written nowhere).

    The lane loops are written out here rather than in helper functions: inlined
    helpers (even with ``inline="always"``) changed the compiled step loop (register
    moves, reference counting), and this loop is the hot path of every run.
    """
    n = positions.shape[0]
    n_blocks = every.shape[0]
    half = kernels.half_step(dtau, rl)
    scale = kernels.kick_angle(sign, dtau)
    for g in range(g0, g1):
        phases = np.empty((turns.shape[1], LANES), np.float32)
        s = np.empty((6, LANES))  # x, y, z, vx, vy, vz
        old = np.empty((3, LANES))  # velocity before the rotation
        theta2 = np.empty(LANES)  # squared rotation angle
        ref = np.empty((n_blocks, 3, LANES))  # reference point of each block
        d = np.empty((n_blocks, 3, LANES), np.float32)
        b = np.empty((3, LANES))
        acc = np.empty((3, LANES), np.float32)
        since = every.copy()  # every block is refreshed at the first step
        for q in range(LANES):
            i = min(g * LANES + q, n - 1)
            for c in range(3):
                s[c, q] = positions[i, c]
                s[3 + c, q] = velocities[i, c]
        step = 0
        for j in range(snapshot_steps.shape[0]):
            while step < snapshot_steps[j]:
                for q in range(LANES):
                    s[0, q], s[1, q], s[2, q] = kernels.drift(s[0, q], s[1, q], s[2, q], s[3, q], s[4, q], s[5, q],
                                                              half)
                for k in range(n_blocks):
                    if since[k] >= every[k]:
                        # Move the block's reference points to the particles (where the
                        # field is evaluated this step); its phases there in float64.
                        for c in range(3):
                            for q in range(LANES):
                                ref[k, c, q] = s[c, q]
                        for m in range(k * MODE_BLOCK, min((k + 1) * MODE_BLOCK, turns.shape[1])):
                            for q in range(LANES):
                                phases[m, q] = kernels.reference_phase(s[0, q], s[1, q], s[2, q], turns, m)
                        since[k] = 0
                    since[k] += 1
                    for c in range(3):
                        for q in range(LANES):
                            d[k, c, q] = float32(s[c, q] - ref[k, c, q])
                field_lanes(m32, phases, d, b, acc)
                for q in range(LANES):
                    old[0, q] = s[3, q]
                    old[1, q] = s[4, q]
                    old[2, q] = s[5, q]
                    theta2[q] = kernels.rotation_angle_squared(b[0, q], b[1, q], b[2, q], scale)
                    s[3, q], s[4, q], s[5, q] = kernels.rotate_taylor(s[3, q], s[4, q], s[5, q], b[0, q], b[1, q],
                                                                      b[2, q], scale)
                for q in range(LANES):
                    if theta2[q] > 1.0:
                        s[3, q], s[4, q], s[5, q] = kernels.rotate_poly(old[0, q], old[1, q], old[2, q], b[0, q],
                                                                        b[1, q], b[2, q], scale)
                for q in range(LANES):
                    s[0, q], s[1, q], s[2, q] = kernels.drift(s[0, q], s[1, q], s[2, q], s[3, q], s[4, q], s[5, q],
                                                              half)
                step += 1
            for q in range(LANES):
                i = g * LANES + q
                if i < n:
                    for c in range(3):
                        out_pos[j, i, c] = s[c, q]
                        out_vel[j, i, c] = s[3 + c, q]


@njit(**JIT_OPTIONS)
def _field_groups(turns, m32, points, block_refs, out):
    """:func:`field_as_traced` on prepared arrays (``block_refs`` (n_blocks, n, 3))."""
    n = points.shape[0]
    n_blocks = block_refs.shape[0]
    phases = np.empty((turns.shape[1], LANES), np.float32)
    d = np.empty((n_blocks, 3, LANES), np.float32)
    b = np.empty((3, LANES))
    acc = np.empty((3, LANES), np.float32)
    for g in range(0, n, LANES):
        for q in range(LANES):
            i = min(g + q, n - 1)
            for k in range(n_blocks):
                for m in range(k * MODE_BLOCK, min((k + 1) * MODE_BLOCK, turns.shape[1])):
                    phases[m, q] = kernels.reference_phase(block_refs[k, i, 0], block_refs[k, i, 1],
                                                           block_refs[k, i, 2], turns, m)
                for c in range(3):
                    d[k, c, q] = float32(points[i, c] - block_refs[k, i, c])
        field_lanes(m32, phases, d, b, acc)
        for q in range(min(LANES, n - g)):
            for c in range(3):
                out[g + q, c] = b[c, q]


def field_as_traced(modes, points, references=None):
    """The field as :func:`trace_groups` evaluates it: reference phases in float64 at
    ``references``, float32 offsets ``points - references``, the float32 lane sums
    of :func:`field_lanes`.

    Parameters
    ----------
    modes : numpy.ndarray, shape (7, N), float64
        The field realisation.
    points : numpy.ndarray, shape (n, 3)
        Positions (``L_c``).
    references : numpy.ndarray, shape (n, 3) or (n_blocks, n, 3), optional
        Reference points: one per point for all blocks of :data:`MODE_BLOCK` modes,
        or one per block and point (as the trace keeps them). Default: the points
        themselves (zero offsets).

    Returns
    -------
    numpy.ndarray, shape (n, 3)
        ``B / B0``, regular field included.
    """
    modes = np.ascontiguousarray(modes, dtype=np.float64)
    points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    n_blocks = -(-modes.shape[1] // MODE_BLOCK)
    refs = points if references is None else np.asarray(references, dtype=np.float64)
    if refs.shape == points.shape:
        refs = np.broadcast_to(refs, (n_blocks, *points.shape))
    if refs.shape != (n_blocks, *points.shape):
        raise ValueError(f"references has shape {refs.shape}; expected {points.shape} or "
                         f"{(n_blocks, *points.shape)}")
    out = np.empty_like(points)
    if len(points):
        _field_groups(*mode_arrays_soa(modes), points, np.ascontiguousarray(refs), out)
    return out


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
