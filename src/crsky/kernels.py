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

- at a per-particle *reference point* ``x_ref`` the reference phases
  ``phi_n = (k_n . x_ref + beta_n) mod 2 pi`` are computed in float64 and stored, reduced
  to ``[-pi, pi]``, as float32 (:func:`reference_phases`);
- at the particle's position ``x`` the phase is ``k_n . (x - x_ref) + phi_n``, evaluated
  in float32 from the float32 offset ``x - x_ref`` and float32 copies of ``k_n``, and its
  cosine is a float32 polynomial (:func:`cos_poly`) that LLVM vectorises (8 modes per
  AVX2 instruction);
- the reference point is moved to the particle every few steps, so that
  ``|k| |x - x_ref|`` stays below a few tens of rad (the float32 phase then carries
  absolute errors ~1e-7 rad whatever ``|x|`` is);
- the velocity, position and the rotation stay float64.

The field is accurate to ~4e-7 of its rms value (measured; ``tests/test_fast_kernels.py``).

Compilation: the mixed-precision kernels need floating-point contraction (FMA) for
speed and must NOT be compiled with reassociation (``fastmath=True``):
:func:`cos_poly` rounds with the ``(y + 1.5 * 2^23) - 1.5 * 2^23`` idiom, which
reassociation would fold away. The CPU backend compiles them with
``fastmath={"contract"}``; CUDA's default (contraction, no reassociation) is fine.
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
    "cos_poly",
    "reduce_phase",
    "reference_phases",
    "field_at_mixed",
    "sincos_poly",
    "rotate_poly",
    "push_mixed",
    "compile_kernels",
    "COS_POLY_MAX_PHASE",
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
# --------------------------------------------------------------------------------------

#: float64 2 pi split for Cody-Waite reduction (HI is the float64 nearest 2 pi).
_TWO_PI_HI = 6.283185307179586
_TWO_PI_LO = 2.4492935982947064e-16
_INV_TWO_PI = 0.15915494309189535
#: 1.5 * 2^52: (y + R) - R rounds a float64 |y| < 2^51 to the nearest integer.
_ROUND64 = 6755399441055744.0

#: float32 constants of :func:`cos_poly`.
_INV_TWO_PI_F = np.float32(0.15915494309189535)
#: 1.5 * 2^23: (y + R) - R rounds a float32 |y| < 2^22 to the nearest integer.
_ROUND32 = np.float32(12582912.0)
#: 2 pi = HI + LO with HI = 201/32 exact in 8 bits, so j * HI is exact for |j| < 2^16
#: and ``phase - j * HI`` is exact (Sterbenz); LO carries the rest.
_TWO_PI_HI_F = np.float32(6.28125)
_TWO_PI_LO_F = np.float32(0.0019353071795862326)
_HALF_PI_F = np.float32(1.5707963267948966)
#: sin(t) ~ t + t^3 (S3 + S5 t^2 + S7 t^4 + S9 t^6) on [-pi/2, pi/2]: minimax (Remez)
#: for the absolute error with the leading coefficient fixed to 1; approximation error
#: 4.6e-9 (1.7e-8 with the coefficients rounded to float32), float32 evaluation error
#: 1.6e-7 at most (tests/test_fast_kernels.py).
_S3 = np.float32(-0.16666657096514342)
_S5 = np.float32(0.008333017291768292)
_S7 = np.float32(-0.00019806615214442322)
_S9 = np.float32(2.600054793371227e-06)

#: |phase| below which :func:`cos_poly` is valid (exact range reduction needs
#: |phase / 2 pi| < 2^15; accuracy ~1e-7 absolute needs |phase| of order 10 at most,
#: since a float32 phase is itself only known to 6e-8 |phase|).
COS_POLY_MAX_PHASE = 2.0**16


def cos_poly(phase):
    """``cos(phase)`` for a float32 ``phase`` (|phase| < :data:`COS_POLY_MAX_PHASE`),
    in float32 arithmetic only; vectorisable (no branches, no calls, no integers).

    Cody-Waite reduction ``r = phase - 2 pi j`` to ``[-pi, pi]`` (exact for the
    phases the mixed path produces), then ``cos(r) = -sin(|r| - pi/2)`` with
    ``|r| - pi/2`` in ``[-pi/2, pi/2]`` and an odd degree-9 minimax polynomial for the
    sine. 18 floating-point operations with FMA. Absolute error < 1.6e-7 for
    ``|phase| <~ 30`` (measured in the tests).
    """
    j = (phase * _INV_TWO_PI_F + _ROUND32) - _ROUND32
    r = phase - j * _TWO_PI_HI_F
    r = r - j * _TWO_PI_LO_F
    t = abs(r) - _HALF_PI_F
    u = t * t
    return -(t + (t * u) * (_S3 + u * (_S5 + u * (_S7 + u * _S9))))


def reduce_phase(phase):
    """A float64 phase reduced to ``[-pi, pi]`` and rounded to float32 (the only
    rounding: float64 Cody-Waite reduction, valid for |phase| < 2^50)."""
    j = (phase * _INV_TWO_PI + _ROUND64) - _ROUND64
    r = phase - j * _TWO_PI_HI
    r = r - j * _TWO_PI_LO
    return float32(r)


def reference_phases(x, y, z, modes, phases):
    """Store ``(k_n . x + beta_n) mod 2 pi`` (float64, reduced to ``[-pi, pi]``) as
    float32 in ``phases[n]`` for the reference point ``(x, y, z)``.

    ``modes`` is the float64 ``(7, N)`` array; ``phases`` a float32 array of length N.
    """
    for n in range(modes.shape[1]):
        phases[n] = reduce_phase(modes[0, n] * x + modes[1, n] * y + modes[2, n] * z + modes[6, n])


def field_at_mixed(dx, dy, dz, modes32, phases):
    """Total field ``b = B / B0`` at ``x_ref + (dx, dy, dz)`` from the reference phases
    of ``x_ref`` (:func:`reference_phases`).

    ``dx, dy, dz`` are float32 offsets (in ``L_c``), ``modes32`` the ``(7, N)`` mode
    array as float32 (row 6, beta, is not used), ``phases`` the float32 reference
    phases. The phases and cosines are float32; the sum is accumulated in float64.
    Returns float64 ``(bx, by, bz)`` with the regular field ``z_hat`` included.
    """
    bx = 0.0
    by = 0.0
    bz = 1.0
    for n in range(modes32.shape[1]):
        c = float64(cos_poly(modes32[0, n] * dx + modes32[1, n] * dy + modes32[2, n] * dz + phases[n]))
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


def push_mixed(x, y, z, vx, vy, vz, xr, yr, zr, refresh, modes, modes32, phases, sign, dtau, rl):
    """One step of :func:`push` on the mixed-precision field.

    ``(xr, yr, zr)`` is the particle's reference point and ``phases`` its reference
    phases (float32, length N). With ``refresh`` true the reference point moves to the
    particle (after the first half drift, where the field is evaluated) and the phases
    are recomputed from the float64 ``modes``; otherwise the offset from the reference
    point must stay small (the CPU backend refreshes every
    ``1 + floor(phase_budget / (k_max r_L dtau))`` steps). Returns
    ``(x, y, z, vx, vy, vz, xr, yr, zr)``.
    """
    half = 0.5 * dtau * rl
    x += half * vx
    y += half * vy
    z += half * vz
    if refresh:
        xr = x
        yr = y
        zr = z
        reference_phases(x, y, z, modes, phases)
    bx, by, bz = field_at_mixed(float32(x - xr), float32(y - yr), float32(z - zr), modes32, phases)
    vx, vy, vz = rotate_poly(vx, vy, vz, bx, by, bz, -sign * dtau)
    x += half * vx
    y += half * vy
    z += half * vz
    return x, y, z, vx, vy, vz, xr, yr, zr


#: Kernels in dependency order (a kernel may call only those before it).
_KERNELS = (
    field_at, rotate, push,
    cos_poly, reduce_phase, reference_phases, field_at_mixed, sincos_poly, rotate_poly, push_mixed,
)

#: Module globals the kernels read (besides each other).
_GLOBALS = {
    "math": math,
    "float32": float32,
    "float64": float64,
    **{name: globals()[name] for name in (
        "_TWO_PI_HI", "_TWO_PI_LO", "_INV_TWO_PI", "_ROUND64", "_INV_TWO_PI_F", "_ROUND32",
        "_TWO_PI_HI_F", "_TWO_PI_LO_F", "_HALF_PI_F", "_S3", "_S5", "_S7", "_S9",
    )},
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
