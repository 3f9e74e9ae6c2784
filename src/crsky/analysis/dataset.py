"""The analysis Dataset: one streaming pass over a run, the estimators, the assembly, the file.

Data flow: run store -> :func:`reduce_run` (per realisation, the pixel moments, means
and packed cross-spectra of the six component maps; the running mean maps; the
component maps of one realisation at the sky-map times) -> the estimators of
:mod:`crsky.analysis.estimators` -> :func:`assemble_dataset` -> ``analysis.nc``
(:func:`write_analysis`). The report (:mod:`crsky.analysis.report`) and the figures
(:mod:`crsky.plots`) read the Dataset and nothing else.

For each realisation ``r``, snapshot ``T`` and gradient ``g = grad n / n`` the relative
intensity map of Mertsch & Ahlers (2015), eq. 2.1, is

    dI_i = [x_i(-T) - 3 K p_i(-T)] . g = w . V_i,

with ``V_i = (x_i, p_i)`` the six component maps of pixel ``i`` and
``w = (g, -3 K g)``. The map is linear in ``V``, so its power spectrum is the quadratic
form ``C_l = w^T S_l w`` of the 6 x 6 cross-spectra ``S_l^{AB}`` of the component maps.
The pass therefore keeps, per realisation and snapshot, only ``<V V^T>_pix``,
``<V>_pix`` and ``S_l`` (``O(n_time * lmax)``, never a trajectory array) plus a
running sum of the component maps. After the pass ``K`` for the map is chosen and every
map's ``C_l`` follows exactly, for any number of gradients. Definitions:
docs/analysis.md; conventions (pixel = momentum direction, units): docs/conventions.md.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from .. import __version__, units
from ..errors import InputError
from ..store import RunDirError, RunStore, atomic_write_netcdf, new_analysis_id
from . import estimators as est
from ..turbulence import local_field_direction
from .harmonics import anafast_options, axis_weights, binning_matrix, component_harmonics, cross_spectra
from .sky import map_attributes

__all__ = [
    "ANALYSIS_FILE",
    "IncompleteEnsembleError",
    "AnalysisNotCurrentError",
    "RealisationSummary",
    "summarise_realisation",
    "EnsembleReduction",
    "reduce_run",
    "select_map_times",
    "nearest_log_indices",
    "Estimates",
    "estimate",
    "assemble_dataset",
    "analyze_run",
    "write_analysis",
    "load_analysis",
    "load_current_analysis",
    "upgrade_layout",
    "TIME_DIM",
]

ANALYSIS_FILE = "analysis.nc"

_COMPONENTS = ("x", "y", "z")
#: Number of sky-map snapshots stored for the figures (:func:`select_map_times`).
N_MAP_TIMES = 3


class IncompleteEnsembleError(InputError):
    """The run holds fewer completed realisations than its configuration asks for."""


class AnalysisNotCurrentError(InputError):
    """``analysis.nc`` is missing, unreadable or not the analysis of the run as it is now."""


# ---------------------------------------------------------------------------------
# The streaming pass
# ---------------------------------------------------------------------------------
@dataclass
class RealisationSummary:
    """What the analysis keeps of one realisation (no trajectory arrays).

    Attributes
    ----------
    index : int
        Realisation index.
    moments : numpy.ndarray, shape (n_time, 6, 6)
        ``<V_A V_B>_pix`` of the component maps (``L_c^2``, ``L_c``, 1 blocks).
    means : numpy.ndarray, shape (n_time, 6)
        ``<V_A>_pix``.
    spectra : numpy.ndarray, shape (n_time, lmax + 1, 21)
        Packed cross-spectra (:func:`crsky.analysis.harmonics.cross_spectra`).
    axial : numpy.ndarray, shape (n_time, n_axes, lmax + 1, 6), optional
        ``a_l0`` of the component maps about each of the ``axes`` given to
        :func:`summarise_realisation` (the gyrotropic decomposition); ``n_axes = 0``
        without axes.
    """

    index: int
    moments: np.ndarray
    means: np.ndarray
    spectra: np.ndarray
    axial: np.ndarray | None = None


def summarise_realisation(index: int, x, p, lmax: int, binning=None, axes=None,
                          weights=None) -> tuple[RealisationSummary, np.ndarray]:
    """Reduce one realisation to its :class:`RealisationSummary`.

    Parameters
    ----------
    index : int
        Realisation index.
    x, p : array_like, shape (n_time, npix, 3)
        ``x(-T)`` (``L_c``) and ``p(-T)``.
    lmax : int
        Largest multipole.
    axes : array_like, shape (n_axes, 3), optional
        Axes of the gyrotropic decomposition (simulation frame); their ``a_l0`` come
        from the same ``map2alm`` as the cross-spectra.
    weights : numpy.ndarray, shape (n_axes, n_alm), optional
        :func:`crsky.analysis.harmonics.axis_weights` of the axes, in place of ``axes``
        (computed once by the caller for an axis shared by every realisation).

    Returns
    -------
    summary : RealisationSummary
    maps : numpy.ndarray, shape (n_time, npix, 6)
        The component maps (to be added to the running sum by the caller).
    """
    V = est.component_maps(x, p)
    npix = V.shape[1]
    moments = np.einsum("tpa,tpb->tab", V, V) / npix
    means = V.mean(axis=1)
    if weights is None and axes is not None:
        weights = axis_weights(axes, lmax)
    spectra, axial = component_harmonics(V, lmax, weights, binning)
    return RealisationSummary(int(index), moments, means, spectra, axial), V


def nearest_log_indices(t, pool, targets) -> np.ndarray:
    """For each target time (largest first), the index in ``pool`` nearest in ``log t``;
    each index once; returned sorted."""
    chosen: list[int] = []
    available = list(pool)
    for target in targets[::-1]:  # the last target first: it must be the last snapshot
        if not available:
            break
        k = min(available, key=lambda i: abs(math.log(t[i] / target)))
        chosen.append(int(k))
        available.remove(k)
    return np.array(sorted(chosen), dtype=int)


def select_map_times(t_omega, n: int = N_MAP_TIMES) -> np.ndarray:
    """Indices of ``n`` snapshots for the sky maps: log-spaced from ``t Omega ~ 1`` to the end."""
    t = np.asarray(t_omega, dtype=float)
    lo = min(max(t[0], 1.0), t[-1])
    return nearest_log_indices(t, np.arange(t.size), np.geomspace(lo, t[-1], n) if n > 1 else np.array([t[-1]]))


@dataclass(frozen=True)
class EnsembleReduction:
    """Everything the estimators need from a run, stacked over realisations.

    Attributes
    ----------
    indices : numpy.ndarray of int, shape (R,)
        The realisations used, in the order of the stacks.
    t_omega : numpy.ndarray, shape (n_time,)
        Snapshot times ``Omega T``.
    moments, means, spectra : numpy.ndarray
        :class:`RealisationSummary` fields stacked: (R, n_time, 6, 6), (R, n_time, 6),
        (R, n_time, lmax + 1, 21).
    mean_maps : numpy.ndarray, shape (n_time, npix, 6)
        Component maps averaged over realisations.
    map_realisation : int
        Realisation whose sky maps are kept for the figures.
    map_times : numpy.ndarray of int
        Snapshot indices of those maps (:func:`select_map_times`).
    map_components : numpy.ndarray, shape (len(map_times), npix, 6)
        Its component maps at those snapshots.
    axial : numpy.ndarray, shape (R, n_time, 2, lmax + 1, 6)
        ``a_l0`` of the component maps about ``B0`` and about the local field at the
        observer (:data:`crsky.analysis.estimators.GYRO_AXES`).
    field_direction : numpy.ndarray, shape (R, 3)
        ``B(0) / |B(0)|`` of each realisation (simulation frame).
    """

    indices: np.ndarray
    t_omega: np.ndarray
    moments: np.ndarray
    means: np.ndarray
    spectra: np.ndarray
    mean_maps: np.ndarray
    map_realisation: int
    map_times: np.ndarray
    map_components: np.ndarray
    axial: np.ndarray
    field_direction: np.ndarray


class _Stack:
    """Arrays of one shape stacked as they come, into a buffer sized for the expected count
    (doubled if more come): the stack never exists twice, as a list and as its copy."""

    def __init__(self, expected: int):
        self.expected, self.n, self.buffer = max(int(expected), 1), 0, None

    def append(self, a: np.ndarray) -> None:
        if self.buffer is None:
            self.buffer = np.empty((self.expected,) + a.shape, dtype=a.dtype)
        elif self.n == self.buffer.shape[0]:
            self.buffer = np.concatenate([self.buffer, np.empty_like(self.buffer)])
        self.buffer[self.n] = a
        self.n += 1

    def array(self) -> np.ndarray:
        return self.buffer[:self.n]


def reduce_run(store: RunStore, lmax: int, npix: int, progress: bool = False,
               map_realisation: int | None = None) -> EnsembleReduction:
    """Stream through the completed realisations of ``store`` (one in memory at a time).

    Each realisation's maps are decomposed in the same pass about ``B0`` (+z) and about
    the direction of its total field at the observer
    (:func:`crsky.turbulence.local_field_direction`).

    Raises
    ------
    InputError
        Realisations of other snapshot times or shapes than the first; a
        ``map_realisation`` that is not complete.
    """
    summaries: list[RealisationSummary] = []
    directions: list[np.ndarray] = []
    # the two large per-realisation arrays (0.65 and 0.37 MB per realisation at the paper's size)
    spectra, axial = _Stack(len(store.completed())), _Stack(len(store.completed()))
    config = store.config()
    b0_weights = axis_weights([0.0, 0.0, 1.0], lmax)  # the same for every realisation
    map_sum = t_omega = map_components = map_times = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(store.completed()), unit="realisation", desc="crsky analyze", file=sys.stderr)
    try:
        for index, ds in store.iter_realisations():
            t_r = np.asarray(ds["t_omega"].values, dtype=np.float64)
            if t_omega is None:
                t_omega, first = t_r, index
                map_times = select_map_times(t_omega)
                map_realisation = index if map_realisation is None else int(map_realisation)
            elif t_r.shape != t_omega.shape or not np.allclose(t_r, t_omega, rtol=1e-12, atol=0.0):
                raise InputError(f"realisation {index} has other snapshot times than realisation {first}")
            if ds["x"].shape != (t_omega.size, npix, 3) or ds["p"].shape != ds["x"].shape:
                raise InputError(f"realisation {index}: x/p of shape {ds['x'].shape}, expected {(t_omega.size, npix, 3)}")
            directions.append(local_field_direction(config.turbulence, config.ensemble.seed, index))
            summary, V = summarise_realisation(index, ds["x"].values, ds["p"].values, lmax,
                                               weights=np.concatenate([b0_weights, axis_weights(directions[-1],
                                                                                                lmax)]))
            del ds
            spectra.append(summary.spectra)
            axial.append(summary.axial)
            summary.spectra = summary.axial = None  # kept once, in the stacks
            summaries.append(summary)
            if index == map_realisation:
                map_components = V[map_times]  # a copy: V may become the running sum below
            if map_sum is None:
                map_sum = V
            else:
                map_sum += V
            del V
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    if map_components is None:
        raise InputError(f"realisation {map_realisation} (sky maps) is not a completed realisation of {store.path}")
    return EnsembleReduction(
        indices=np.array([s.index for s in summaries], dtype=np.int64), t_omega=t_omega,
        moments=np.stack([s.moments for s in summaries]), means=np.stack([s.means for s in summaries]),
        spectra=spectra.array(), mean_maps=map_sum / len(summaries),
        map_realisation=int(map_realisation), map_times=map_times, map_components=map_components,
        axial=axial.array(), field_direction=np.stack(directions),
    )


# ---------------------------------------------------------------------------------
# The estimators, in order
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimates:
    """The named results of :mod:`crsky.analysis.estimators` for one ensemble."""

    names: list
    T: np.ndarray
    tensors: est.DiffusionTensors
    K_map: np.ndarray
    K_source: str
    weights: est.MapWeights
    spectra: est.EnsembleSpectra
    noise_levels: est.ShotNoise
    noise_model: str
    noise: np.ndarray
    noise_err: np.ndarray
    cl_hat: np.ndarray
    split: est.CoherentSplit
    rules: est.SumRules
    fits: list
    fits_relative: list
    fit_curves: np.ndarray
    skymaps: np.ndarray
    steady: list
    gyro: est.Gyrotropy
    forms: est.GradientForms


def estimate(reduction: EnsembleReduction, T: np.ndarray, gradients: dict, K, npix: int,
             noise_model: str, fit_nsigma: float) -> Estimates:
    """Apply the estimators to a reduced ensemble.

    ``T`` is the backtracking time of each snapshot in ``L_c / c``; ``gradients``
    ``{name: vector in 1/L_c}``; ``K``, ``noise_model`` and ``fit_nsigma`` as in
    :func:`analyze_run`.
    """
    R = reduction.indices.size
    names = list(gradients)
    G = np.stack([gradients[n] for n in names])  # (G, 3)
    lmax = reduction.spectra.shape[2] - 1
    tensors = est.diffusion_tensors(reduction.moments, reduction.means, T)
    K_map, K_source = est.resolve_map_tensor(K, tensors.Ks)
    weights = est.map_weights(G, K_map)
    spectra = est.ensemble_spectra(weights, reduction.spectra)
    levels = est.shot_noise_levels(tensors, G, T, npix)
    noise = levels.model(noise_model)
    noise_err = est.noise_error(noise, np.arange(lmax + 1), R)
    mean_spectra = cross_spectra(reduction.mean_maps, lmax, binning_matrix(lmax))  # (t, L, 21)
    split = est.coherent_split(weights, mean_spectra, spectra.cl, R)
    rules = est.sum_rules(spectra.cl_r, weights, reduction.moments, reduction.means, tensors, T)
    cl_hat = spectra.cl - noise[..., None]
    # BGK fit at the last snapshot. The relative part is what the ansatz's v_r(x)
    # describes at every l, the dipole included: fixed normalisation. Its errors at
    # l >= 2 are those of <C_l> (the coherent part is a dipole); the error of its C_1
    # is neglected.
    fits = [est.fit_bgk(cl_hat[g, -1], noise_err[g, -1], fit_nsigma, spectra.cl_err[g, -1])
            for g in range(len(names))]
    fits_rel = [est.fit_bgk(split.cl_relative[g, -1] - noise[g, -1], noise_err[g, -1], fit_nsigma,
                            spectra.cl_err[g, -1], free_norm=False) for g in range(len(names))]
    skymaps = np.stack([
        np.stack([est.relative_intensity(V[:, :3], V[:, 3:], G[g], K_map[k])
                  for V, k in zip(reduction.map_components, reduction.map_times)])
        for g in range(len(names))
    ])  # (G, n_map_times, npix)
    steady = [est.steady_state(reduction.t_omega, cl_hat[g], spectra.cl_err[g], noise_err[g])
              for g in range(len(names))]
    gyro = est.gyrotropy(weights, reduction.axial, spectra.cl_r)
    forms = est.gradient_forms(K_map, reduction.spectra, mean_spectra)
    return Estimates(names, T, tensors, K_map, K_source, weights, spectra, levels, noise_model, noise, noise_err,
                     cl_hat, split, rules, fits, fits_rel, np.stack([est.fit_curve(f, lmax) for f in fits]), skymaps,
                     steady, gyro, forms)


# ---------------------------------------------------------------------------------
# The Dataset
# ---------------------------------------------------------------------------------
#: The snapshot dimension; its coordinate ``t_omega`` is indexed (``ds.sel(t_omega=...)``).
TIME_DIM = "t_omega"
_GT = ("gradient", TIME_DIM)
_GTL = ("gradient", TIME_DIM, "ell")
_TIJ = (TIME_DIM, "i", "j")
_POWER = "1 (power of the dimensionless dI; scales as |g L_c|^2)"
_NOISE_LONG = {"eq3.1": "shot noise N = (4 pi/N_pix) 2T K^s g g (eq. 3.1)",
               "relative": "shot noise N = (4 pi/N_pix) 2T K~^s g g (relative-diffusion variant of eq. 3.1)"}


def _tensor_variables(e: Estimates) -> dict:
    k = e.tensors
    lc = "L_c c"
    return {
        "gradient_vector": (("gradient", "i"), e.weights.G, {"long_name": "gradient grad n / n", "units": "1/L_c"}),
        "K": (_TIJ, k.Ks, {"long_name": "running diffusion tensor K^s = <x_i x_j>/(2T)", "units": lc}),
        "K_err": (_TIJ, k.Ks_err, {"long_name": "standard error of K over realisations", "units": lc}),
        "K_rel": (_TIJ, k.Krel, {"long_name": "relative diffusion tensor K~^s (eq. 2.4)", "units": lc}),
        "K_rel_err": (_TIJ, k.Krel_err, {"long_name": "standard error of K_rel", "units": lc}),
        "K_par": (TIME_DIM, k.par, {"long_name": "K^s_zz (along B0)", "units": lc}),
        "K_par_err": (TIME_DIM, k.par_err, {"long_name": "standard error of K_par", "units": lc}),
        "K_perp": (TIME_DIM, k.perp, {"long_name": "(K^s_xx + K^s_yy)/2", "units": lc}),
        "K_perp_err": (TIME_DIM, k.perp_err, {"long_name": "standard error of K_perp", "units": lc}),
        "K_rel_par": (TIME_DIM, k.rel_par, {"long_name": "K~^s_zz", "units": lc}),
        "K_rel_par_err": (TIME_DIM, k.rel_par_err, {"long_name": "standard error of K_rel_par", "units": lc}),
        "K_rel_perp": (TIME_DIM, k.rel_perp, {"long_name": "(K~^s_xx + K~^s_yy)/2", "units": lc}),
        "K_rel_perp_err": (TIME_DIM, k.rel_perp_err, {"long_name": "standard error of K_rel_perp", "units": lc}),
        "K_map": (_TIJ, e.K_map, {"long_name": "diffusion tensor used in dI = [x - 3 K p].g", "units": lc,
                                  "source": e.K_source}),
    }


def _spectrum_variables(e: Estimates) -> dict:
    s, split, pw = e.spectra, e.split, _POWER
    return {
        "cl": (_GTL, s.cl, {"long_name": "ensemble mean <C_l> of dI", "units": pw}),
        "cl_err": (_GTL, s.cl_err, {"long_name": "standard error of <C_l> over realisations", "units": pw}),
        "cl_realisation": (("realisation",) + _GTL, s.cl_r, {"long_name": "C_l of each realisation", "units": pw}),
        "noise": (_GT, e.noise, {"long_name": _NOISE_LONG[e.noise_model], "units": pw, "model": e.noise_model}),
        "noise_eq31": (_GT, e.noise_levels.eq31, {"long_name": _NOISE_LONG["eq3.1"], "units": pw}),
        "noise_err": (_GTL, e.noise_err, {"long_name": "noise standard deviation of <C_l>: N sqrt(2/((2l+1)R))",
                                          "units": pw}),
        "cl_hat": (_GTL, e.cl_hat, {"long_name": "estimator C_hat_l = <C_l> - N", "units": pw}),
        "dipole_standard": (_GT, split.dipole_standard, {"long_name": "C_1 of the realisation-averaged map <dI>",
                                                         "units": pw}),
        "dipole_standard_unbiased": (_GT, split.dipole_unbiased, {"long_name": "(R C_1(<dI>) - <C_1>)/(R-1): "
                                     "C_1 of the expected map without the realisation-scatter bias", "units": pw}),
        "dipole_standard_theory": (_GT, split.dipole_theory, {"long_name": "4 pi |K_map g|^2 (eq. 1.1)",
                                                              "units": pw}),
        "cl_coherent": (_GTL, split.cl_coherent, {"long_name": "(R C_l(<dI>) - <C_l>)/(R-1): C_l of the expected "
                        "map E[dI] (coherent, standard-diffusion part), unbiased", "units": pw}),
        "cl_relative": (_GTL, split.cl_relative, {"long_name": "<C_l> - cl_coherent: C_l of dI - E[dI] (relative "
                        "part, incl. shot noise)", "units": pw}),
    }


def _sum_rule_variables(e: Estimates) -> dict:
    r = e.rules
    tot, tot_h, mono, mono_pix, high, high_h = (r.total, r.total_harmonic, r.monopole, r.monopole_pixel, r.higher,
                                                r.higher_harmonic)

    def var(values, long_name):
        return (_GT, values, {"long_name": long_name, "units": "1"})

    return {
        "variance": var(tot.lhs, "sum over all l of (2l+1)<C_l>/4pi = <pixel mean of dI^2> (Parseval on the "
                        "pixelised sky); eq. 2.5 LHS"),
        "variance_err": var(tot.lhs_err, "standard error of variance"),
        "variance_harmonic": var(tot_h.lhs, "sum_{l<=lmax} (2l+1)<C_l>/4pi (anafast)"),
        "sum_rule_rhs": var(tot.rhs, "2T K^s g g (eq. 2.5 RHS)"),
        "sum_rule": var(tot.ratio, "eq. 2.5 LHS/RHS (LHS = variance)"),
        "sum_rule_err": var(tot.ratio_err, "standard error of sum_rule (delta method)"),
        "sum_rule_correction": var(r.correction, "expected late-time excess of sum_rule over 1 from the -3 K p(-T) "
                                   "term: 9 |K_map g|^2 / (2T K^s g g)"),
        "sum_rule_harmonic": var(tot_h.ratio, "eq. 2.5 with LHS = variance_harmonic"),
        "sum_rule_harmonic_err": var(tot_h.ratio_err, "standard error of sum_rule_harmonic"),
        "monopole_lhs": var(mono.lhs, "<C_0>/4pi (anafast; eq. 2.6 LHS)"),
        "monopole_rhs": var(mono.rhs, "2T (K^s - K~^s) g g (eq. 2.6 RHS)"),
        "monopole_rule": var(mono.ratio, "eq. 2.6 LHS/RHS"),
        "monopole_rule_err": var(mono.ratio_err, "standard error of monopole_rule"),
        "monopole_rule_pixel": var(mono_pix.ratio, "eq. 2.6 with LHS = <(pixel mean of dI)^2>"),
        "higher_lhs": var(high.lhs, "sum over all l>=1 of (2l+1)<C_l>/4pi = <pixel variance of dI about its sky "
                          "mean> (eq. 2.7 LHS)"),
        "higher_lhs_harmonic": var(high_h.lhs, "sum_{1<=l<=lmax} (2l+1)<C_l>/4pi (anafast)"),
        "higher_rhs": var(high.rhs, "2T K~^s g g (eq. 2.7 RHS)"),
        "higher_rule": var(high.ratio, "eq. 2.7 LHS/RHS"),
        "higher_rule_err": var(high.ratio_err, "standard error of higher_rule"),
        "higher_rule_harmonic": var(high_h.ratio, "eq. 2.7 with LHS = higher_lhs_harmonic"),
        "noise_rel": (_GT, e.noise_levels.relative, {"long_name": _NOISE_LONG["relative"], "units": _POWER}),
    }


def _fit_variables(e: Estimates) -> dict:
    def per_gradient(fits, field, long_name, dtype=np.float64):
        return ("gradient", np.array([getattr(f, field) for f in fits], dtype=dtype),
                {"long_name": long_name, "units": "1"})

    def clipped(fits, of):
        return ("gradient", np.array([f.clipped_flag for f in fits], dtype=np.int8),
                {"long_name": f"whether the 1-sigma interval of {of} ran into the boundary of 0 < p < 1 (that "
                 "bound is then the boundary, not a measurement)", "units": "1",
                 "flag_values": np.array([0, 1, 2, 3], dtype=np.int8),
                 "flag_meanings": "not_clipped clipped_at_0 clipped_at_1 clipped_at_0_and_1"})

    fits, rel = e.fits, e.fits_relative
    return {
        "p_fit": per_gradient(fits, "p", "BGK exponent p fitted to C_hat_l/C_hat_1 at the last snapshot"),
        "p_err": per_gradient(fits, "p_err", "1-sigma error of p_fit"),
        "p_lo": per_gradient(fits, "p_lo", "lower 1-sigma bound of p"),
        "p_hi": per_gradient(fits, "p_hi", "upper 1-sigma bound of p"),
        "p_clipped": clipped(fits, "p_fit"),
        "p_fit_relative": per_gradient(rel, "p", "BGK exponent p fitted to the relative part (cl_relative - N) "
                                       "at the last snapshot"),
        "p_err_relative": per_gradient(rel, "p_err", "1-sigma error of p_fit_relative"),
        "p_lo_relative": per_gradient(rel, "p_lo", "lower 1-sigma bound of p_fit_relative"),
        "p_hi_relative": per_gradient(rel, "p_hi", "upper 1-sigma bound of p_fit_relative"),
        "p_clipped_relative": clipped(rel, "p_fit_relative"),
        "fit_chi2_dof_relative": per_gradient(rel, "chi2_dof", "chi^2 per degree of freedom of p_fit_relative"),
        "fit_lmin_relative": per_gradient(rel, "lmin", "smallest l in the fit of p_fit_relative (-1: no fit)",
                                          np.int64),
        "fit_lmax_relative": per_gradient(rel, "lmax", "largest l in the fit of p_fit_relative (-1: no fit)",
                                          np.int64),
        "fit_chi2_dof": per_gradient(fits, "chi2_dof", "chi^2 per degree of freedom of the BGK fit"),
        "fit_lmin": per_gradient(fits, "lmin", "smallest l in the BGK fit (-1: no fit)", np.int64),
        "fit_lmax": per_gradient(fits, "lmax", "largest l in the BGK fit (-1: no fit)", np.int64),
        "fit_norm": per_gradient(fits, "norm", "normalisation A of the BGK fit A C_l/C_1 (free in the fit)"),
        "fit_curve": (("gradient", "ell"), e.fit_curves, {"long_name": "the fitted curve A C_l/C_1 (eq. 4.7 with "
                      "p_fit), in units of C_hat_1 at the last snapshot; NaN at l = 0 and without a fit",
                      "units": "1"}),
    }


def _skymap_variables(e: Estimates, nside: int) -> dict:
    return {
        "skymap": (("gradient", "map_time", "pixel"), e.skymaps, {
            "long_name": "dI = [x - 3 K_map p].g of one realisation (attribute skymap_realisation); pixel i is "
                         "the momentum direction p_i (HEALPix RING), the particle arrives from -p_i",
            "units": "1", **map_attributes(nside)}),
    }


_AGTL = ("axis",) + _GTL
_GYRO_FRAME = ("about each axis (B0 = +z; local = B(0) = B0 + dB(0) at the observer, per realisation) of the "
               "whole map dI of each realisation, coherent part included; the same for momentum (pixel) and "
               "arrival directions")


def _gyrotropy_variables(e: Estimates, reduction: EnsembleReduction) -> dict:
    g, pw = e.gyro, _POWER
    return {
        "cl_gyro": (_AGTL, g.gyro, {"long_name": "gyrotropic power <a_l0^2/(2l+1)>: the m = 0 part of <C_l> "
                                    + _GYRO_FRAME, "units": pw}),
        "cl_gyro_err": (_AGTL, g.gyro_err, {"long_name": "standard error of cl_gyro over realisations",
                                            "units": pw}),
        "cl_nongyro": (_AGTL, g.rest, {"long_name": "<C_l> - cl_gyro: the m != 0 power " + _GYRO_FRAME,
                                       "units": pw}),
        "cl_nongyro_err": (_AGTL, g.rest_err, {"long_name": "standard error of cl_nongyro", "units": pw}),
        "gyro_fraction": (_AGTL, g.fraction, {"long_name": "cl_gyro / <C_l>", "units": "1"}),
        "gyro_fraction_err": (_AGTL, g.fraction_err, {"long_name": "standard error of gyro_fraction (delta "
                              "method)", "units": "1"}),
        "local_field_direction": (("realisation", "i"), reduction.field_direction, {
            "long_name": "direction B(0)/|B(0)| of the total field at the observer (x = 0) of each realisation, "
                         "simulation frame (B0 along +z)", "units": "1"}),
    }


def _form_variables(e: Estimates) -> dict:
    f, pw = e.forms, _POWER
    return {
        "cl_form": ((TIME_DIM, "ell", "i", "j"), f.cl, {
            "long_name": "<C_l> as a quadratic form in the gradient: <C_l>(g) = g_i g_j cl_form_ij (K = K_map)",
            "units": pw}),
        "cl_form_cov": ((TIME_DIM, "ell", "pair", "pair_b"), f.cl_cov, {
            "long_name": "covariance of the ensemble mean of the packed forms (pair = xx xy xz yy yz zz): "
                         "var <C_l>(g) = c.cl_form_cov.c, c_pair = (2 - delta_ij) g_i g_j", "units": pw}),
        "dipole_standard_form": ((TIME_DIM, "i", "j"), f.dipole_standard, {
            "long_name": "dipole_standard as a quadratic form in the gradient: C_1(<dI>)(g) = g_i g_j "
                         "dipole_standard_form_ij", "units": pw}),
    }


def _steady_variables(e: Estimates) -> dict:
    st = e.steady
    t_last = st[0].t_late if st else math.nan
    T_per_t = float(e.T[-1]) / t_last if t_last > 0 else math.nan  # r_L: T = (Omega T) r_L
    test = (f"the earliest snapshot from which every snapshot agrees with the last one in C_hat_1 and C_hat_l/C_hat_1 "
            f"(l = 2..{est.STEADY_LMAX}) within {est.STEADY_NSIGMA:g} combined standard errors (docs/analysis.md, "
            "steady state)")
    onset_attrs = {"units": "1", "comment": "Omega T, dimensionless; NaN: never constant, or not tested "
                   "(steady_state_status says which)"}
    return {
        "steady_state": ("gradient", np.array([int(s.steady) for s in st], dtype=np.int8), {
            "long_name": f"whether the steady-state onset is at or before the snapshot nearest half the last time: "
                         f"{test}", "units": "1", "flag_values": np.array([0, 1], dtype=np.int8),
            "flag_meanings": "not_steady_or_not_tested steady"}),
        "steady_state_sigma": ("gradient", np.array([s.max_sigma for s in st]), {
            "long_name": "largest difference of C_hat_1 and C_hat_l/C_hat_1 from the last snapshot over the "
                         "snapshots from half the last time on, in combined standard errors (NaN: not tested; "
                         "inf: a snapshot there is not above the noise)", "units": "1"}),
        "steady_onset": ("gradient", np.array([s.onset for s in st]), {
            "long_name": f"steady-state onset Omega T: {test}", **onset_attrs}),
        "steady_onset_T": ("gradient", np.array([s.onset for s in st]) * T_per_t, {
            "long_name": "steady-state onset as backtracking time T", "units": "1", "code_units": "L_c/c",
            "comment": "T in units of L_c / c; NaN: never constant, or not tested"}),
        "steady_onset_dipole": ("gradient", np.array([s.onset_dipole for s in st]), {
            "long_name": "onset Omega T of the dipole C_hat_1 alone (same test)", **onset_attrs}),
        "steady_onset_shape": ("gradient", np.array([s.onset_shape for s in st]), {
            "long_name": f"onset Omega T of C_hat_l/C_hat_1 (l = 2..{est.STEADY_LMAX}) alone (same test)",
            **onset_attrs}),
    }


#: Code units of crsky (docs/conventions.md) -> what the netCDF ``units`` attribute says.
#: udunits knows no L_c: every quantity is stored as a pure number in code units
#: (``units = "1"``) and its code unit is named in ``code_units`` and ``comment``.
_CODE_UNIT_COMMENT = ("stored in crsky code units: lengths in L_c (turbulence bend-over scale), speeds in c, so "
                      "times in L_c/c and diffusion coefficients in L_c c (docs/conventions.md)")


def _cf_units(attrs: dict) -> dict:
    """``attrs`` with a udunits-valid ``units``: code units become ``"1"`` plus ``code_units``."""
    unit = attrs.get("units")
    if unit is None or unit == "1":
        return attrs
    out = dict(attrs)
    if unit == _POWER:
        out["units"] = "1"
        out["comment"] = "power of the dimensionless dI for |g| = 1/L_c; scales as |g L_c|^2"
        return out
    out["units"] = "1"
    out["code_units"] = unit
    out["comment"] = _CODE_UNIT_COMMENT
    return out


def _flat_config_attrs(config) -> dict:
    """``config_<section>_<key>`` attributes of the resolved configuration (None left out,
    booleans as 0/1, nested values such as ``extended_from`` as JSON text: netCDF has
    neither booleans nor records)."""
    out = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, dict) or (isinstance(value, (list, tuple))
                                           and not all(isinstance(v, (int, float, str)) for v in value)):
                value = json.dumps(value, sort_keys=True)
            out[f"config_{section}_{key}"] = int(value) if isinstance(value, bool) else value
    return out


def assemble_dataset(reduction: EnsembleReduction, e: Estimates, *, config, nside: int, npix: int,
                     fit_nsigma: float, extra_attrs: dict | None = None) -> xr.Dataset:
    """The analysis Dataset from a reduced ensemble and its estimates.

    The attributes carry the configuration, a unique ``analysis_id`` (uuid4; the
    report's ``summary.json`` repeats it so the pair can be checked) and the size of
    the ensemble: ``n_realisations_used``, ``n_realisations_expected`` and ``complete``
    (1 or 0: netCDF has no boolean attributes).
    """
    lmax = reduction.spectra.shape[2] - 1
    used, expected = int(reduction.indices.size), int(config.ensemble.realisations)
    data = {**_tensor_variables(e), **_spectrum_variables(e), **_sum_rule_variables(e), **_fit_variables(e),
            **_skymap_variables(e, nside), **_steady_variables(e), **_gyrotropy_variables(e, reduction),
            **_form_variables(e)}
    data = {name: (dims, values, _cf_units(attrs)) for name, (dims, values, attrs) in data.items()}
    component = {"units": "1", "comment": "Cartesian component in the simulation frame: B0 along +z"}
    coords = {
        "gradient": ("gradient", np.array(e.names, dtype=object),
                     {"long_name": "name of the density gradient g = grad n / n (vector: gradient_vector)"}),
        TIME_DIM: (TIME_DIM, np.asarray(reduction.t_omega, dtype=np.float64),
                   {"long_name": "backtracking time in gyro-phase, Omega T (Omega = c / r_L)", "units": "1"}),
        "T": (TIME_DIM, e.T, _cf_units({"long_name": "backtracking time T = (Omega T) r_L / c", "units": "L_c/c"})),
        "ell": ("ell", np.arange(lmax + 1), {"long_name": "multipole l of the angular power spectrum",
                                             "units": "1"}),
        "i": ("i", list(_COMPONENTS), {"long_name": "first tensor / vector component", **component}),
        "j": ("j", list(_COMPONENTS), {"long_name": "second tensor component", **component}),
        "realisation": ("realisation", reduction.indices, {"long_name": "realisation index (turbulent-field "
                        "realisation; seeds SeedSequence([seed, index]))", "units": "1"}),
        "axis": ("axis", list(est.GYRO_AXES), {"long_name": "axis of the gyrotropic decomposition: B0 (+z) or "
                                              "the local field B(0) at the observer of each realisation"}),
        "pair": ("pair", list(est.FORM_PAIR_NAMES), {"long_name": "packed component pair (i <= j) of a "
                                                     "symmetric form in the gradient"}),
        "pair_b": ("pair_b", list(est.FORM_PAIR_NAMES), {"long_name": "second packed component pair"}),
        "map_time": ("map_time", np.asarray(reduction.map_times, dtype=np.int64),
                     {"long_name": "snapshot index (along t_omega) of the sky maps", "units": "1"}),
        "map_t_omega": ("map_time", np.asarray(reduction.t_omega, dtype=np.float64)[reduction.map_times],
                        {"long_name": "Omega T of the sky maps", "units": "1"}),
    }
    attrs = {
        "title": "crsky analysis (Mertsch & Ahlers 2015, eqs. 2.1-3.1)",
        "analysis_id": new_analysis_id(),
        "config": config.to_json(),
        "config_sha256": config.digest(),
        "crsky_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n_realisations": used,
        "n_realisations_used": used,
        "n_realisations_expected": expected,
        "complete": int(used >= expected),
        "nside": nside,
        "npix": npix,
        "lmax": lmax,
        "K_source": e.K_source,
        "noise_model": e.noise_model,
        "anafast": json.dumps(anafast_options(nside)),
        "fit_nsigma": float(fit_nsigma),
        "fit_status": "; ".join(f"{n}: {f.status}" for n, f in zip(e.names, e.fits)),
        "fit_status_relative": "; ".join(f"{n}: {f.status}" for n, f in zip(e.names, e.fits_relative)),
        "steady_state_status": "; ".join(f"{n}: {s.status}" for n, s in zip(e.names, e.steady)),
        "Conventions": "CF-1.10",
        "units_comment": _CODE_UNIT_COMMENT + "; a variable's code unit is its code_units attribute, its "
                         "netCDF units are '1'",
        "skymap_realisation": int(reduction.map_realisation),
        **_flat_config_attrs(config),
        **(extra_attrs or {}),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


# ---------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------
def analyze_run(run_dir, gradients=None, K=None, lmax: int | None = None, progress: bool = False,
                noise: str = "eq3.1", fit_nsigma: float = est.FIT_NSIGMA, *, partial: bool = False,
                map_realisation: int | None = None) -> xr.Dataset:
    """Analyse a run directory realisation by realisation.

    Parameters
    ----------
    run_dir : path
        A run directory (:class:`crsky.store.RunStore`); every completed realisation is
        used.
    gradients : None, str, mapping or sequence, optional
        Gradients ``g = grad n / n`` in ``1 / L_c`` (see :func:`resolve_gradients`);
        default ``parallel`` (z_hat, along B0) and ``perpendicular`` (x_hat).
    K : None, {"late", "running"} or array_like (3, 3), optional
        Diffusion tensor (``L_c c``) in the map ``dI = [x - 3 K p] . g``.
        ``None``/``"late"`` (default): the ensemble ``K^s`` at the last snapshot, used
        at every snapshot. The ``K`` of eq. 2.1 is the diffusion tensor of the
        quasi-stationary ensemble-averaged density at ``-T``, a property of the medium
        that does not depend on the backtracking time; the late-time ``K^s`` is the
        run's best estimate of it. The running ``K^s(T)`` is ballistic (``~ T / 3``) at
        early times and would remove the initial anisotropy ``-3 K p . g`` there, while
        with the asymptotic ``K`` the ``T -> 0`` map is exactly the standard dipole
        ``-3 (K g) . p`` (``C_1 = 4 pi |K g|^2``). ``"running"``: ``K^s(T)`` at each
        snapshot. A 3x3 array: that tensor (its antisymmetric part, which ``<x x>``
        cannot measure, enters through ``K g``).
    lmax : int, optional
        Largest multipole, ``1 <= lmax <= 3 nside - 1``; default ``3 nside - 1``.
    progress : bool
        Show a progress bar over realisations (stderr).
    noise : {"eq3.1", "relative"}
        Shot noise ``N`` subtracted in ``C_hat_l = <C_l> - N`` and used for the noise
        errors and the BGK fit. ``"eq3.1"`` (default, Mertsch & Ahlers 2015, eq. 3.1): ``(4 pi / N_pix) 2T K^s g g``.
        ``"relative"``: ``(4 pi / N_pix) 2T K~^s g g``, which leaves out the coherent
        sky-mean displacement (it only feeds ``l = 0``); measured to match the high-l
        plateau of ``<C_l>`` better (docs/analysis.md). Both are stored
        (``noise_eq31``, ``noise_rel``).
    fit_nsigma : float
        BGK fit range: ``l = 2 .. l_max_fit``, the contiguous run of multipoles with
        ``C_hat_l > fit_nsigma * sigma_noise_l``.
    partial : bool
        Analyse an incomplete ensemble (fewer completed realisations than the
        configuration's ``ensemble.realisations``); the Dataset says so in its
        attributes ``n_realisations_used``, ``n_realisations_expected``, ``complete``.
        Without it an incomplete ensemble is refused.
    map_realisation : int, optional
        Realisation whose maps ``dI`` are stored (variable ``skymap``) at three
        snapshots (:func:`select_map_times`) for the figures; default the first.

    Returns
    -------
    xarray.Dataset
        Dimensions ``gradient``, ``t_omega`` (indexed: ``ds.sel(t_omega=300,
        method="nearest")``; ``T`` in ``L_c / c`` is a coordinate along it), ``ell``,
        ``i``, ``j``, ``realisation``; CF attributes (``long_name``, udunits ``units``
        "1" with the code unit in ``code_units``); the resolved configuration as JSON in
        ``attrs["config"]`` and flat as ``config_<section>_<key>``. See docs/analysis.md for the variables.

    Raises
    ------
    RunDirError
        Missing run directory or no completed realisation.
    IncompleteEnsembleError
        Fewer realisations complete than configured, without ``partial``.
    ValueError
        Bad ``gradients``, ``K`` or ``lmax``; realisations of inconsistent shape.
    """
    started = time.perf_counter()
    store = RunStore.existing(run_dir)
    config = store.config()
    nside = config.particles.nside
    npix = config.particles.n_particles
    lmax = 3 * nside - 1 if lmax is None else int(lmax)
    if noise not in est.NOISE_MODELS:
        raise InputError(f"noise = {noise!r}: must be one of {', '.join(est.NOISE_MODELS)}")
    if not 1 <= lmax <= 3 * nside - 1:
        raise InputError(f"lmax = {lmax}: must be between 1 and 3 nside - 1 = {3 * nside - 1}")
    grads = est.resolve_gradients(gradients)
    completed, expected = len(store.completed()), config.ensemble.realisations
    if not completed:
        raise RunDirError(f"run directory {store.path} has no completed realisation to analyse")
    if completed < expected and not partial:
        raise IncompleteEnsembleError(f"{completed} of {expected} realisations complete in {store.path}; "
                                      "run `crsky run` to finish or use --partial")

    reduction = reduce_run(store, lmax, npix, progress=progress, map_realisation=map_realisation)
    rl = config.particles.rl
    T = np.array([units.time_to_lc_over_c(float(t), rl) for t in reduction.t_omega])
    estimates = estimate(reduction, T, grads, K, npix, noise, fit_nsigma)
    return assemble_dataset(reduction, estimates, config=config, nside=nside, npix=npix, fit_nsigma=fit_nsigma,
                            extra_attrs={"run_dir": str(store.path), "seconds": time.perf_counter() - started})


# ---------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------
def write_analysis(ds: xr.Dataset, path) -> Path:
    """Write an analysis Dataset to ``path`` atomically
    (:func:`crsky.store.atomic_write_netcdf`: never half-written, umask permissions,
    a failed write is a one-line :class:`crsky.errors.StorageError`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    out = ds.copy()
    out["gradient"] = out["gradient"].astype(str)
    atomic_write_netcdf(out, path)
    return path


def load_analysis(path) -> xr.Dataset:
    """Load an analysis file (or ``RUN_DIR/analysis.nc`` given a run directory) into memory.

    Returns
    -------
    xarray.Dataset
        As returned by :func:`analyze_run`; the file is closed.

    Raises
    ------
    FileNotFoundError
        If there is no analysis file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ANALYSIS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no analysis file {path} (run `crsky analyze` first)")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load()
    return upgrade_layout(ds)


def upgrade_layout(ds: xr.Dataset) -> xr.Dataset:
    """An analysis of an older crsky (snapshot dimension ``time``, ``T`` a variable) in the
    current layout: dimension ``t_omega`` (indexed) with the coordinate ``T``."""
    if "time" in ds.dims and TIME_DIM not in ds.dims and TIME_DIM in ds.coords:
        ds = ds.swap_dims({"time": TIME_DIM})
    if "T" in ds.data_vars:
        ds = ds.set_coords("T")
    return ds


#: Variables and attributes that an analysis file must have to be read by the report
#: and the figures (files of older versions lack some of them).
REQUIRED_VARIABLES = ("cl", "cl_err", "cl_hat", "noise", "noise_err", "dipole_standard", "K_par", "K_perp",
                      "K_par_err", "K_perp_err", "K_map", "gradient_vector", "p_fit", "p_err", "p_lo", "p_hi",
                      "fit_lmin", "fit_lmax", "fit_norm", "fit_curve", "skymap", "T", "cl_gyro", "cl_gyro_err",
                      "cl_nongyro", "cl_nongyro_err", "gyro_fraction", "gyro_fraction_err", "cl_form",
                      "cl_form_cov", "dipole_standard_form", "K_rel")
REQUIRED_ATTRS = ("analysis_id", "config_sha256", "n_realisations_used", "n_realisations_expected", "complete")


def load_current_analysis(run_dir) -> xr.Dataset:
    """The analysis of a run, provided it is the analysis of the run as it is now.

    Current means: ``RUN_DIR/analysis.nc`` exists and is readable, has every variable
    and attribute of :data:`REQUIRED_VARIABLES` / :data:`REQUIRED_ATTRS`, belongs to the
    run's configuration, and used exactly the realisations the run now holds complete.
    Nothing is recomputed.

    Raises
    ------
    crsky.store.RunDirError
        ``run_dir`` is not a run directory.
    AnalysisNotCurrentError
        Otherwise; the message names the reason and says to run ``crsky analyze RUN``.
    """
    store = RunStore.existing(run_dir)
    fix = f"run `crsky analyze {run_dir}` first"
    path = store.path / ANALYSIS_FILE
    if not path.is_file():
        raise AnalysisNotCurrentError(f"{run_dir} has no analysis ({ANALYSIS_FILE}): {fix}")
    try:
        ds = load_analysis(path)
    except (OSError, ValueError) as exc:
        raise AnalysisNotCurrentError(f"cannot read {path} ({exc}): {fix}") from None
    missing = [n for n in REQUIRED_VARIABLES if n not in ds] + [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise AnalysisNotCurrentError(f"{path} is from an older crsky (lacks {', '.join(missing)}): {fix}")
    if ds.attrs["config_sha256"] != store.config().digest():
        raise AnalysisNotCurrentError(f"{path} belongs to another configuration than the run: {fix}")
    used = sorted(int(r) for r in ds["realisation"].values)
    if used != store.completed():
        raise AnalysisNotCurrentError(f"{path} used {len(used)} realisations, the run now has "
                                      f"{len(store.completed())} complete: {fix}")
    return ds
