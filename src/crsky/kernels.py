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
  and its cosine is a float32 polynomial (:func:`cos_turns`) that LLVM vectorises (8
  modes per AVX2 instruction);
- the reference point is moved to the particle every few steps, so that
  ``|k| |x - x_ref|`` stays below a few tens of rad (the float32 phase then carries
  absolute errors ~1e-8 turns whatever ``|x|`` is);
- the velocity, position and the rotation stay float64.

The field is accurate to ~5e-7 of its rms value (measured; ``tests/test_fast_kernels.py``,
``benchmarks/mixed_accuracy.py``).

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
from numba import float32, float64

__all__ = [
    "field_at",
    "rotate",
    "push",
    "cos_turns",
    "reduce_turns",
    "reference_phases",
    "field_at_mixed",
    "sincos_poly",
    "rotate_poly",
    "push_mixed",
    "compile_kernels",
    "mixed_mode_arrays",
    "COS_TURNS_MAX",
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
_QUARTER = np.float32(0.25)
#: cos(2 pi x) = -sin(2 pi t), t = |x - round(x)| - 1/4 in [-1/4, 1/4]; the sine is the
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


def cos_turns(x):
    """``cos(2 pi x)`` for a float32 phase ``x`` in turns, in float32 arithmetic
    only; vectorisable (no branches, calls or integers).

    ``r = x - round(x)`` (exact) in ``[-1/2, 1/2]``, then ``cos(2 pi r) =
    -sin(2 pi t)`` with ``t = |r| - 1/4`` in ``[-1/4, 1/4]`` and an odd degree-9
    minimax polynomial. 11 floating-point operations with FMA. Absolute error
    < 1.5e-7 (measured in the tests).
    """
    r = x - ((x + _ROUND32) - _ROUND32)
    t = abs(r) - _QUARTER
    u = t * t
    return t * (_C1 + u * (_C3 + u * (_C5 + u * (_C7 + u * _C9))))


def reduce_turns(phase):
    """A float64 phase in turns minus its nearest integer (exact, for |phase| <
    2^51), rounded to float32: the result lies in ``[-1/2, 1/2]``."""
    return float32(phase - ((phase + _ROUND64) - _ROUND64))


def reference_phases(x, y, z, modes_turns, phases):
    """Store ``(k_n . x + beta_n) / 2 pi mod 1`` (float64, reduced to ``[-1/2, 1/2]``)
    as float32 in ``phases[n]`` for the reference point ``(x, y, z)``.

    ``modes_turns`` is the float64 ``(4, N)`` array of :func:`mixed_mode_arrays`
    (``k / 2 pi`` and ``beta / 2 pi``); ``phases`` a float32 array of length N.
    """
    for n in range(modes_turns.shape[1]):
        phases[n] = reduce_turns(
            modes_turns[0, n] * x + modes_turns[1, n] * y + modes_turns[2, n] * z + modes_turns[3, n]
        )


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


def sincos_poly(theta):
    """``(cos(theta), sin(theta))`` in float64: Taylor polynomials to order 18 and 17
    for |theta| <= 1 (truncation error < 1e-17), ``math`` otherwise."""
    if abs(theta) > 1.0:
        return math.cos(theta), math.sin(theta)
    u = theta * theta
    s = theta * (1.0 + u * (-1.6666666666666666e-01 + u * (8.3333333333333332e-03 + u * (
        -1.9841269841269841e-04 + u * (2.7557319223985893e-06 + u * (-2.5052108385441720e-08 + u * (
            1.6059043836821613e-10 + u * (-7.6471637318198164e-13 + u * 2.8114572543455206e-15))))))))
    c = 1.0 + u * (-0.5 + u * (4.1666666666666664e-02 + u * (-1.3888888888888889e-03 + u * (
        2.4801587301587302e-05 + u * (-2.7557319223985888e-07 + u * (2.0876756987868100e-09 + u * (
            -1.1470745597729725e-11 + u * (4.7794773323873853e-14 + u * -1.5619206968586225e-16))))))))
    return c, s


def rotate_poly(vx, vy, vz, bx, by, bz, scale):
    """:func:`rotate` with the sine and cosine of the (small) angle from
    :func:`sincos_poly` instead of ``math`` calls; ``|v|`` preserved to rounding."""
    bb = math.sqrt(bx * bx + by * by + bz * bz)
    if bb == 0.0:
        return vx, vy, vz
    inv = 1.0 / bb
    nx = bx * inv
    ny = by * inv
    nz = bz * inv
    c, s = sincos_poly(scale * bb)
    ndotv = (nx * vx + ny * vy + nz * vz) * (1.0 - c)
    wx = vx * c + (ny * vz - nz * vy) * s + nx * ndotv
    wy = vy * c + (nz * vx - nx * vz) * s + ny * ndotv
    wz = vz * c + (nx * vy - ny * vx) * s + nz * ndotv
    return wx, wy, wz


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


#: Kernels in dependency order (a kernel may call only those before it).
_KERNELS = (
    field_at, rotate, push,
    cos_turns, reduce_turns, reference_phases, field_at_mixed, sincos_poly, rotate_poly, push_mixed,
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

#: Module globals the kernels read (besides each other).
_GLOBALS = {
    "math": math,
    "float32": float32,
    "float64": float64,
    **{name: globals()[name] for name in ("_ROUND64", "_ROUND32", "_QUARTER", "_C1", "_C3", "_C5", "_C7", "_C9")},
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
