"""Scalar kernels: the field at a point and one integration step (no I/O, no arrays
allocated).

These are plain Python functions written in the subset that both ``numba.njit`` and
``numba.cuda.jit(device=True)`` compile. :func:`compile_kernels` compiles the whole
set for one target, rebinding the calls between kernels to that target's versions
(the fbpic pattern: write the pusher once, compile it twice).

Code units (SPEC section 1): positions in ``L_c``; velocities in ``c`` (|v| = 1);
field in ``B0``; the time step is ``Omega * dt`` (dimensionless).

Integrator. ``dx/dt = v``, ``dv/dt = s Omega v x b(x)`` with ``s`` the sign of the
traced charge. In the variable ``tau = Omega t`` this is ``dx/dtau = r_L v`` and
``dv/dtau = s v x b``. One step is drift-kick-drift (leapfrog):

1. ``x <- x + (r_L dtau / 2) v``
2. rotate ``v`` exactly about ``b(x)`` by the angle ``-s |b| dtau`` (Rodrigues'
   formula), the exact solution of ``dv/dtau = s v x b`` for ``b`` frozen;
3. ``x <- x + (r_L dtau / 2) v``.

The scheme is symmetric (time-reversible), second order, uses one field evaluation
per step and keeps ``|v|`` constant to rounding. In a uniform field the velocity is
exact at every step and the orbit stays within ``r_L dtau^2 / 6`` of the exact helix
for all times (no secular phase error, unlike the Boris ``2 atan`` rotation).

Mixed precision (``precision="mixed"`` of the CPU backend; ``docs/performance.md``).
The cosine per mode per step is the whole cost. The float64 path evaluates
``cos(k . x + beta)`` with ``math.cos`` on phases of up to ~10^6 rad. The mixed path
splits the phase exactly where precision is needed:

- phases are kept in turns (units of 2 pi), so that range reduction is subtracting the
  nearest integer, which is exact;
- at a per-particle *reference point* ``x_ref`` the reference phases
  ``phi_n = (k_n . x_ref + beta_n) / 2 pi mod 1`` are computed in float64 and stored,
  reduced to ``[-1/2, 1/2]``, as float32 (:func:`reference_phases`);
- at the particle's position ``x`` the phase is ``k_n . (x - x_ref) / 2 pi + phi_n``,
  evaluated in float32 from the float32 offset ``x - x_ref`` and float32 ``k_n / 2 pi``,
  and its cosine is a float32 polynomial (:func:`cos_turns`, in the double-angle form
  ``2 cos^2(pi x) - 1``: 15 operations per mode in all) that LLVM vectorises over
  particles (the CPU backend steps 64 particles together, 8 per AVX2 instruction);
- the reference point is moved to the particle every few steps, so that
  ``|k| |x - x_ref|`` stays below a few tens of rad (the float32 phase then carries
  absolute errors ~1e-8 turns whatever ``|x|`` is);
- the velocity, position and the rotation stay float64.

The field is accurate to < 6e-7 (rms ~2e-7) of its rms value (measured;
``tests/test_fast_kernels.py``, ``benchmarks/mixed_accuracy.py``).

Mixed precision on a GPU (``precision="mixed"`` of the CUDA backend). A GPU thread
cannot keep N reference phases in registers, so :func:`field_at_turns` has no
per-particle state: per mode, the phase in turns is computed in float64 (3 FMA), reduced
exactly and rounded once to float32 (:func:`quarter_turns`), and its cosine is a float32
odd polynomial (:func:`neg_sin_turns`); the sums are float32 over blocks of
:data:`TURNS_MODE_BLOCK` modes, then float64. Field error at most ~4e-7 of the rms
value (``tests/test_fast_kernels.py``; ``docs/performance.md``, "CUDA backend: mixed
path"). :func:`field_at_turns2` and :func:`push_turns2` do the same for two particles
per thread, sharing each mode's loads.

Compilation: the mixed-precision kernels need floating-point contraction (FMA) for
speed and must NOT be compiled with reassociation (``fastmath=True``):
:func:`cos_turns` and :func:`reduce_turns` round with the ``(y + 1.5 * 2^23) - 1.5 * 2^23``
idiom, which reassociation would fold away. The CPU backend compiles them with
``fastmath={"contract"}``; CUDA's default (contraction, no reassociation) is fine.

numba's on-disk cache of the CPU drivers (``crsky/backends/cpu.py``), into which these
kernels are inlined, does not notice edits to this file: after changing a kernel,
touch ``cpu.py`` or delete its ``__pycache__/*.nb*`` files.
"""

from __future__ import annotations

import math
import types
from types import SimpleNamespace

import numpy as np
from numba import float32, float64, uint64

__all__ = [
    "field_at",
    "rotate",
    "push",
    "neg_sin_turns",
    "cos_turns",
    "reduce_turns",
    "reference_phase",
    "reference_phases",
    "field_at_mixed",
    "sincos_taylor",
    "rotate_taylor",
    "rotate_poly",
    "push_mixed",
    "quarter_turns",
    "add_mode_turns",
    "field_at_turns",
    "push_turns",
    "field_at_turns2",
    "push_turns2",
    "compile_kernels",
    "mixed_mode_arrays",
    "turns_mode_arrays",
    "COS_TURNS_MAX",
    "TURNS_MODE_BLOCK",
]


def field_at(x, y, z, modes):
    """Total field ``b = B / B0`` at ``(x, y, z)`` (in ``L_c``).

    ``modes`` is the ``(7, N)`` per-mode array of :func:`crsky.turbulence.make_modes`.
    Returns ``(bx, by, bz)``; the regular field ``z_hat`` is included.
    """
    bx = 0.0
    by = 0.0
    bz = 1.0
    for n in range(modes.shape[1]):
        c = math.cos(modes[0, n] * x + modes[1, n] * y + modes[2, n] * z + modes[6, n])
        bx += modes[3, n] * c
        by += modes[4, n] * c
        bz += modes[5, n] * c
    return bx, by, bz


def rotate(vx, vy, vz, bx, by, bz, scale):
    """Rotate ``v`` about the axis ``b`` by the angle ``scale * |b|`` (right-handed).

    Rodrigues' formula; ``|v|`` is preserved to rounding. A zero field leaves ``v``.
    """
    bb = math.sqrt(bx * bx + by * by + bz * bz)
    if bb == 0.0:
        return vx, vy, vz
    nx = bx / bb
    ny = by / bb
    nz = bz / bb
    theta = scale * bb
    c = math.cos(theta)
    s = math.sin(theta)
    ndotv = (nx * vx + ny * vy + nz * vz) * (1.0 - c)
    wx = vx * c + (ny * vz - nz * vy) * s + nx * ndotv
    wy = vy * c + (nz * vx - nx * vz) * s + ny * ndotv
    wz = vz * c + (nx * vy - ny * vx) * s + nz * ndotv
    return wx, wy, wz


def push(x, y, z, vx, vy, vz, modes, sign, dtau, rl):
    """One drift-kick-drift step of ``Omega dt = dtau`` for charge sign ``sign``.

    Positions in ``L_c``, velocities in ``c``, ``rl = r_L / L_c``. Returns the new
    ``(x, y, z, vx, vy, vz)``.
    """
    half = 0.5 * dtau * rl
    x += half * vx
    y += half * vy
    z += half * vz
    bx, by, bz = field_at(x, y, z, modes)
    # dv/dtau = s v x b = -s |b| (b_hat x v): a rotation by -s |b| dtau about b_hat.
    vx, vy, vz = rotate(vx, vy, vz, bx, by, bz, -sign * dtau)
    x += half * vx
    y += half * vy
    z += half * vz
    return x, y, z, vx, vy, vz


# --------------------------------------------------------------------------------------
# Mixed precision: float64 reference phases, float32 offsets, polynomial cosine.
# Phases are in turns (units of 2 pi): rounding to the nearest integer is the whole
# range reduction, exactly.
# --------------------------------------------------------------------------------------

#: 1.5 * 2^52: (y + R) - R rounds a float64 |y| < 2^51 to the nearest integer.
_ROUND64 = 6755399441055744.0
#: 1.5 * 2^23: (y + R) - R rounds a float32 |y| < 2^22 to the nearest integer.
_ROUND32 = np.float32(12582912.0)
#: cos(2 pi x) = -sin(2 pi t), t = |x - round(x)| - 1/4 in [-1/4, 1/4] (the CUDA path's
#: cosine, :func:`neg_sin_turns` of :func:`quarter_turns`); the sine is the
#: odd degree-9 minimax polynomial (absolute error) t (C1 + C3 t^2 + ... + C9 t^8) with
#: the sign folded into the coefficients. Error of the fit 3.3e-9, 1.5e-8 with the
#: coefficients rounded to float32 (best of +-3 ulp each); float32 evaluation error
#: dominates (tests/test_fast_kernels.py).
_C1 = np.float32(-6.283185)
_C3 = np.float32(41.341652)
_C5 = np.float32(-81.601006)
_C7 = np.float32(76.549774)
_C9 = np.float32(-39.5367)

#: |x| (turns) below which :func:`cos_turns` is valid (the rounding idiom needs
#: |x| < 2^22; the accuracy of ~1e-7 needs |x| of a few turns at most, since a
#: float32 phase is itself only known to 6e-8 |x|).
COS_TURNS_MAX = 2.0**22


def neg_sin_turns(t):
    """``-sin(2 pi t)`` for a float32 ``t`` in ``[-1/4, 1/4]`` turns, in float32
    arithmetic only: the odd degree-9 minimax polynomial
    (6 floating-point operations with FMA; absolute error of the polynomial 1.5e-8,
    of its float32 evaluation ~1e-7).

    Parameters
    ----------
    t : float32
        Phase in turns (units of ``2 pi`` rad), ``|t| <= 1/4``.

    Returns
    -------
    float32
        ``-sin(2 pi t)``, which is ``cos(2 pi r)`` for ``t = |r| - 1/4``.
    """
    u = t * t
    return t * (_C1 + u * (_C3 + u * (_C5 + u * (_C7 + u * _C9))))


#: cos(2 pi x) = p^2 - 1 with p = sqrt(2) cos(pi r), r = x - round(x) in [-1/2, 1/2]:
#: p is the even degree-8 polynomial E0 + E1 u + ... + E4 u^4 in u = r^2, fitted
#: (Lawson's iteratively weighted least squares) for the least maximum error of p^2 - 1,
#: 4.6e-8 in exact arithmetic; coefficients rounded to float32 (best of +-2 ulp each
#: for the float32 evaluation error, which dominates: tests/test_fast_kernels.py).
_E0 = np.float32(1.4142135381698608)
_E1 = np.float32(-6.9788594245910645)
_E2 = np.float32(5.739676475524902)
_E3 = np.float32(-1.88527250289917)
_E4 = np.float32(0.3148230314254761)


def cos_turns(x):
    """``cos(2 pi x)`` for a float32 phase ``x`` in turns, in float32 arithmetic only;
    vectorisable (no branches, calls or integers). The mixed CPU path's cosine.

    Double-angle form: ``r = x - round(x)`` (exact) in ``[-1/2, 1/2]``, ``p =
    sqrt(2) cos(pi r)`` as an even polynomial in ``r`` (4 FMA in ``u = r^2``) and
    ``cos(2 pi r) = p^2 - 1`` (one FMA): 9 floating-point operations with FMA, against
    11 for an odd polynomial in ``|r| - 1/4`` (:func:`neg_sin_turns`), which needs the
    absolute value, the shift and a final product. The price is accuracy: ``p^2 - 1``
    multiplies the error of ``p`` by ``2 p``. Absolute error < 3e-7, rms 8e-8
    (measured in the tests), against 1.3e-7 and 3e-8 for the odd polynomial.

    Parameters
    ----------
    x : float32
        Phase in turns (units of ``2 pi`` rad), ``|x| < COS_TURNS_MAX``.

    Returns
    -------
    float32
        ``cos(2 pi x)``.
    """
    r = x - ((x + _ROUND32) - _ROUND32)
    u = r * r
    p = _E0 + u * (_E1 + u * (_E2 + u * (_E3 + u * _E4)))
    return p * p - float32(1.0)


def reduce_turns(phase):
    """A float64 phase in turns minus its nearest integer (exact, for |phase| <
    2^51), rounded to float32: the result lies in ``[-1/2, 1/2]``."""
    return float32(phase - ((phase + _ROUND64) - _ROUND64))


def reference_phase(x, y, z, modes_turns, n):
    """``(k_n . x + beta_n) / 2 pi`` in float64, reduced to ``[-1/2, 1/2]``
    (:func:`reduce_turns`) and rounded to float32: the reference phase (turns) of mode
    ``n`` at the reference point ``(x, y, z)``.

    ``modes_turns`` is the float64 ``(4, N)`` array of :func:`mixed_mode_arrays`
    (``k / 2 pi`` and ``beta / 2 pi``).
    """
    return reduce_turns(modes_turns[0, n] * x + modes_turns[1, n] * y + modes_turns[2, n] * z + modes_turns[3, n])


def reference_phases(x, y, z, modes_turns, phases):
    """:func:`reference_phase` of every mode into ``phases`` (float32, length N)."""
    for n in range(modes_turns.shape[1]):
        phases[n] = reference_phase(x, y, z, modes_turns, n)


def field_at_mixed(dx, dy, dz, modes32, phases):
    """Total field ``b = B / B0`` at ``x_ref + (dx, dy, dz)`` from the reference phases
    of ``x_ref`` (:func:`reference_phases`).

    ``dx, dy, dz`` are float32 offsets (in ``L_c``), ``modes32`` the float32 ``(6, N)``
    array of :func:`mixed_mode_arrays` (``k / 2 pi``, ``A xi``), ``phases`` the float32
    reference phases (turns). Phases and cosines are float32; the sum is float64.
    Returns float64 ``(bx, by, bz)`` with the regular field ``z_hat`` included.
    """
    bx = 0.0
    by = 0.0
    bz = 1.0
    for n in range(modes32.shape[1]):
        c = float64(cos_turns(modes32[0, n] * dx + modes32[1, n] * dy + modes32[2, n] * dz + phases[n]))
        bx += float64(modes32[3, n]) * c
        by += float64(modes32[4, n]) * c
        bz += float64(modes32[5, n]) * c
    return bx, by, bz


def sincos_taylor(theta):
    """``(cos(theta), sin(theta))`` in float64 for ``|theta| <= 1``: Taylor polynomials
    to order 18 and 17 (truncation error < 1e-17). No branches, so that a loop over
    particles vectorises; larger ``|theta|`` are the caller's to avoid."""
    u = theta * theta
    s = theta * (1.0 + u * (-1.6666666666666666e-01 + u * (8.3333333333333332e-03 + u * (
        -1.9841269841269841e-04 + u * (2.7557319223985893e-06 + u * (-2.5052108385441720e-08 + u * (
            1.6059043836821613e-10 + u * (-7.6471637318198164e-13 + u * 2.8114572543455206e-15))))))))
    c = 1.0 + u * (-0.5 + u * (4.1666666666666664e-02 + u * (-1.3888888888888889e-03 + u * (
        2.4801587301587302e-05 + u * (-2.7557319223985888e-07 + u * (2.0876756987868100e-09 + u * (
            -1.1470745597729725e-11 + u * (4.7794773323873853e-14 + u * -1.5619206968586225e-16))))))))
    return c, s


def rotate_taylor(vx, vy, vz, bx, by, bz, scale):
    """:func:`rotate` with :func:`sincos_taylor` for the angle ``theta = scale |b|``,
    valid for ``|theta| <= 1`` (the caller checks); ``|v|`` preserved to rounding.

    Branch-free (a zero field gives ``n = 0``, ``theta = 0`` and ``v`` unchanged), so
    that the CPU mixed path's loop over particles vectorises.
    """
    bb = math.sqrt(bx * bx + by * by + bz * bz)
    inv = 1.0 / max(bb, 1e-300)
    nx = bx * inv
    ny = by * inv
    nz = bz * inv
    c, s = sincos_taylor(scale * bb)
    ndotv = (nx * vx + ny * vy + nz * vz) * (1.0 - c)
    wx = vx * c + (ny * vz - nz * vy) * s + nx * ndotv
    wy = vy * c + (nz * vx - nx * vz) * s + ny * ndotv
    wz = vz * c + (nx * vy - ny * vx) * s + nz * ndotv
    return wx, wy, wz


def rotate_poly(vx, vy, vz, bx, by, bz, scale):
    """:func:`rotate` without ``math`` calls in the usual case: :func:`rotate_taylor`
    for angles ``|scale| |b| <= 1``, :func:`rotate` beyond."""
    if abs(scale) * math.sqrt(bx * bx + by * by + bz * bz) > 1.0:
        return rotate(vx, vy, vz, bx, by, bz, scale)
    return rotate_taylor(vx, vy, vz, bx, by, bz, scale)


def push_mixed(x, y, z, vx, vy, vz, xr, yr, zr, refresh, modes_turns, modes32, phases, sign, dtau, rl):
    """One step of :func:`push` on the mixed-precision field.

    ``(xr, yr, zr)`` is the particle's reference point and ``phases`` its reference
    phases (float32, length N). With ``refresh`` true the reference point moves to the
    particle (after the first half drift, where the field is evaluated) and the phases
    are recomputed from the float64 ``modes_turns``; otherwise the offset from the
    reference point must stay small (the CPU backend refreshes every
    ``1 + floor(phase_budget / (k_max r_L dtau))`` steps). ``modes_turns, modes32``
    come from :func:`mixed_mode_arrays`. Returns ``(x, y, z, vx, vy, vz, xr, yr, zr)``.
    """
    half = 0.5 * dtau * rl
    x += half * vx
    y += half * vy
    z += half * vz
    if refresh:
        xr = x
        yr = y
        zr = z
        reference_phases(x, y, z, modes_turns, phases)
    bx, by, bz = field_at_mixed(float32(x - xr), float32(y - yr), float32(z - zr), modes32, phases)
    vx, vy, vz = rotate_poly(vx, vy, vz, bx, by, bz, -sign * dtau)
    x += half * vx
    y += half * vy
    z += half * vz
    return x, y, z, vx, vy, vz, xr, yr, zr


# --------------------------------------------------------------------------------------
# Mixed precision without per-particle state (the CUDA backend's mixed path): each
# mode's phase is computed and reduced in float64, its cosine in float32.
# --------------------------------------------------------------------------------------

#: Modes per float32 partial sum of :func:`field_at_turns`; the partial sums are added
#: in float64. Sequential float32 sums over more modes lose accuracy (measured in
#: ``docs/performance.md``, "CUDA backend: mixed path").
TURNS_MODE_BLOCK = 16


def quarter_turns(phase):
    """The argument of :func:`neg_sin_turns` for a float64 phase in turns.

    ``r = phase - round(phase)`` is exact in float64 for ``|phase| < 2^51`` turns, and
    so is ``t = |r| - 1/4`` for ``|phase| >= 1/2`` (within 2^-55 below); the final
    rounding of ``t`` to float32 is what loses accuracy: at most half an ulp of
    ``|t| <= 1/4``, i.e. 7.5e-9 turns, largest where the derivative of
    ``sin(2 pi t)`` is smallest. ``cos(2 pi phase) =
    neg_sin_turns(quarter_turns(phase))``.

    Parameters
    ----------
    phase : float64
        Phase in turns (units of ``2 pi`` rad), ``|phase| < 2^51``.

    Returns
    -------
    float32
        ``t = |phase - round(phase)| - 1/4``, in ``[-1/4, 1/4]``.
    """
    return float32(abs(phase - ((phase + _ROUND64) - _ROUND64)) - 0.25)


def add_mode_turns(sx, sy, sz, x, y, z, modes_turns, amps32, n):
    """Add mode ``n``'s field at ``(x, y, z)`` to the float32 partial sums
    ``(sx, sy, sz)``: the phase in turns in float64 (3 FMA), its reduction
    (:func:`quarter_turns`), the float32 cosine (:func:`neg_sin_turns`) and 3 float32
    FMA.

    Parameters
    ----------
    sx, sy, sz : float32
        Partial sums of the field (``B0``).
    x, y, z : float64
        Position in ``L_c``.
    modes_turns : array, shape (N, 4), float64
        Per mode ``k_n / 2 pi`` (columns 0-2, turns per ``L_c``) and ``beta_n / 2 pi``
        (column 3, turns), from :func:`turns_mode_arrays`.
    amps32 : array, shape (N, 4), float32
        Per mode ``A_n xi_n`` (columns 0-2, ``B0``; column 3 is padding), from
        :func:`turns_mode_arrays`.
    n : uint64
        Mode index (unsigned, so that no negative-index wraparound is compiled).

    Returns
    -------
    sx, sy, sz : float32
        The updated partial sums.
    """
    c = neg_sin_turns(quarter_turns(
        modes_turns[n, 3] + modes_turns[n, 0] * x + modes_turns[n, 1] * y + modes_turns[n, 2] * z
    ))
    return sx + amps32[n, 0] * c, sy + amps32[n, 1] * c, sz + amps32[n, 2] * c


def field_at_turns(x, y, z, modes_turns, amps32):
    """Total field ``b = B / B0`` at ``(x, y, z)`` with float64 phases and float32
    cosines, no per-particle state (the CUDA backend's ``precision="mixed"``).

    Per mode (:func:`add_mode_turns`): the phase ``beta_n / 2 pi + k_n / 2 pi . x``
    in turns (3 float64 FMA), its exact reduction and rounding to float32
    (:func:`quarter_turns`: 4 float64 operations and one conversion), the cosine as a
    float32 polynomial (:func:`neg_sin_turns`, 6 operations) and 3 float32 FMA for the
    sum. The sums are float32 over blocks of :data:`TURNS_MODE_BLOCK` modes, then
    float64. Error < 1e-6 (measured at most 4.2e-7) of the rms field for ``|x|`` up
    to at least 1e3 ``L_c`` (phases ~1e6 rad), ``tests/test_fast_kernels.py``.

    Parameters
    ----------
    x, y, z : float64
        Position in ``L_c``.
    modes_turns : array, shape (N, 4), float64
        ``k_n / 2 pi`` (turns per ``L_c``) and ``beta_n / 2 pi`` (turns), from
        :func:`turns_mode_arrays`.
    amps32 : array, shape (N, 4), float32
        ``A_n xi_n`` (``B0``) and padding, from :func:`turns_mode_arrays`.

    Returns
    -------
    bx, by, bz : float64
        The field in ``B0``, regular field ``z_hat`` included.
    """
    # Unsigned indices and while loops: numba's range() iterator compiles to a
    # counter the GPU compiler does not unroll cleanly, and signed indices get a
    # negative-index wraparound per load.
    one = uint64(1)
    block = uint64(TURNS_MODE_BLOCK)
    n_modes = uint64(modes_turns.shape[0])
    n_full = n_modes - n_modes % block
    bx = 0.0
    by = 0.0
    bz = 1.0
    n = uint64(0)
    while n < n_modes:
        end = n + block if n < n_full else n_modes
        sx = float32(0.0)
        sy = float32(0.0)
        sz = float32(0.0)
        while n < end:
            sx, sy, sz = add_mode_turns(sx, sy, sz, x, y, z, modes_turns, amps32, n)
            n += one
        bx += float64(sx)
        by += float64(sy)
        bz += float64(sz)
    return bx, by, bz


def push_turns(x, y, z, vx, vy, vz, modes_turns, amps32, sign, dtau, rl):
    """One step of :func:`push` on the field of :func:`field_at_turns` (rotation by
    :func:`rotate_poly`; positions and velocities float64).

    Parameters
    ----------
    x, y, z : float64
        Position in ``L_c``.
    vx, vy, vz : float64
        Velocity in ``c`` (``|v| = 1``).
    modes_turns, amps32 : arrays
        From :func:`turns_mode_arrays`.
    sign : float64
        Sign of the traced charge.
    dtau : float64
        Step ``Omega dt``.
    rl : float64
        ``r_L / L_c``.

    Returns
    -------
    x, y, z, vx, vy, vz : float64
        The state after the step.
    """
    half = 0.5 * dtau * rl
    x += half * vx
    y += half * vy
    z += half * vz
    bx, by, bz = field_at_turns(x, y, z, modes_turns, amps32)
    vx, vy, vz = rotate_poly(vx, vy, vz, bx, by, bz, -sign * dtau)
    x += half * vx
    y += half * vy
    z += half * vz
    return x, y, z, vx, vy, vz


def field_at_turns2(x0, y0, z0, x1, y1, z1, modes_turns, amps32):
    """:func:`field_at_turns` at two points at once: each mode's data is loaded once
    for both (the compiler merges the loads of the two :func:`add_mode_turns` calls),
    which halves the loads and loop overhead per mode evaluation on a GPU. Each
    point's arithmetic is exactly that of :func:`field_at_turns`.

    Parameters
    ----------
    x0, y0, z0, x1, y1, z1 : float64
        The two positions in ``L_c``.
    modes_turns, amps32 : arrays, shape (N, 4)
        From :func:`turns_mode_arrays`.

    Returns
    -------
    bx0, by0, bz0, bx1, by1, bz1 : float64
        The field at both points in ``B0``, ``z_hat`` included.
    """
    one = uint64(1)
    block = uint64(TURNS_MODE_BLOCK)
    n_modes = uint64(modes_turns.shape[0])
    n_full = n_modes - n_modes % block
    bx0 = 0.0
    by0 = 0.0
    bz0 = 1.0
    bx1 = 0.0
    by1 = 0.0
    bz1 = 1.0
    n = uint64(0)
    while n < n_modes:
        end = n + block if n < n_full else n_modes
        sx0 = float32(0.0)
        sy0 = float32(0.0)
        sz0 = float32(0.0)
        sx1 = float32(0.0)
        sy1 = float32(0.0)
        sz1 = float32(0.0)
        while n < end:
            sx0, sy0, sz0 = add_mode_turns(sx0, sy0, sz0, x0, y0, z0, modes_turns, amps32, n)
            sx1, sy1, sz1 = add_mode_turns(sx1, sy1, sz1, x1, y1, z1, modes_turns, amps32, n)
            n += one
        bx0 += float64(sx0)
        by0 += float64(sy0)
        bz0 += float64(sz0)
        bx1 += float64(sx1)
        by1 += float64(sy1)
        bz1 += float64(sz1)
    return bx0, by0, bz0, bx1, by1, bz1


def push_turns2(x0, y0, z0, vx0, vy0, vz0, x1, y1, z1, vx1, vy1, vz1, modes_turns, amps32, sign, dtau, rl):
    """:func:`push_turns` for two particles at once (field by
    :func:`field_at_turns2`); each particle's result is exactly :func:`push_turns`'s.

    Parameters
    ----------
    x0, y0, z0, vx0, vy0, vz0, x1, y1, z1, vx1, vy1, vz1 : float64
        Positions (``L_c``) and velocities (``c``) of the two particles.
    modes_turns, amps32 : arrays, shape (N, 4)
        From :func:`turns_mode_arrays`.
    sign, dtau, rl : float64
        As in :func:`push_turns`.

    Returns
    -------
    tuple of 12 float64
        Both particles' states after the step, in the order of the arguments.
    """
    half = 0.5 * dtau * rl
    x0 += half * vx0
    y0 += half * vy0
    z0 += half * vz0
    x1 += half * vx1
    y1 += half * vy1
    z1 += half * vz1
    bx0, by0, bz0, bx1, by1, bz1 = field_at_turns2(x0, y0, z0, x1, y1, z1, modes_turns, amps32)
    vx0, vy0, vz0 = rotate_poly(vx0, vy0, vz0, bx0, by0, bz0, -sign * dtau)
    vx1, vy1, vz1 = rotate_poly(vx1, vy1, vz1, bx1, by1, bz1, -sign * dtau)
    x0 += half * vx0
    y0 += half * vy0
    z0 += half * vz0
    x1 += half * vx1
    y1 += half * vy1
    z1 += half * vz1
    return x0, y0, z0, vx0, vy0, vz0, x1, y1, z1, vx1, vy1, vz1


#: Kernels in dependency order (a kernel may call only those before it).
_KERNELS = (
    field_at, rotate, push,
    neg_sin_turns, cos_turns, reduce_turns, reference_phase, reference_phases, field_at_mixed, sincos_taylor,
    rotate_taylor, rotate_poly,
    push_mixed, quarter_turns, add_mode_turns, field_at_turns, push_turns, field_at_turns2, push_turns2,
)


def mixed_mode_arrays(modes):
    """Host-side (numpy) arrays of the mixed-precision kernels from the float64
    ``(7, N)`` mode array: ``modes_turns`` float64 ``(4, N)`` (``k / 2 pi``,
    ``beta / 2 pi``) for the reference phases and ``modes32`` float32 ``(6, N)``
    (``k / 2 pi``, ``A xi``) for the float32 offsets. Not a kernel."""
    modes = np.asarray(modes, dtype=np.float64)
    turns = np.empty((4, modes.shape[1]))
    turns[0:3] = modes[0:3] / (2 * np.pi)
    turns[3] = modes[6] / (2 * np.pi)
    modes32 = np.empty((6, modes.shape[1]), np.float32)
    modes32[0:3] = turns[0:3]
    modes32[3:6] = modes[3:6]
    return turns, modes32


def turns_mode_arrays(modes):
    """Host-side (numpy) arrays of :func:`field_at_turns` from the float64 ``(7, N)``
    mode array: ``modes_turns`` float64 ``(N, 4)`` (``k / 2 pi`` in turns per
    ``L_c``, ``beta / 2 pi`` in turns) and ``amps32`` float32 ``(N, 4)`` (``A xi``
    in ``B0``, column 3 zero). One row per mode, so that a GPU thread loads a mode
    with three 16-byte loads. Not a kernel."""
    modes = np.asarray(modes, dtype=np.float64)
    turns = np.empty((modes.shape[1], 4))
    turns[:, 0:3] = modes[0:3].T / (2 * np.pi)
    turns[:, 3] = modes[6] / (2 * np.pi)
    amps = np.zeros((modes.shape[1], 4), np.float32)
    amps[:, 0:3] = modes[3:6].T
    return turns, amps

#: Module globals the kernels read (besides each other).
_GLOBALS = {
    "math": math,
    "float32": float32,
    "float64": float64,
    "uint64": uint64,
    **{name: globals()[name] for name in ("_ROUND64", "_ROUND32", "_C1", "_C3", "_C5", "_C7", "_C9",
                                             "_E0", "_E1", "_E2", "_E3", "_E4", "TURNS_MODE_BLOCK")},
}


def compile_kernels(jit, variant: str = "") -> SimpleNamespace:
    """Compile every scalar kernel with ``jit``, calls between them rebound to the
    compiled versions.

    Parameters
    ----------
    jit : callable
        A decorator such as ``numba.njit(inline="always")`` or
        ``numba.cuda.jit(device=True)``.
    variant : str
        Appended to the kernels' qualified names. Give each set compiled with
        different options (``fastmath``) in one process its own variant: numba's
        on-disk cache tells functions apart by module, qualified name and bytecode,
        not by compiler options.

    Returns
    -------
    types.SimpleNamespace
        One attribute per kernel name.
    """
    namespace = dict(_GLOBALS)
    for kernel in _KERNELS:
        clone = types.FunctionType(
            kernel.__code__, namespace, kernel.__name__, kernel.__defaults__, kernel.__closure__
        )
        clone.__doc__ = kernel.__doc__
        clone.__module__ = kernel.__module__
        clone.__qualname__ = kernel.__qualname__ + (f"_{variant}" if variant else "")
        namespace[kernel.__name__] = jit(clone)
    return SimpleNamespace(**{k.__name__: namespace[k.__name__] for k in _KERNELS})
