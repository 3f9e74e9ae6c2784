"""Slow plain-numpy oracles of the fast kernels (never imported by the package).

Written independently of :mod:`crsky.kernels`: the field sum is vectorised over
modes with ``numpy.cos`` and the velocity rotation uses the matrix exponential of the
cross-product matrix (``scipy.linalg.expm``) instead of Rodrigues' formula.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm


def field_reference(modes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``B / B0`` at ``points`` (n, 3): z_hat + sum_n A_n xi_n cos(k_n . x + beta_n)."""
    points = np.atleast_2d(points)
    k = modes[0:3].T  # (N, 3)
    a = modes[3:6].T  # (N, 3)
    phase = points @ k.T + modes[6]  # (n, N)
    b = np.cos(phase) @ a
    b[:, 2] += 1.0
    return b


def step_reference(x: np.ndarray, v: np.ndarray, modes: np.ndarray, sign: float, dtau: float, rl: float):
    """One drift-kick-drift step for one particle; the kick solves dv/dtau = sign v x b
    with b frozen, as ``v <- expm(-sign dtau [b]_x) v``."""
    x = x + 0.5 * dtau * rl * v
    b = field_reference(modes, x[None, :])[0]
    cross = np.array([[0.0, -b[2], b[1]], [b[2], 0.0, -b[0]], [-b[1], b[0], 0.0]])  # [b]_x v = b x v
    v = expm(-sign * dtau * cross) @ v  # dv/dtau = sign v x b = -sign b x v
    x = x + 0.5 * dtau * rl * v
    return x, v


def helix(v0_perp: float, v0_par: float, tau: np.ndarray, rl: float, sign: float = 1.0):
    """Exact orbit in b = z_hat from the origin with v(0) = (v0_perp, 0, v0_par).

    dv/dtau = sign v x z_hat gives v = (v_perp cos tau, -sign v_perp sin tau, v_par)
    and x = rl (v_perp sin tau, sign v_perp (cos tau - 1), v_par tau).
    """
    tau = np.asarray(tau, dtype=float)
    x = rl * np.stack([v0_perp * np.sin(tau), sign * v0_perp * (np.cos(tau) - 1.0), v0_par * tau], axis=-1)
    v = np.stack([v0_perp * np.cos(tau), -sign * v0_perp * np.sin(tau), v0_par * np.ones_like(tau)], axis=-1)
    return x, v
