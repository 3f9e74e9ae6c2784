"""Estimators of the analysis: small pure functions of arrays, with named results.

Nothing here reads files or calls healpy's transforms: the inputs are the per-realisation
reductions of the streaming pass (pixel moments, means, packed cross-spectra; see
:mod:`crsky.analysis.dataset`) and the outputs are plain arrays in named containers,
from which :mod:`crsky.analysis.dataset` assembles the Dataset.

Index letters of the arrays: ``r`` realisation, ``g`` gradient, ``t`` snapshot, ``l``
multipole, ``k`` packed pair of the six component maps ``V = (x, y, z, p_x, p_y, p_z)``
(:data:`crsky.analysis.harmonics.PACKED_PAIRS`), ``i, j`` Cartesian components.
Definitions and units: docs/analysis.md and docs/conventions.md; the equations are
those of Mertsch & Ahlers (2015).

Units: lengths in ``L_c``, times ``T`` in ``L_c / c``, diffusion coefficients in
``L_c c``, gradients ``g`` in ``1 / L_c``; every power (``C_l``, noise, sum rules) is
dimensionless and scales as ``|g L_c|^2``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..bgk import bgk_ratio, fit_p
from ..errors import InputError
from .harmonics import quadratic_coefficients

__all__ = [
    "gradient_at_angle",
    "angle_gradient_name",
    "GYRO_AXES",
    "Gyrotropy",
    "gyrotropy",
    "FORM_PAIRS",
    "FORM_PAIR_NAMES",
    "GradientForms",
    "gradient_forms",
    "GRADIENT_PRESETS",
    "FIT_NSIGMA",
    "NOISE_MODELS",
    "component_maps",
    "diffusion_tensor",
    "relative_diffusion_tensor",
    "relative_intensity",
    "shot_noise",
    "noise_error",
    "resolve_gradients",
    "resolve_map_tensor",
    "mean_sem",
    "ratio_sem",
    "DiffusionTensors",
    "diffusion_tensors",
    "MapWeights",
    "map_weights",
    "EnsembleSpectra",
    "ensemble_spectra",
    "ShotNoise",
    "shot_noise_levels",
    "CoherentSplit",
    "coherent_split",
    "SumRule",
    "sum_rule",
    "SumRules",
    "sum_rules",
    "BGKFitResult",
    "fit_range",
    "fit_bgk",
    "fit_curve",
    "p_interval_text",
    "SteadyState",
    "steady_state",
    "STEADY_LMAX",
    "STEADY_NSIGMA",
]

#: Preset gradient directions ``grad n / n`` in ``1 / L_c`` (unit vectors).
GRADIENT_PRESETS: dict[str, tuple[float, float, float]] = {
    "parallel": (0.0, 0.0, 1.0),  # along B0 = z_hat
    "perpendicular": (1.0, 0.0, 0.0),  # along x_hat
}

#: Number of standard deviations of the noise that ``C_hat_l`` must exceed to enter the
#: BGK fit (contiguous run of multipoles from ``l = 2``).
FIT_NSIGMA = 1.0

#: Shot-noise definitions: Mertsch & Ahlers (2015), eq. 3.1, and its relative-diffusion
#: variant (``K~^s`` in place of ``K^s``).
NOISE_MODELS = ("eq3.1", "relative")


# ---------------------------------------------------------------------------------
# Single maps and single realisations
# ---------------------------------------------------------------------------------
def component_maps(x, p) -> np.ndarray:
    """The six component maps ``V = (x, y, z, p_x, p_y, p_z)``.

    Parameters
    ----------
    x : array_like, shape (n_time, npix, 3)
        ``x(-T)`` in ``L_c``.
    p : array_like, shape (n_time, npix, 3)
        ``p(-T)``, unit vectors.

    Returns
    -------
    numpy.ndarray, shape (n_time, npix, 6), float64
    """
    return np.concatenate([np.asarray(x, dtype=np.float64), np.asarray(p, dtype=np.float64)], axis=-1)


def diffusion_tensor(x, T) -> np.ndarray:
    """Running diffusion tensor of one realisation, ``K^s_ij = <x_i x_j>_pix / (2 T)``.

    Parameters
    ----------
    x : array_like, shape (n_time, npix, 3)
        ``x(-T)`` in ``L_c``.
    T : array_like, shape (n_time,)
        Backtracking time in ``L_c / c``.

    Returns
    -------
    numpy.ndarray, shape (n_time, 3, 3)
        In ``L_c c``. The ensemble ``K^s`` is the mean over realisations.
    """
    x = np.asarray(x, dtype=np.float64)
    return np.einsum("tpi,tpj->tij", x, x) / x.shape[1] / (2.0 * np.asarray(T, dtype=np.float64)[:, None, None])


def relative_diffusion_tensor(x, T) -> np.ndarray:
    """Relative diffusion tensor of one realisation (Mertsch & Ahlers 2015, eq. 2.4) by the sky-mean identity.

    The pixel-pair average over all ``N_pix^2`` ordered pairs ``(a, b)``,
    ``<(x_a - x_b)_i (x_a - x_b)_j>_pairs / (4 T)``, equals
    ``(<x_i x_j>_pix - xbar_i xbar_j) / (2 T)`` exactly, with ``xbar`` the sky mean
    (pairs ``a = b`` contribute zero; they carry weight ``1 / N_pix``, the continuum
    limit of the double integral of eq. 2.4).

    Parameters
    ----------
    x : array_like, shape (n_time, npix, 3)
        ``x(-T)`` in ``L_c``.
    T : array_like, shape (n_time,)
        Backtracking time in ``L_c / c``.

    Returns
    -------
    numpy.ndarray, shape (n_time, 3, 3)
        ``K~^s`` in ``L_c c``.
    """
    x = np.asarray(x, dtype=np.float64)
    xbar = x.mean(axis=1)
    second = np.einsum("tpi,tpj->tij", x, x) / x.shape[1]
    return (second - xbar[:, :, None] * xbar[:, None, :]) / (2.0 * np.asarray(T, dtype=np.float64)[:, None, None])


def relative_intensity(x, p, g, K) -> np.ndarray:
    """Relative intensity map of Mertsch & Ahlers (2015), eq. 2.1, ``dI = [x(-T) - 3 K p(-T)] . g``.

    Parameters
    ----------
    x, p : array_like, shape (..., npix, 3)
        ``x(-T)`` in ``L_c`` and ``p(-T)`` (unit vectors).
    g : array_like, shape (3,)
        Gradient ``grad n / n`` in ``1 / L_c``.
    K : array_like, shape (3, 3) or (..., 3, 3)
        Diffusion tensor in ``L_c c`` (enters as ``p_i K_ij g_j``).

    Returns
    -------
    numpy.ndarray, shape (..., npix)
        Dimensionless.
    """
    x = np.asarray(x, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    Kg = np.asarray(K, dtype=np.float64) @ g
    return x @ g - 3.0 * np.einsum("...pi,...i->...p", p, Kg)


def shot_noise(T, K, g, npix: int) -> np.ndarray:
    """Shot noise of Mertsch & Ahlers (2015), eq. 3.1, ``N = (4 pi / N_pix) 2 T g_i K^s_ij g_j``.

    Parameters
    ----------
    T : array_like
        Backtracking time in ``L_c / c``.
    K : array_like, shape (..., 3, 3)
        Running ``K^s(T)`` in ``L_c c``.
    g : array_like, shape (3,)
        Gradient in ``1 / L_c``.
    npix : int
        Pixels (particles) per map.

    Returns
    -------
    numpy.ndarray
        The white-noise level of ``C_l`` (dimensionless): ``2 T K^s g g`` is the pixel
        variance of ``dI`` at late times; spread evenly over the ``N_pix`` degrees of
        freedom of the map it gives ``4 pi / N_pix`` times that per ``C_l``.
    """
    g = np.asarray(g, dtype=np.float64)
    return 4.0 * np.pi / npix * 2.0 * np.asarray(T, dtype=np.float64) * np.einsum("...ij,i,j->...", K, g, g)


def noise_error(noise, ell, n_realisations: int) -> np.ndarray:
    """Noise standard deviation of ``<C_l>`` (and of ``C_hat_l``) over ``R`` realisations.

    For a map of white noise of power ``N`` the ``a_lm`` are independent Gaussians of
    variance ``N``, so ``C_l = sum_m |a_lm|^2 / (2l+1)`` is ``N chi^2_{2l+1} / (2l+1)``
    with variance ``2 N^2 / (2l+1)``; the mean of ``R`` independent realisations has
    variance ``2 N^2 / ((2l+1) R)``.

    Returns
    -------
    numpy.ndarray
        ``N sqrt(2 / ((2l+1) R))``, broadcast over ``noise[..., None]`` and ``ell``.
    """
    noise = np.asarray(noise, dtype=np.float64)
    ell = np.asarray(ell, dtype=np.float64)
    return noise[..., None] * np.sqrt(2.0 / ((2.0 * ell + 1.0) * n_realisations))


# ---------------------------------------------------------------------------------
# Gradients and the tensor of the map
# ---------------------------------------------------------------------------------
def resolve_gradients(gradients=None) -> dict[str, np.ndarray]:
    """Normalise the ``gradients`` argument to ``{name: vector}``.

    Parameters
    ----------
    gradients : None, str, mapping or sequence
        ``None``: both presets (``parallel`` = z_hat along B0, ``perpendicular`` =
        x_hat). A preset name, a mapping ``name -> 3-vector`` or a sequence of preset
        names and/or 3-vectors (named ``g0``, ``g1``, ... by position). Vectors are in
        ``1 / L_c`` and used as given (not normalised).

    Raises
    ------
    ValueError
        Unknown preset name, a vector that is not 3 finite numbers, or zero vector.
    """
    if gradients is None:
        gradients = list(GRADIENT_PRESETS)
    if isinstance(gradients, str):
        gradients = [gradients]
    if isinstance(gradients, dict):
        items = list(gradients.items())
    else:
        items = []
        for k, item in enumerate(gradients):
            if isinstance(item, str):
                items.append((item, item))
            else:
                items.append((f"g{k}", item))
    out: dict[str, np.ndarray] = {}
    for name, value in items:
        if isinstance(value, str):
            if value not in GRADIENT_PRESETS:
                raise InputError(f"unknown gradient {value!r}; presets: {', '.join(GRADIENT_PRESETS)}")
            value = GRADIENT_PRESETS[value]
        vec = np.asarray(value, dtype=np.float64)
        if vec.shape != (3,) or not np.all(np.isfinite(vec)) or not np.any(vec):
            raise InputError(f"gradient {name!r} = {value!r}: must be a non-zero vector of 3 finite numbers")
        out[str(name)] = vec
    if not out:
        raise InputError("no gradients given")
    return out


def gradient_at_angle(angle_deg: float) -> np.ndarray:
    """The gradient in the x-z plane at ``angle_deg`` to ``B0`` (+z), of the presets' magnitude.

    Parameters
    ----------
    angle_deg : float
        Angle between ``g`` and ``B0`` in degrees, ``0 <= angle_deg <= 180`` (0: the
        ``parallel`` preset, 90: ``perpendicular``).

    Returns
    -------
    numpy.ndarray, shape (3,)
        ``(sin a, 0, cos a)`` in ``1 / L_c`` (unit length, like :data:`GRADIENT_PRESETS`).

    Raises
    ------
    InputError
        Not a finite number in ``[0, 180]``.
    """
    try:
        a = float(angle_deg)
    except (TypeError, ValueError):
        raise InputError(f"gradient angle {angle_deg!r}: must be a number of degrees in [0, 180]") from None
    if not (math.isfinite(a) and 0.0 <= a <= 180.0):
        raise InputError(f"gradient angle {angle_deg!r}: must be between 0 and 180 degrees")
    rad = math.radians(a)
    magnitude = float(np.linalg.norm(GRADIENT_PRESETS["parallel"]))
    return magnitude * np.array([math.sin(rad), 0.0, math.cos(rad)])


def angle_gradient_name(angle_deg: float) -> str:
    """Name of the gradient at ``angle_deg`` to B0 in an analysis (``angle30``, ``angle22.5``)."""
    return f"angle{float(angle_deg):g}"


def resolve_map_tensor(K, Ks: np.ndarray) -> tuple[np.ndarray, str]:
    """The diffusion tensor of the map ``dI = [x - 3 K p] . g`` at each snapshot.

    Parameters
    ----------
    K : None, {"late", "running"} or array_like (3, 3)
        See :func:`crsky.analysis.analyze_run`.
    Ks : numpy.ndarray, shape (n_time, 3, 3)
        The ensemble ``K^s(T)`` in ``L_c c``.

    Returns
    -------
    K_map : numpy.ndarray, shape (n_time, 3, 3)
        In ``L_c c``.
    source : str
        How it was chosen (stored as the ``source`` attribute of ``K_map``).
    """
    if K is None or (isinstance(K, str) and K == "late"):
        return np.broadcast_to(Ks[-1], Ks.shape).copy(), "late: ensemble K^s at the last snapshot"
    if isinstance(K, str):
        if K == "running":
            return Ks.copy(), "running: ensemble K^s(T) at each snapshot"
        raise InputError(f"K = {K!r}: must be 'late', 'running' or a 3x3 tensor in L_c c")
    arr = np.asarray(K, dtype=np.float64)
    if arr.shape != (3, 3) or not np.all(np.isfinite(arr)):
        raise InputError(f"K = {K!r}: must be 'late', 'running' or a 3x3 tensor of finite numbers (L_c c)")
    return np.broadcast_to(arr, Ks.shape).copy(), "given: user-supplied 3x3 tensor"


# ---------------------------------------------------------------------------------
# Ensemble statistics
# ---------------------------------------------------------------------------------
def mean_sem(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and its standard error ``std(ddof=1) / sqrt(R)`` (NaN if R = 1)."""
    R = a.shape[0]
    mean = a.mean(axis=0)
    if R < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, a.std(axis=0, ddof=1) / math.sqrt(R)


def ratio_sem(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio of means ``<a>/<b>`` over axis 0 and its delta-method standard error.

    ``var(<a>/<b>) ~ var(a - rho b) / (R <b>^2)`` with ``rho = <a>/<b>``: the
    fluctuations that ``a`` and ``b`` share per realisation cancel.
    """
    R = a.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = a.mean(axis=0) / b.mean(axis=0)
        if R < 2:
            return rho, np.full_like(rho, np.nan)
        err = (a - rho * b).std(axis=0, ddof=1) / math.sqrt(R) / np.abs(b.mean(axis=0))
    return rho, err



# ---------------------------------------------------------------------------------
# Diffusion tensors
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusionTensors:
    """Running diffusion tensors of an ensemble, all in ``L_c c``.

    ``K^s = <x_i x_j>_pix / (2T)`` and the relative ``K~^s`` (Mertsch & Ahlers 2015,
    eq. 2.4; sky mean removed), per realisation (shape ``(R, n_time, 3, 3)``) and as the
    ensemble mean with its standard error (``(n_time, 3, 3)``). ``par`` is the ``zz``
    component (along ``B0``), ``perp`` the mean of ``xx`` and ``yy`` (``(n_time,)``).
    """

    Ks_r: np.ndarray
    Krel_r: np.ndarray
    Ks: np.ndarray
    Ks_err: np.ndarray
    Krel: np.ndarray
    Krel_err: np.ndarray
    par: np.ndarray
    par_err: np.ndarray
    perp: np.ndarray
    perp_err: np.ndarray
    rel_par: np.ndarray
    rel_par_err: np.ndarray
    rel_perp: np.ndarray
    rel_perp_err: np.ndarray


def diffusion_tensors(moments: np.ndarray, means: np.ndarray, T: np.ndarray) -> DiffusionTensors:
    """Diffusion tensors from the pixel moments of the component maps.

    Parameters
    ----------
    moments : numpy.ndarray, shape (R, n_time, 6, 6)
        ``<V_A V_B>_pix`` per realisation (the ``x`` block in ``L_c^2``).
    means : numpy.ndarray, shape (R, n_time, 6)
        ``<V_A>_pix`` per realisation.
    T : numpy.ndarray, shape (n_time,)
        Backtracking time in ``L_c / c``.
    """
    twoT = 2.0 * T
    Ks_r = moments[:, :, :3, :3] / twoT[None, :, None, None]
    Krel_r = (moments[:, :, :3, :3] - means[:, :, :3, None] * means[:, :, None, :3]) / twoT[None, :, None, None]
    Ks, Ks_err = mean_sem(Ks_r)
    Krel, Krel_err = mean_sem(Krel_r)
    par, par_err = mean_sem(Ks_r[..., 2, 2])
    perp, perp_err = mean_sem(0.5 * (Ks_r[..., 0, 0] + Ks_r[..., 1, 1]))
    rel_par, rel_par_err = mean_sem(Krel_r[..., 2, 2])
    rel_perp, rel_perp_err = mean_sem(0.5 * (Krel_r[..., 0, 0] + Krel_r[..., 1, 1]))
    return DiffusionTensors(Ks_r, Krel_r, Ks, Ks_err, Krel, Krel_err, par, par_err, perp, perp_err,
                            rel_par, rel_par_err, rel_perp, rel_perp_err)


# ---------------------------------------------------------------------------------
# Maps and their spectra
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapWeights:
    """The map ``dI = w . V`` of each gradient and snapshot.

    Attributes
    ----------
    G : numpy.ndarray, shape (n_grad, 3)
        Gradients in ``1 / L_c``.
    Kg : numpy.ndarray, shape (n_grad, n_time, 3)
        ``K_map g`` (dimensionless with ``c = 1``: ``L_c c / L_c``).
    w : numpy.ndarray, shape (n_grad, n_time, 6)
        ``(g, -3 K_map g)``.
    coefficients : numpy.ndarray, shape (n_grad, n_time, 21)
        ``(2 - delta_AB) w_A w_B`` on the packed pairs: ``C_l = coefficients . S_l``.
    """

    G: np.ndarray
    Kg: np.ndarray
    w: np.ndarray
    coefficients: np.ndarray


def map_weights(G: np.ndarray, K_map: np.ndarray) -> MapWeights:
    """Weights of the maps ``dI = [x - 3 K_map p] . g`` (eq. 2.1) for gradients ``G`` (n_grad, 3)."""
    Kg = np.einsum("tij,gj->gti", K_map, G)  # (G, t, 3)
    w = np.concatenate([np.broadcast_to(G[:, None, :], Kg.shape), -3.0 * Kg], axis=-1)  # (G, t, 6)
    return MapWeights(G, Kg, w, quadratic_coefficients(w))


class EnsembleSpectra(NamedTuple):
    """``C_l`` of every realisation (``cl_r``, (R, n_grad, n_time, L)), their mean ``cl``
    and its standard error ``cl_err`` (n_grad, n_time, L); dimensionless."""

    cl_r: np.ndarray
    cl: np.ndarray
    cl_err: np.ndarray


def ensemble_spectra(weights: MapWeights, spectra: np.ndarray) -> EnsembleSpectra:
    """``C_l = w^T S_l w`` of each realisation from its packed cross-spectra (R, n_time, L, 21)."""
    cl_r = np.einsum("gtk,rtlk->rgtl", weights.coefficients, spectra)
    cl, cl_err = mean_sem(cl_r)
    return EnsembleSpectra(cl_r, cl, cl_err)


class ShotNoise(NamedTuple):
    """Shot-noise levels (n_grad, n_time): ``eq31`` (Mertsch & Ahlers 2015, eq. 3.1,
    ``(4 pi / N_pix) 2T K^s g g``) and ``relative`` (``K~^s`` in place of ``K^s``)."""

    eq31: np.ndarray
    relative: np.ndarray

    def model(self, name: str) -> np.ndarray:
        """The level of one of :data:`NOISE_MODELS`."""
        return self.eq31 if name == "eq3.1" else self.relative


def shot_noise_levels(tensors: DiffusionTensors, G: np.ndarray, T: np.ndarray, npix: int) -> ShotNoise:
    """Both shot-noise levels of every gradient ``G`` (n_grad, 3) and snapshot (``T`` in ``L_c / c``)."""
    twoT = 2.0 * T
    Ksgg = np.einsum("tij,gi,gj->gt", tensors.Ks, G, G)
    Krelgg = np.einsum("tij,gi,gj->gt", tensors.Krel, G, G)
    return ShotNoise(4.0 * np.pi / npix * twoT[None, :] * Ksgg, 4.0 * np.pi / npix * twoT[None, :] * Krelgg)


@dataclass(frozen=True)
class CoherentSplit:
    """The ensemble spectrum split into the expected map and the rest (all (n_grad, n_time[, L])).

    ``<C_l> = cl_coherent + cl_relative`` exactly: ``cl_coherent`` is the spectrum of
    the expected map ``E[dI]`` (the standard-diffusion anisotropy, a dipole at late
    times), unbiased by the pair estimator ``(R C_l(<dI>) - <C_l>) / (R - 1)``;
    ``cl_relative`` that of ``dI - E[dI]`` (relative diffusion and shot noise).
    ``dipole_standard`` is ``C_1`` of the mean map ``<dI>`` (it carries
    ``(<C_1> - C_1(E dI)) / R`` of realisation scatter), ``dipole_unbiased`` the pair
    estimate of ``C_1(E dI)`` and ``dipole_theory`` ``4 pi |K_map g|^2`` (eq. 1.1).
    NaN where ``R = 1``.
    """

    dipole_standard: np.ndarray
    dipole_unbiased: np.ndarray
    dipole_theory: np.ndarray
    cl_coherent: np.ndarray
    cl_relative: np.ndarray


def coherent_split(weights: MapWeights, mean_spectra: np.ndarray, cl: np.ndarray, R: int) -> CoherentSplit:
    """:class:`CoherentSplit` from the packed cross-spectra of the mean maps (n_time, L, 21)."""
    coef = weights.coefficients
    dipole_standard = np.einsum("gtk,tk->gt", coef, mean_spectra[:, 1, :])
    dipole_theory = 4.0 * np.pi * np.einsum("gti,gti->gt", weights.Kg, weights.Kg)
    dipole_unbiased = (R * dipole_standard - cl[..., 1]) / (R - 1) if R > 1 else np.full_like(dipole_standard, np.nan)
    cl_mean_map = np.einsum("gtk,tlk->gtl", coef, mean_spectra)
    cl_coherent = (R * cl_mean_map - cl) / (R - 1) if R > 1 else np.full_like(cl, np.nan)
    return CoherentSplit(dipole_standard, dipole_unbiased, dipole_theory, cl_coherent, cl - cl_coherent)


# ---------------------------------------------------------------------------------
# Sum rules
# ---------------------------------------------------------------------------------
class SumRule(NamedTuple):
    """One sum rule ``LHS = RHS`` over the ensemble (each (n_grad, n_time), dimensionless):
    the mean LHS and its standard error, the mean RHS, the ratio of means and its
    delta-method standard error."""

    lhs: np.ndarray
    lhs_err: np.ndarray
    rhs: np.ndarray
    ratio: np.ndarray
    ratio_err: np.ndarray


def sum_rule(lhs_r: np.ndarray, rhs_r: np.ndarray) -> SumRule:
    """:class:`SumRule` from per-realisation sides (R, n_grad, n_time)."""
    lhs, lhs_err = mean_sem(lhs_r)
    rhs, _ = mean_sem(rhs_r)
    ratio, ratio_err = ratio_sem(lhs_r, rhs_r)
    return SumRule(lhs, lhs_err, rhs, ratio, ratio_err)


@dataclass(frozen=True)
class SumRules:
    """The sum rules of Mertsch & Ahlers (2015), eqs. 2.5-2.7.

    ``total`` (eq. 2.5, LHS = pixel variance ``<dI^2>_pix``, the sum over all ``l`` by
    Parseval on the pixelised sky), ``total_harmonic`` (LHS summed to ``lmax``),
    ``monopole`` (eq. 2.6, LHS ``<C_0>/4pi``), ``monopole_pixel`` (LHS the squared sky
    mean), ``higher`` (eq. 2.7, LHS the variance about the sky mean), ``higher_harmonic``
    (LHS summed over ``1 <= l <= lmax``); ``correction`` is the expected late-time
    excess of ``total.ratio`` over 1 from the ``-3 K p`` term,
    ``9 |K_map g|^2 / (2T K^s g g)``.
    """

    total: SumRule
    total_harmonic: SumRule
    monopole: SumRule
    monopole_pixel: SumRule
    higher: SumRule
    higher_harmonic: SumRule
    correction: np.ndarray


def sum_rules(cl_r: np.ndarray, weights: MapWeights, moments: np.ndarray, means: np.ndarray,
              tensors: DiffusionTensors, T: np.ndarray) -> SumRules:
    """Both sides of eqs. 2.5-2.7 per realisation, then :func:`sum_rule` of each.

    Parameters
    ----------
    cl_r : numpy.ndarray, shape (R, n_grad, n_time, L)
        ``C_l`` per realisation (:func:`ensemble_spectra`).
    weights : MapWeights
    moments, means : numpy.ndarray
        Pixel moments (R, n_time, 6, 6) and means (R, n_time, 6) of the component maps.
    tensors : DiffusionTensors
    T : numpy.ndarray, shape (n_time,)
        Backtracking time in ``L_c / c``.
    """
    G, w = weights.G, weights.w
    twoT = 2.0 * T
    ell = np.arange(cl_r.shape[-1])
    wt = (2.0 * ell + 1.0) / (4.0 * np.pi)
    lhs_total_r = np.einsum("rgtl,l->rgt", cl_r, wt)
    lhs_high_r = np.einsum("rgtl,l->rgt", cl_r[..., 1:], wt[1:])
    lhs_mono_r = cl_r[..., 0] / (4.0 * np.pi)
    var_pix_r = np.einsum("gta,rtab,gtb->rgt", w, moments, w)
    mono_pix_r = np.einsum("gta,rta->rgt", w, means) ** 2
    rhs_total_r = np.einsum("rtij,gi,gj->rgt", tensors.Ks_r, G, G) * twoT[None, None, :]
    rhs_high_r = np.einsum("rtij,gi,gj->rgt", tensors.Krel_r, G, G) * twoT[None, None, :]
    rhs_mono_r = rhs_total_r - rhs_high_r
    total = sum_rule(var_pix_r, rhs_total_r)
    return SumRules(
        total=total,
        total_harmonic=sum_rule(lhs_total_r, rhs_total_r),
        monopole=sum_rule(lhs_mono_r, rhs_mono_r),
        monopole_pixel=sum_rule(mono_pix_r, rhs_mono_r),
        higher=sum_rule(var_pix_r - mono_pix_r, rhs_high_r),
        higher_harmonic=sum_rule(lhs_high_r, rhs_high_r),
        correction=9.0 * np.einsum("gti,gti->gt", weights.Kg, weights.Kg) / total.rhs,
    )


# ---------------------------------------------------------------------------------
# BGK fit
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BGKFitResult:
    """The BGK fit of one gradient at one snapshot (dimensionless).

    ``p`` with its symmetrised error ``p_err`` and 1-sigma bounds ``p_lo``, ``p_hi``;
    ``clipped_lo`` / ``clipped_hi``: the ``delta chi^2 = 1`` interval ran into the
    boundary 0 / 1 of the ansatz's range, so that bound is the boundary, not a
    measurement; ``norm`` the fitted normalisation ``A`` of ``A C_l/C_1``; ``chi2_dof``;
    the fitted multipoles ``lmin..lmax`` (-1 without a fit); ``status`` in words (for
    "no fit", why). NaN without a fit.
    """

    p: float = math.nan
    p_err: float = math.nan
    p_lo: float = math.nan
    p_hi: float = math.nan
    chi2_dof: float = math.nan
    norm: float = math.nan
    lmin: int = -1
    lmax: int = -1
    status: str = "no fit"
    clipped_lo: bool = False
    clipped_hi: bool = False

    @property
    def clipped_flag(self) -> int:
        """0: interval not clipped, 1: clipped at 0, 2: clipped at 1, 3: both (CF flag)."""
        return int(self.clipped_lo) + 2 * int(self.clipped_hi)

    def interval_text(self) -> str:
        """``p = 0.81 (0.42 .. 1, clipped at 1)``: best p and its 1-sigma interval, or why there is none."""
        if not math.isfinite(self.p):
            return self.status
        return p_interval_text(self.p, self.p_lo, self.p_hi, self.clipped_lo, self.clipped_hi)


def p_interval_text(p: float, p_lo: float, p_hi: float, clipped_lo: bool, clipped_hi: bool) -> str:
    """``p = 0.81 (0.42 .. 1, clipped at 1)``: a fitted ``p`` with its 1-sigma interval, an
    end that ran into the boundary of ``0 < p < 1`` written as that boundary and flagged.
    The one formatting of the interval (table, figures)."""
    def end(value, clipped, boundary):
        if clipped:
            return boundary
        return f"{value:.2f}" if value is not None and math.isfinite(value) else "?"

    clipped = [b for b, c in (("0", clipped_lo), ("1", clipped_hi)) if c]
    note = f", clipped at {' and '.join(clipped)}" if clipped else ""
    return f"p = {p:.2f} ({end(p_lo, clipped_lo, '0')} .. {end(p_hi, clipped_hi, '1')}{note})"


def fit_range(cl_hat: np.ndarray, noise_sigma: np.ndarray, nsigma: float = FIT_NSIGMA) -> int:
    """Last multipole of the BGK fit: the end of the contiguous run from ``l = 2`` with
    ``C_hat_l > nsigma * noise_sigma_l`` (1 if ``C_hat_2`` is already below)."""
    lmax_fit = 1
    for ell in range(2, cl_hat.size):
        if not cl_hat[ell] > nsigma * noise_sigma[ell]:
            break
        lmax_fit = ell
    return lmax_fit


def fit_bgk(cl_hat: np.ndarray, noise_sigma: np.ndarray, nsigma: float = FIT_NSIGMA,
            sigma: np.ndarray | None = None, free_norm: bool = True) -> BGKFitResult:
    """Fit the BGK exponent p to ``C_hat_l / C_hat_1`` (one gradient, one snapshot).

    The multipoles used are ``l = 2`` up to the last one before ``C_hat_l`` first drops
    below ``nsigma`` times the noise standard deviation ``noise_sigma``. The errors of
    the fit are ``sigma`` (default ``noise_sigma``): the analysis passes the standard
    error of ``<C_l>`` over realisations, which holds shot noise *and* cosmic variance;
    the noise alone underestimates the error where the spectrum is far above the noise.
    ``free_norm=False`` fixes the ratio at ``l = 1`` to 1 (the dipole enters the fit;
    the error of ``C_hat_1`` is then neglected). A fit that fails is reported in
    ``status`` (and warned about), never raised: it must not lose the analysis.
    """
    sigma = noise_sigma if sigma is None or not np.all(np.isfinite(sigma[1:])) else sigma
    if cl_hat.size < 5:
        return BGKFitResult(status=f"no fit: lmax = {cl_hat.size - 1} < 4 (3 multipoles l >= 2 are needed)")
    if not cl_hat[1] > 0:
        return BGKFitResult(status=f"no fit: C_hat_1 = {cl_hat[1]:.3g} <= 0 (dipole not above the shot noise)")
    lmax_fit = fit_range(cl_hat, noise_sigma, nsigma)
    if lmax_fit < 4:
        above = {1: "none", 2: "only l = 2"}.get(lmax_fit, f"only l = 2..{lmax_fit}")
        return BGKFitResult(status=f"no fit: fewer than 3 multipoles l >= 2 above {nsigma:g} sigma of the noise "
                            f"(C_hat_l > {nsigma:g} noise_err_l, {above})")
    ells = np.arange(2, lmax_fit + 1)
    ratio = cl_hat[ells] / cl_hat[1]
    # With a free normalisation fit_p absorbs the common factor C_hat_1 and its
    # fluctuation: the errors are those of C_hat_l alone, over C_hat_1.
    ratio_err = sigma[ells] / cl_hat[1]
    try:
        fit = fit_p(ells, ratio, ratio_err, lmin=2, lmax=lmax_fit, free_norm=free_norm)
    except Exception as exc:  # noqa: BLE001 - reported in the status
        warnings.warn(f"BGK fit failed: {exc}", RuntimeWarning, stacklevel=2)
        return BGKFitResult(lmin=2, lmax=lmax_fit, status=f"fit failed: {exc}")
    boundary = " (p at the boundary of (0, 1))" if fit.at_boundary else ""
    # fit_p clips an interval end that does not reach delta chi^2 = 1 inside (0, 1)
    # to exactly 0 or 1 (bgk._delta_chi2_interval)
    clipped_lo = bool(fit.interval_clipped and fit.p_lo <= 0.0)
    clipped_hi = bool(fit.interval_clipped and fit.p_hi >= 1.0)
    clip = [b for b, c in (("0", clipped_lo), ("1", clipped_hi)) if c]
    clip_text = f", interval clipped at {' and '.join(clip)}" if clip else ""
    return BGKFitResult(
        p=float(fit.p), p_err=float(fit.p_err), p_lo=float(fit.p_lo), p_hi=float(fit.p_hi),
        chi2_dof=float(fit.chi2_dof), norm=float(fit.norm), lmin=int(fit.ell_min), lmax=int(fit.ell_max),
        status=f"fitted l = {int(fit.ell_min)}..{int(fit.ell_max)}, chi2/dof = {float(fit.chi2_dof):.3g}"
               f"{boundary}{clip_text}",
        clipped_lo=clipped_lo, clipped_hi=clipped_hi,
    )


def fit_curve(fit: BGKFitResult, lmax: int) -> np.ndarray:
    """The fitted curve ``A C_l/C_1`` (eq. 4.7 at the fitted ``p``) for ``l = 0..lmax``.

    Returns
    -------
    numpy.ndarray, shape (lmax + 1,)
        In units of ``C_hat_1``; NaN at ``l = 0`` and everywhere without a fit.
    """
    curve = np.full(lmax + 1, np.nan)
    if math.isfinite(fit.p):
        curve[1:] = fit.norm * bgk_ratio(fit.p, lmax)
    return curve


# ---------------------------------------------------------------------------------
# Steady state of the spectrum's shape
# ---------------------------------------------------------------------------------
#: Multipoles ``l = 2 .. STEADY_LMAX`` whose shape ``C_hat_l / C_hat_1`` is compared.
STEADY_LMAX = 4
#: Largest difference of the dipole and the shape from the last snapshot, in combined
#: standard errors, for a snapshot to agree with it (:func:`steady_state`).
STEADY_NSIGMA = 2.0


@dataclass(frozen=True)
class SteadyState:
    """The steady-state test of one gradient (:func:`steady_state`).

    ``steady``: the spectrum is constant from ``t_early`` on (``onset <= t_early``);
    ``tested``: the test could be made (two snapshots, ``lmax >= 2``, standard errors,
    the last snapshot measured); ``t_early``, ``t_late``: the snapshot nearest half the
    last time and the last snapshot (``Omega T``); ``max_sigma``: the largest difference
    from the last snapshot over the snapshots from ``t_early`` on, in standard errors
    (NaN if not tested; infinite where a snapshot there is not measured); ``onset``: the
    earliest snapshot ``Omega T`` from which the dipole and the shape agree with the last
    snapshot (NaN: never, or not tested); ``onset_dipole``, ``onset_shape``: the same for
    ``C_hat_1`` alone and for ``C_hat_l / C_hat_1`` alone (``onset`` is the later of the
    two); ``status`` in words.
    """

    steady: bool
    tested: bool
    t_early: float
    t_late: float
    max_sigma: float
    status: str
    onset: float = math.nan
    onset_dipole: float = math.nan
    onset_shape: float = math.nan


def _onset_index(agree: np.ndarray) -> int | None:
    """Index of the earliest snapshot from which every snapshot before the last agrees.

    ``agree`` (n_time - 1,) says whether snapshot ``k`` agrees with the last one; the
    result is the start of the unbroken run of ``True`` that ends at the last snapshot,
    or None when the snapshot before the last already disagrees (never steady).
    """
    n = agree.size
    if n == 0 or not agree[-1]:
        return None
    k = n - 1
    while k > 0 and agree[k - 1]:
        k -= 1
    return k


def steady_state(t_omega, cl_hat, cl_err, noise_err, lmax_test: int = STEADY_LMAX,
                 nsigma: float = STEADY_NSIGMA) -> SteadyState:
    """From which snapshot the dipole and the shape of the spectrum are constant (one gradient).

    The test. Let ``k_last`` be the last snapshot. The quantities are the noise-subtracted
    ensemble dipole ``C_hat_1 = <C_1> - N`` (error ``cl_err_1``, the standard error over
    realisations) and the shape ``r_l = C_hat_l / C_hat_1``, ``l = 2 .. lmax_test``
    (errors ``cl_err_l / C_hat_1``, those of the BGK fit). Snapshot ``k`` *agrees* when
    it is measured (the dipole: ``C_hat_1 > 0``; the shape: also ``C_hat_l >
    noise_err_l`` for ``l = 2 .. lmax_test``) and every quantity differs from its value at ``k_last`` by at most
    ``nsigma`` times the two standard errors added in quadrature. The **onset** is the
    time of the earliest snapshot ``k`` such that every snapshot from ``k`` to
    ``k_last - 1`` agrees; it is NaN when ``k_last - 1`` already disagrees (never
    steady) and when the last snapshot is not measured (not tested). The onset of the
    dipole alone and of the shape alone are computed the same way; the onset is the
    later of the two. The spectrum is **steady** when the onset is at or before the
    snapshot nearest ``T_last / 2`` (in ``log T``): constant over at least the last
    factor of about 2 in time. This is the one test; the flag is read off the onset.

    Correlation: every snapshot is made of the same trajectories at another time, so
    the errors of two snapshots are positively correlated (the more, the closer in
    time) and adding them in quadrature overestimates the error of the difference. The
    test therefore errs towards agreement: towards an early onset and "steady". A drift
    smaller than the errors of one snapshot is not seen.

    Parameters
    ----------
    t_omega : array_like, shape (n_time,)
        Snapshot times ``Omega T``, increasing.
    cl_hat, cl_err, noise_err : array_like, shape (n_time, lmax + 1)
        ``C_hat_l``, the standard error of ``<C_l>`` and the noise error (dimensionless).
    lmax_test : int
        Highest multipole of the shape.
    nsigma : float
        Agreement in combined standard errors.

    Returns
    -------
    SteadyState
        Times in ``Omega T``.
    """
    t = np.asarray(t_omega, dtype=np.float64)
    cl_hat, cl_err, noise_err = (np.asarray(a, dtype=np.float64) for a in (cl_hat, cl_err, noise_err))
    last = t.size - 1
    top = min(int(lmax_test), cl_hat.shape[-1] - 1)
    if t.size < 2 or top < 2:
        return SteadyState(False, False, math.nan, float(t[-1]), math.nan,
                           "not tested: needs 2 snapshots and lmax >= 2")
    early = int(np.argmin(np.abs(np.log(t[:last] / (0.5 * t[last])))))
    ells = np.arange(2, top + 1)
    span = f"t Omega = {t[early]:.3g} .. {t[last]:.3g}"
    with np.errstate(divide="ignore", invalid="ignore"):
        dipole_measured = cl_hat[:, 1] > 0
        measured = dipole_measured & np.all(cl_hat[:, ells] > noise_err[:, ells], axis=1)
        if not measured[last]:
            return SteadyState(False, False, float(t[early]), float(t[last]), math.nan,
                               f"not steady: the dipole or the shape (l = 2..{top}) is not above the noise at the last "
                               f"snapshot, t Omega = {t[last]:.3g}")
        r = cl_hat[:, ells] / cl_hat[:, 1:2]
        e = cl_err[:, ells] / cl_hat[:, 1:2]
        if not (np.all(np.isfinite(e[last])) and np.all(e[last] > 0) and cl_err[last, 1] > 0):
            return SteadyState(False, False, float(t[early]), float(t[last]), math.nan,
                               "not tested: no standard errors (one realisation)")
        sig_shape = np.abs(r[:last] - r[last]) / np.hypot(e[:last], e[last])  # (last, n_ell)
        sig_dipole = np.abs(cl_hat[:last, 1] - cl_hat[last, 1]) / np.hypot(cl_err[:last, 1], cl_err[last, 1])
    # an unmeasured snapshot (or one without errors) never agrees
    sig_shape = np.where(measured[:last, None] & np.isfinite(sig_shape), sig_shape, np.inf)
    sig_dipole = np.where(dipole_measured[:last] & np.isfinite(sig_dipole), sig_dipole, np.inf)
    k_dipole = _onset_index(sig_dipole <= nsigma)
    k_shape = _onset_index(np.all(sig_shape <= nsigma, axis=1))
    k_both = None if k_dipole is None or k_shape is None else max(k_dipole, k_shape)
    onset_of = (lambda k: math.nan if k is None else float(t[k]))
    window = np.maximum(sig_dipole[early:], sig_shape[early:].max(axis=1))
    worst = float(window.max())
    onset_text = (f"onset t Omega = {t[k_both]:.3g}" if k_both is not None else "never constant")
    parts = (f"dipole from {onset_of(k_dipole):.3g}, shape from {onset_of(k_shape):.3g}"
             .replace("from nan", "never"))
    common = dict(t_early=float(t[early]), t_late=float(t[last]), max_sigma=worst, onset=onset_of(k_both),
                  onset_dipole=onset_of(k_dipole), onset_shape=onset_of(k_shape))
    if k_both is not None and k_both <= early:
        return SteadyState(True, True, status=(
            f"steady: C_hat_1 and C_hat_l/C_hat_1 (l = 2..{top}) equal to the last snapshot within {nsigma:g} sigma "
            f"at every snapshot of {span} (largest difference {worst:.2g} sigma), {onset_text} ({parts})"), **common)
    if k_both is None:
        reason = f"never constant within {nsigma:g} sigma ({parts})"
    else:
        reason = f"{onset_text} is later than t Omega = {t[early]:.3g}, half the last time ({parts})"
    return SteadyState(False, True, status=f"not steady: {reason}", **common)


# ---------------------------------------------------------------------------------
# Gyrotropy and quadratic forms in the gradient
# ---------------------------------------------------------------------------------
#: Axes of the gyrotropic decomposition: the regular field B0 (+z) and the total field
#: B(0) = B0 + dB(0) at the observer, one per realisation.
GYRO_AXES = ("B0", "local")


@dataclass(frozen=True)
class Gyrotropy:
    """Power of the ``m = 0`` modes about an axis (gyrotropic) and the rest, per ``l``.

    All arrays (n_axes, n_grad, n_time, L), dimensionless (``|g| = 1 / L_c``):
    ``gyro`` is ``<a'_l0^2 / (2l+1)>`` over realisations, ``rest = <C_l> - gyro`` (the
    ``m != 0`` power); ``fraction = gyro / <C_l>`` with its delta-method error.
    """

    gyro: np.ndarray
    gyro_err: np.ndarray
    rest: np.ndarray
    rest_err: np.ndarray
    fraction: np.ndarray
    fraction_err: np.ndarray


def gyrotropy(weights: MapWeights, axial: np.ndarray, cl_r: np.ndarray) -> Gyrotropy:
    """:class:`Gyrotropy` of the maps ``dI = w . V`` of every realisation.

    Parameters
    ----------
    weights : MapWeights
        ``w`` (n_grad, n_time, 6) of the maps.
    axial : numpy.ndarray, shape (R, n_time, n_axes, L, 6)
        ``a'_l0`` of the six component maps about each axis
        (:func:`crsky.analysis.harmonics.component_harmonics`).
    cl_r : numpy.ndarray, shape (R, n_grad, n_time, L)
        ``C_l`` of each realisation's map.
    """
    ell = np.arange(axial.shape[3])
    a0 = np.einsum("gtc,rtalc->ragtl", weights.w, axial)  # the maps are linear in V: so is a'_l0
    power_r = a0**2 / (2.0 * ell + 1.0)
    rest_r = cl_r[:, None] - power_r
    gyro, gyro_err = mean_sem(power_r)
    rest, rest_err = mean_sem(rest_r)
    fraction, fraction_err = ratio_sem(power_r, np.broadcast_to(cl_r[:, None], power_r.shape))
    return Gyrotropy(gyro, gyro_err, rest, rest_err, fraction, fraction_err)


#: Packed pairs ``(i, j), i <= j`` of a symmetric 3 x 3 form in the gradient.
FORM_PAIRS = np.triu_indices(3)
#: Their names (coordinate ``pair`` of the analysis file).
FORM_PAIR_NAMES = tuple("xyz"[i] + "xyz"[j] for i, j in zip(*FORM_PAIRS))


class GradientForms(NamedTuple):
    """``<C_l>`` and the standard dipole as quadratic forms in the gradient ``g``.

    The map ``dI = V . w`` with ``w = M g``, ``M = (1; -3 K_map)`` (6 x 3), so
    ``C_l(g) = g^T Q_l g`` with ``Q_l = M^T S_l M``. ``cl`` (n_time, L, 3, 3): the
    ensemble mean ``<Q_l>``; ``cl_cov`` (n_time, L, 6, 6): covariance of the mean of the
    packed forms (``FORM_PAIRS``; the variance of ``<C_l>(g)`` is ``c^T cl_cov c`` with
    ``c = (2 - delta_ij) g_i g_j``); ``dipole_standard`` (n_time, 3, 3): the form of
    ``C_1`` of the realisation-averaged map. Dimensionless per ``(1/L_c)^2``.
    """

    cl: np.ndarray
    cl_cov: np.ndarray
    dipole_standard: np.ndarray


def _unpack(S: np.ndarray) -> np.ndarray:
    """Packed 21-component cross-spectra (..., 21) -> symmetric (..., 6, 6)."""
    from .harmonics import PACKED_PAIRS

    full = np.zeros(S.shape[:-1] + (6, 6))
    full[..., PACKED_PAIRS[0], PACKED_PAIRS[1]] = S
    full[..., PACKED_PAIRS[1], PACKED_PAIRS[0]] = S
    return full


def gradient_forms(K_map: np.ndarray, spectra: np.ndarray, mean_spectra: np.ndarray) -> GradientForms:
    """:class:`GradientForms` from the packed cross-spectra of every realisation
    (R, n_time, L, 21) and of the mean maps (n_time, L, 21); ``K_map`` (n_time, 3, 3) in ``L_c c``."""
    M = np.concatenate([np.broadcast_to(np.eye(3), K_map.shape), -3.0 * K_map], axis=1)  # (t, 6, 3)
    R, n_time, L, _ = spectra.shape
    mean = np.empty((n_time, L, 3, 3))
    cov = np.full((n_time, L, 6, 6), np.nan)
    for t in range(n_time):  # one snapshot at a time: the unpacked 6 x 6 of every realisation stays small
        Q_r = M[t].T @ (_unpack(spectra[:, t]) @ M[t])  # (R, L, 3, 3)
        mean[t] = Q_r.mean(axis=0)
        if R > 1:
            dev = Q_r[..., FORM_PAIRS[0], FORM_PAIRS[1]] - mean[t][..., FORM_PAIRS[0], FORM_PAIRS[1]]
            cov[t] = np.einsum("rla,rlb->lab", dev, dev) / ((R - 1) * R)
    dipole = np.einsum("tai,tab,tbj->tij", M, _unpack(mean_spectra[:, 1]), M)
    return GradientForms(mean, cov, dipole)
