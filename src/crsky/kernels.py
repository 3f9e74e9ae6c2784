"""The physics of one integration step, as plain scalar functions (no I/O, no arrays
allocated).

Every function here is written once, in the subset of Python that both
``numba.njit`` and ``numba.cuda.jit`` compile, and registered with
:func:`numba.extending.register_jitable`: a compiled caller of any target (a CPU
loop, a GPU kernel) compiles the ones it calls with its own floating-point flags
(``fastmath``, ``error_model``), and numba's CUDA simulator runs them as Python. The
backends (:mod:`crsky.backends`) differ only in their loops over particles and in the
layout of their field sums; docs/conventions.md states the units and the sign
conventions.

Code units: positions in ``L_c``; velocities in ``c`` (|v| = 1); field in ``B0``; the
time step is ``Omega * dt`` (dimensionless).

Integrator. ``dx/dt = v``, ``dv/dt = s Omega v x b(x)`` with ``s`` the sign of the
traced charge. In the variable ``tau = Omega t`` this is ``dx/dtau = r_L v`` and
``dv/dtau = s v x b``. One step is drift-kick-drift (leapfrog):

1. ``x <- x + (r_L dtau / 2) v`` (:func:`drift`);
2. rotate ``v`` exactly about ``b(x)`` by the angle ``-s |b| dtau``
   (:func:`kick_angle`, :func:`rotate`: Rodrigues' formula), the exact solution of
   ``dv/dtau = s v x b`` for ``b`` frozen;
3. ``x <- x + (r_L dtau / 2) v``.

The scheme is symmetric (time-reversible), second order, uses one field evaluation
per step and keeps ``|v|`` constant to rounding. In a uniform field the velocity is
exact at every step and the orbit stays within ``r_L dtau^2 / 6`` of the exact helix
for all times (no secular phase error, unlike the Boris ``2 atan`` rotation).

The rotation has three forms with the same result to rounding: :func:`rotate`
(``math.cos``/``math.sin``), :func:`rotate_taylor` (branch-free Taylor polynomials,
for vectorised loops; valid for angles up to 1 rad) and :func:`rotate_poly` (the
Taylor form, or :func:`rotate` beyond 1 rad). A vectorised loop tests
:func:`rotation_angle_squared` to redo the rare large angles with :func:`rotate_poly`.

Field sums, one per mode-array layout (the layouts are named in
:mod:`crsky.backends`):

- :func:`field_at`: ``math.cos`` of float64 phases over the ``(7, N)`` modes (the
  float64 reference of both backends);
- mixed precision on the CPU: phases in turns (units of ``2 pi``) at a per-particle
  reference point in float64 (:func:`reference_phase`, reduced exactly and rounded to
  float32 by :func:`reduce_turns`), float32 offsets from it and a float32 polynomial
  cosine (:func:`cos_turns`); the sum itself is in the CPU backend's lanes loop
  (:mod:`crsky.backends.cpu_mixed`);
- mixed precision on a GPU (:func:`field_at_turns`): no per-particle state; per mode
  the phase in turns in float64, reduced exactly and rounded once to float32
  (:func:`quarter_turns`), a float32 odd polynomial (:func:`neg_sin_turns`), float32
  sums over blocks of :data:`TURNS_MODE_BLOCK` modes, then float64.

The mixed-precision functions need floating-point contraction (FMA) for speed and
must NOT be compiled with reassociation (``fastmath=True``): :func:`cos_turns` and
:func:`reduce_turns` round with the ``(y + 1.5 * 2^23) - 1.5 * 2^23`` idiom, which
reassociation would fold away. The CPU mixed loop is compiled with
``fastmath={"contract"}``; CUDA's default (contraction, no reassociation) is fine.

numba's on-disk cache of the CPU loops, into which these functions are compiled,
is keyed by a hash of this file as well (:mod:`crsky.backends.jit`): editing a
function here recompiles its callers.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float32, float64, uint64
from numba.extending import register_jitable

__all__ = [
    "half_step",
    "kick_angle",
    "drift",
    "rodrigues",
    "rotate",
    "sincos_taylor",
    "rotate_taylor",
    "rotate_poly",
    "rotation_angle_squared",
    "field_at",
    "push",
    "cos_turns",
    "reduce_turns",
    "reference_phase",
    "neg_sin_turns",
    "quarter_turns",
    "add_mode_turns",
    "field_at_turns",
    "push_turns",
    "COS_TURNS_MAX",
    "TURNS_MODE_BLOCK",
]


# --------------------------------------------------------------------------------------
# The step: drift, kick (sign convention) and the exact rotation.
# --------------------------------------------------------------------------------------


@register_jitable
def half_step(dtau, rl):
    """Length of one half drift per unit velocity, ``r_L dtau / 2`` (``L_c``)."""
    return 0.5 * dtau * rl


@register_jitable
def kick_angle(sign, dtau):
    """Rotation angle per unit field of the kick, ``-s dtau``.

    ``dv/dtau = s v x b = -s |b| (b_hat x v)``: over a step ``v`` turns by
    ``-s |b| dtau`` about ``b_hat`` (right-handed). The one place the sign of the
    traced charge enters the step.
    """
    return -sign * dtau


@register_jitable
def drift(x, y, z, vx, vy, vz, half):
    """Position after a drift of ``half * v`` (``half`` from :func:`half_step`)."""
    return x + half * vx, y + half * vy, z + half * vz


@register_jitable
def rodrigues(vx, vy, vz, nx, ny, nz, c, s):
    """Rodrigues' formula: ``v`` rotated about the unit axis ``n`` by the angle whose
    cosine and sine are ``c`` and ``s`` (right-handed)."""
    ndotv = (nx * vx + ny * vy + nz * vz) * (1.0 - c)
    wx = vx * c + (ny * vz - nz * vy) * s + nx * ndotv
    wy = vy * c + (nz * vx - nx * vz) * s + ny * ndotv
    wz = vz * c + (nx * vy - ny * vx) * s + nz * ndotv
    return wx, wy, wz


@register_jitable
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
    return rodrigues(vx, vy, vz, nx, ny, nz, c, s)


@register_jitable
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


@register_jitable
def rotate_taylor(vx, vy, vz, bx, by, bz, scale):
    """:func:`rotate` with :func:`sincos_taylor` for the angle ``theta = scale |b|``,
    valid for ``|theta| <= 1`` (the caller checks: :func:`rotation_angle_squared`);
    ``|v|`` preserved to rounding.

    Branch-free (a zero field gives ``n = 0``, ``theta = 0`` and ``v`` unchanged), so
    that the CPU mixed path's loop over particles vectorises.
    """
    bb = math.sqrt(bx * bx + by * by + bz * bz)
    inv = 1.0 / max(bb, 1e-300)
    nx = bx * inv
    ny = by * inv
    nz = bz * inv
    c, s = sincos_taylor(scale * bb)
    return rodrigues(vx, vy, vz, nx, ny, nz, c, s)


@register_jitable
def rotate_poly(vx, vy, vz, bx, by, bz, scale):
    """:func:`rotate` without ``math`` calls in the usual case: :func:`rotate_taylor`
    for angles ``|scale| |b| <= 1``, :func:`rotate` beyond."""
    if abs(scale) * math.sqrt(bx * bx + by * by + bz * bz) > 1.0:
        return rotate(vx, vy, vz, bx, by, bz, scale)
    return rotate_taylor(vx, vy, vz, bx, by, bz, scale)


@register_jitable
def rotation_angle_squared(bx, by, bz, scale):
    """Square of the kick's rotation angle ``scale |b|``. A vectorised loop rotates
    every particle with :func:`rotate_taylor`, then redoes those whose angle exceeds 1
    (rare at the usual steps) with :func:`rotate_poly`."""
    return scale * scale * (bx * bx + by * by + bz * bz)


# --------------------------------------------------------------------------------------
# float64: math.cos of float64 phases over the (7, N) modes.
# --------------------------------------------------------------------------------------


@register_jitable
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


@register_jitable
def push(x, y, z, vx, vy, vz, modes, sign, dtau, rl):
    """One drift-kick-drift step of ``Omega dt = dtau`` for charge sign ``sign`` in the
    field of :func:`field_at`, rotation by :func:`rotate`.

    Positions in ``L_c``, velocities in ``c``, ``rl = r_L / L_c``. Returns the new
    ``(x, y, z, vx, vy, vz)``.
    """
    half = half_step(dtau, rl)
    x, y, z = drift(x, y, z, vx, vy, vz, half)
    bx, by, bz = field_at(x, y, z, modes)
    vx, vy, vz = rotate(vx, vy, vz, bx, by, bz, kick_angle(sign, dtau))
    x, y, z = drift(x, y, z, vx, vy, vz, half)
    return x, y, z, vx, vy, vz


# --------------------------------------------------------------------------------------
# Mixed precision on the CPU: float64 reference phases, float32 offsets, polynomial
# cosine. Phases are in turns (units of 2 pi): rounding to the nearest integer is the
# whole range reduction, exactly.
# --------------------------------------------------------------------------------------

#: 1.5 * 2^52: (y + R) - R rounds a float64 |y| < 2^51 to the nearest integer.
_ROUND64 = 6755399441055744.0
#: 1.5 * 2^23: (y + R) - R rounds a float32 |y| < 2^22 to the nearest integer.
_ROUND32 = np.float32(12582912.0)

#: |x| (turns) below which :func:`cos_turns` is valid (the rounding idiom needs
#: |x| < 2^22; the accuracy of ~1e-7 needs |x| of a few turns at most, since a
#: float32 phase is itself only known to 6e-8 |x|).
COS_TURNS_MAX = 2.0**22

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


@register_jitable
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


@register_jitable
def reduce_turns(phase):
    """A float64 phase in turns minus its nearest integer (exact, for |phase| <
    2^51), rounded to float32: the result lies in ``[-1/2, 1/2]``."""
    return float32(phase - ((phase + _ROUND64) - _ROUND64))


@register_jitable
def reference_phase(x, y, z, turns_soa, n):
    """``(k_n . x + beta_n) / 2 pi`` in float64, reduced to ``[-1/2, 1/2]``
    (:func:`reduce_turns`) and rounded to float32: the reference phase (turns) of mode
    ``n`` at the reference point ``(x, y, z)``.

    ``turns_soa`` is the float64 ``(4, N)`` array of
    :func:`crsky.backends.cpu_mixed.mode_arrays_soa` (``k / 2 pi`` and ``beta / 2 pi``,
    one row per component).
    """
    return reduce_turns(turns_soa[0, n] * x + turns_soa[1, n] * y + turns_soa[2, n] * z + turns_soa[3, n])


# --------------------------------------------------------------------------------------
# Mixed precision without per-particle state (the CUDA backend's mixed path): each
# mode's phase is computed and reduced in float64, its cosine in float32.
# --------------------------------------------------------------------------------------

#: cos(2 pi x) = -sin(2 pi t), t = |x - round(x)| - 1/4 in [-1/4, 1/4] (the GPU path's
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

#: Modes per float32 partial sum of :func:`field_at_turns`; the partial sums are added
#: in float64. Sequential float32 sums over more modes lose accuracy (measured:
#: tests/test_fast_kernels.py, docs/performance.md).
TURNS_MODE_BLOCK = 16


@register_jitable
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


@register_jitable
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


@register_jitable
def add_mode_turns(sx, sy, sz, x, y, z, turns_aos, amps_aos, n):
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
    turns_aos : array, shape (N, 4), float64
        Per mode ``k_n / 2 pi`` (columns 0-2, turns per ``L_c``) and ``beta_n / 2 pi``
        (column 3, turns), from :func:`crsky.backends.cuda.mode_arrays_aos`.
    amps_aos : array, shape (N, 4), float32
        Per mode ``A_n xi_n`` (columns 0-2, ``B0``; column 3 is padding).
    n : uint64
        Mode index (unsigned, so that no negative-index wraparound is compiled).

    Returns
    -------
    sx, sy, sz : float32
        The updated partial sums.
    """
    c = neg_sin_turns(quarter_turns(
        turns_aos[n, 3] + turns_aos[n, 0] * x + turns_aos[n, 1] * y + turns_aos[n, 2] * z
    ))
    return sx + amps_aos[n, 0] * c, sy + amps_aos[n, 1] * c, sz + amps_aos[n, 2] * c


@register_jitable
def field_at_turns(x, y, z, turns_aos, amps_aos):
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
    turns_aos, amps_aos : arrays, shape (N, 4)
        One row per mode, from :func:`crsky.backends.cuda.mode_arrays_aos`.

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
    n_modes = uint64(turns_aos.shape[0])
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
            sx, sy, sz = add_mode_turns(sx, sy, sz, x, y, z, turns_aos, amps_aos, n)
            n += one
        bx += float64(sx)
        by += float64(sy)
        bz += float64(sz)
    return bx, by, bz


@register_jitable
def push_turns(x, y, z, vx, vy, vz, turns_aos, amps_aos, sign, dtau, rl):
    """One step of :func:`push` on the field of :func:`field_at_turns` (rotation by
    :func:`rotate_poly`; positions and velocities float64).

    Parameters
    ----------
    x, y, z : float64
        Position in ``L_c``.
    vx, vy, vz : float64
        Velocity in ``c`` (``|v| = 1``).
    turns_aos, amps_aos : arrays, shape (N, 4)
        From :func:`crsky.backends.cuda.mode_arrays_aos`.
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
    half = half_step(dtau, rl)
    x, y, z = drift(x, y, z, vx, vy, vz, half)
    bx, by, bz = field_at_turns(x, y, z, turns_aos, amps_aos)
    vx, vy, vz = rotate_poly(vx, vy, vz, bx, by, bz, kick_angle(sign, dtau))
    x, y, z = drift(x, y, z, vx, vy, vz, half)
    return x, y, z, vx, vy, vz
