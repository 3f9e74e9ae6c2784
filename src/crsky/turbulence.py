"""Synthetic turbulent magnetic fields by the harmonic method (docs/conventions.md, "Turbulent field").

    B(x) / B0 = z_hat + sum_n A_n xi_n cos(k_n k_hat_n . x + beta_n)

A realisation is flattened once into a ``(7, N)`` float64 array of per-mode values
(rows: ``k_x, k_y, k_z`` in ``1/L_c``; ``A xi_x, A xi_y, A xi_z`` in ``B0``;
``beta`` in rad), the layout every kernel consumes. It is fully determined by
``(TurbulenceConfig, seed, realisation index)``: the random numbers come from
``numpy.random.Generator(PCG64(SeedSequence([seed, index])))`` in a fixed order, so
realisation ``j`` is the same alone, inside a run, on any worker and any backend.

Spectra. ``gamma`` is the index of the isotropic 3D spectrum. With log-spaced
``k_n`` the weight of mode ``n`` is the energy per ``ln k``,

    G_n = k_n^d / (1 + (k_n L_c)^(gamma + d - 3)),

with ``d = 3`` (isotropic), ``d = 1`` (slab) and ``d = 2`` (2D). For ``d = 3`` this
is the ``k^3 / (1 + (k L_c)^gamma)`` of Mertsch & Ahlers (2015), section 3; the slab
and 2D forms are the reduced spectra with the same inertial range, energy per ``ln k`` falling as
``k^-(gamma - 3)`` (Kolmogorov: the familiar slab ``k^-5/3`` and 2D ``k^-8/3``).
Amplitudes are normalised so that ``sum_n A_n^2 = 2 sigma2``: the spatial mean of
``|dB|^2`` is then ``sigma2 B0^2``.

Geometries (the standard ones of Matthaeus et al. 1990, Giacalone & Jokipii 1999):

- ``isotropic``: ``k_hat`` uniform on the sphere, ``xi`` perpendicular to ``k_hat``
  at a uniform random angle;
- ``slab``: ``k_hat = z_hat``, ``xi`` in the x-y plane at a uniform random angle;
- ``2d``: ``k_hat`` in the x-y plane at a uniform random angle, ``xi = z_hat x
  k_hat`` (so dB is perpendicular to B0 and to k);
- ``composite``: ``n_modes // 2`` slab modes carrying ``slab_fraction`` of
  ``sigma2`` and the rest 2D modes carrying the remainder, both over the full range.

In every geometry ``k . xi = 0`` exactly, so ``div B = 0``.
"""

from __future__ import annotations

import numpy as np

from .config import TurbulenceConfig

__all__ = [
    "MODE_ROWS",
    "wavenumbers",
    "spectrum_weights",
    "make_modes",
    "local_field_direction",
    "realisation_rng",
    "field",
]

#: Row names of the ``(7, N)`` per-mode array.
MODE_ROWS = ("kx", "ky", "kz", "ax", "ay", "az", "beta")

_DIMENSION = {"isotropic": 3, "slab": 1, "2d": 2}


def realisation_rng(seed: int, realisation: int) -> np.random.Generator:
    """The random generator of realisation ``realisation`` of a run with ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(realisation)])))


def wavenumbers(lambda_min: float, lambda_max: float, n_modes: int) -> np.ndarray:
    """Log-spaced wavenumbers from ``2 pi / lambda_max`` to ``2 pi / lambda_min``.

    Both ends are included (a single mode sits at the geometric mean). Units: ``1/L_c``
    for wavelengths in ``L_c``.
    """
    k_min, k_max = 2 * np.pi / lambda_max, 2 * np.pi / lambda_min
    if n_modes == 1:
        return np.array([np.sqrt(k_min * k_max)])
    return np.geomspace(k_min, k_max, n_modes)


def spectrum_weights(k: np.ndarray, gamma: float, dimension: int = 3) -> np.ndarray:
    """Energy per ``ln k`` of each mode, ``k^d / (1 + k^(gamma + d - 3))`` (k in ``1/L_c``).

    Evaluated in log space so that large ``k`` and ``gamma`` cannot overflow.
    """
    logk = np.log(k)
    exponent = gamma + dimension - 3.0
    return np.exp(dimension * logk - np.logaddexp(0.0, exponent * logk))


def _perpendicular_basis(khat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing ``khat`` to a right-handed orthonormal basis."""
    # Pick the coordinate axis least aligned with khat to avoid a degenerate cross product.
    axis = np.zeros_like(khat)
    axis[np.arange(len(khat)), np.argmin(np.abs(khat), axis=1)] = 1.0
    e1 = np.cross(khat, axis)
    e1 /= np.linalg.norm(e1, axis=1)[:, None]
    e2 = np.cross(khat, e1)
    return e1, e2


def _geometry_modes(
    rng: np.random.Generator, geometry: str, k: np.ndarray, gamma: float, energy: float
) -> np.ndarray:
    """Per-mode array for one pure geometry; draws in a fixed order from ``rng``."""
    n = len(k)
    if geometry == "isotropic":
        cos_theta = rng.uniform(-1.0, 1.0, n)
        phi = rng.uniform(0.0, 2 * np.pi, n)
        alpha = rng.uniform(0.0, 2 * np.pi, n)
        sin_theta = np.sqrt(1.0 - cos_theta**2)
        khat = np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], axis=1)
        e1, e2 = _perpendicular_basis(khat)
        xi = np.cos(alpha)[:, None] * e1 + np.sin(alpha)[:, None] * e2
    elif geometry == "slab":
        alpha = rng.uniform(0.0, 2 * np.pi, n)
        khat = np.tile([0.0, 0.0, 1.0], (n, 1))
        xi = np.stack([np.cos(alpha), np.sin(alpha), np.zeros(n)], axis=1)
    elif geometry == "2d":
        phi = rng.uniform(0.0, 2 * np.pi, n)
        khat = np.stack([np.cos(phi), np.sin(phi), np.zeros(n)], axis=1)
        xi = np.stack([-np.sin(phi), np.cos(phi), np.zeros(n)], axis=1)  # z_hat x khat
    else:  # pragma: no cover - validated by the config
        raise ValueError(f"unknown geometry {geometry!r}")
    beta = rng.uniform(0.0, 2 * np.pi, n)
    weights = spectrum_weights(k, gamma, _DIMENSION[geometry])
    amplitude = np.sqrt(2.0 * energy * weights / weights.sum())
    modes = np.empty((7, n))
    modes[0:3] = (k[:, None] * khat).T
    modes[3:6] = (amplitude[:, None] * xi).T
    modes[6] = beta
    return modes


def make_modes(turbulence: TurbulenceConfig, seed: int, realisation: int) -> np.ndarray:
    """The per-mode array of one field realisation.

    Parameters
    ----------
    turbulence : TurbulenceConfig
        Spectrum and geometry.
    seed : int
        Run seed.
    realisation : int
        Realisation index ``j >= 0``.

    Returns
    -------
    numpy.ndarray, shape (7, N), float64, C-contiguous
        Rows ``kx, ky, kz`` (1/L_c), ``ax, ay, az`` (``A_n xi_n`` in B0), ``beta`` (rad).
    """
    if realisation < 0:
        raise ValueError(f"realisation = {realisation}: must be >= 0")
    t = turbulence
    rng = realisation_rng(seed, realisation)
    if t.geometry == "composite":
        n_slab = t.n_modes // 2
        slab = _geometry_modes(
            rng, "slab", wavenumbers(t.lambda_min, t.lambda_max, n_slab), t.gamma,
            t.sigma2 * t.slab_fraction,
        )
        two_d = _geometry_modes(
            rng, "2d", wavenumbers(t.lambda_min, t.lambda_max, t.n_modes - n_slab), t.gamma,
            t.sigma2 * (1.0 - t.slab_fraction),
        )
        modes = np.concatenate([slab, two_d], axis=1)
    else:
        modes = _geometry_modes(
            rng, t.geometry, wavenumbers(t.lambda_min, t.lambda_max, t.n_modes), t.gamma, t.sigma2
        )
    return np.ascontiguousarray(modes)


def field(modes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Total field ``B / B0`` (regular plus turbulent) at arbitrary points.

    Parameters
    ----------
    modes : numpy.ndarray, shape (7, N)
        Per-mode array from :func:`make_modes`.
    points : array_like, shape (..., 3)
        Positions in ``L_c``.

    Returns
    -------
    numpy.ndarray, shape (..., 3)
        ``B / B0``; the regular part is ``z_hat``.
    """
    from .backends import get_backend

    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"points must have a last axis of length 3, got shape {points.shape}")
    flat = np.ascontiguousarray(points.reshape(-1, 3))
    out = get_backend("cpu").field_at_points(modes, flat)
    return out.reshape(points.shape)


def local_field_direction(turbulence: TurbulenceConfig, seed: int, realisation: int) -> np.ndarray:
    """Direction of the total field at the observer, ``B(0) / |B(0)|``, of one realisation.

    ``B(0) / B0 = z_hat + dB(0) / B0`` with the realisation's modes
    (:func:`make_modes`) evaluated by :func:`field` at ``x = 0``; the observer sits at the
    origin, where every trajectory starts.

    Parameters
    ----------
    turbulence : TurbulenceConfig
        Spectrum and geometry of the run.
    seed : int
        Run seed.
    realisation : int
        Realisation index.

    Returns
    -------
    numpy.ndarray, shape (3,)
        Unit vector in the simulation frame (``B0`` along ``+z``), dimensionless.
    """
    b = field(make_modes(turbulence, seed, realisation), np.zeros(3))
    return b / np.linalg.norm(b)
