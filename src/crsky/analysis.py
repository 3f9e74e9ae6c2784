"""From trajectories to anisotropies (SPEC section 4; Mertsch & Ahlers 2015, sections 2-3).

For each realisation ``r``, snapshot ``T`` and gradient ``g = grad n / n`` the relative
intensity map of seed eq. (2.1) is

    dI_i = [x_i(-T) - 3 K p_i(-T)] . g = w . V_i,

with ``V_i = (x_i, p_i)`` the six component maps of pixel ``i`` and
``w = (g, -3 K g)``. The map is linear in ``V``, so its power spectrum is the quadratic
form ``C_l = w^T S_l w`` of the 6 x 6 cross-spectra ``S_l^{AB}`` of the component maps
(``alm`` is linear in the map). The analysis therefore streams realisation by
realisation and keeps, per realisation and snapshot, only

- the pixel moments ``<V V^T>_pix`` (6 x 6) and ``<V>_pix`` (6),
- the cross-spectra ``S_l`` (21 numbers per ``l``),
- a running sum of the component maps (for the realisation-averaged map ``<dI>``),

which is ``O(n_time * lmax)`` per realisation and never a trajectory array. After the
pass the diffusion tensors are known, ``K`` for the map is chosen (default: the
ensemble ``K^s`` at the last snapshot, see :func:`analyze_run`) and every map's
``C_l`` follows exactly, for any number of gradients, at no further cost.
``C_l`` of a single assembled map with :func:`angular_power` (``healpy.anafast``)
equals ``w^T S_l w`` to rounding (checked in the tests).

Units: lengths in ``L_c``, times ``T`` in ``L_c / c`` (``T = t_omega r_L``), diffusion
coefficients in ``L_c c``, ``g`` in ``1 / L_c`` (the presets are unit vectors, i.e.
``|grad n / n| = 1 / L_c``). ``dI`` is dimensionless and every power (``C_l``, noise,
sum rules) scales as ``|g|^2``: for a physical gradient multiply by
``(|grad n / n| L_c)^2``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import healpy as hp
import numpy as np
import scipy.sparse
import xarray as xr

from . import __version__, units
from .errors import InputError
from .store import RunDirError, RunStore, atomic_write_bytes, atomic_write_netcdf

__all__ = [
    "GRADIENT_PRESETS",
    "ANALYSIS_FILE",
    "SUMMARY_FILE",
    "anafast_options",
    "sht_threads",
    "angular_power",
    "component_maps",
    "cross_spectra",
    "diffusion_tensor",
    "relative_diffusion_tensor",
    "relative_intensity",
    "shot_noise",
    "noise_error",
    "fit_range",
    "NOISE_MODELS",
    "RealisationSummary",
    "summarise_realisation",
    "resolve_gradients",
    "analyze_run",
    "write_analysis",
    "load_analysis",
    "summary_dict",
    "format_summary",
    "analyze",
]

#: Preset gradient directions ``grad n / n`` in ``1 / L_c`` (unit vectors).
GRADIENT_PRESETS: dict[str, tuple[float, float, float]] = {
    "parallel": (0.0, 0.0, 1.0),  # along B0 = z_hat
    "perpendicular": (1.0, 0.0, 0.0),  # along x_hat
}

ANALYSIS_FILE = "analysis.nc"
SUMMARY_FILE = "summary.json"

#: Number of standard deviations of the noise that ``C_hat_l`` must exceed to enter the
#: BGK fit (contiguous run of multipoles from ``l = 2``).
FIT_NSIGMA = 1.0

#: Shot-noise definitions: eq. 3.1 of the seed (SPEC) and its relative-diffusion variant.
NOISE_MODELS = ("eq3.1", "relative")

_COMPONENTS = ("x", "y", "z")
_IU = np.triu_indices(6)  # packed upper triangle of the 6 x 6 cross-spectra (21 entries)


# ---------------------------------------------------------------------------------
# Harmonic transforms
# ---------------------------------------------------------------------------------
def anafast_options(nside: int) -> dict:
    """Keyword arguments for ``healpy.map2alm`` / ``healpy.anafast`` used throughout.

    ``iter=0`` and HEALPix ring weights (``use_weights=True``; healpy ships them for
    ``nside >= 2``). Measured (docs/analysis.md): with these settings ``C_1`` of a pure
    dipole map is exact to rounding and its leakage into other ``l`` is ``2.6e-4``
    (nside 4), ``7.7e-6`` (8), ``5.5e-7`` (16), ``3.6e-8`` (32) of ``C_1``; the ``C_l``
    of white noise of pixel variance ``s^2`` equals ``4 pi s^2 / N_pix`` at every
    ``l <= 3 nside - 1`` to the statistical precision of the check (0.3-0.5 %), whereas
    the default ``iter=3`` overestimates it by 1.5-3 % above ``l = 2 nside``: the
    shot-noise subtraction needs the unbiased white level.
    """
    return {"iter": 0, "use_weights": bool(nside >= 2), "pol": False}


def angular_power(dI, lmax: int | None = None) -> np.ndarray:
    """``C_l`` of one full-sky HEALPix map (RING order) with ``healpy.anafast``.

    Parameters
    ----------
    dI : array_like, shape (npix,)
        The map (dimensionless relative intensity).
    lmax : int, optional
        Largest multipole; default ``3 nside - 1``.

    Returns
    -------
    numpy.ndarray, shape (lmax + 1,)
        ``C_l`` (dimensionless, same units as ``dI^2``), with the settings of
        :func:`anafast_options`.
    """
    dI = np.asarray(dI, dtype=np.float64)
    nside = hp.npix2nside(dI.shape[-1])
    lmax = 3 * nside - 1 if lmax is None else int(lmax)
    with sht_threads():
        return np.asarray(hp.anafast(dI, lmax=lmax, **anafast_options(nside)))


@functools.lru_cache(maxsize=1)
def _healpy_openmp():
    """The OpenMP runtime bundled with the healpy wheel (``healpy.libs/libgomp*``), or None."""
    libdir = Path(hp.__file__).resolve().parent.parent / "healpy.libs"
    for path in sorted(libdir.glob("libgomp*.so*")):
        try:
            lib = ctypes.CDLL(str(path))
            lib.omp_get_max_threads.restype = ctypes.c_int
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


@contextlib.contextmanager
def sht_threads(n: int | None = 1):
    """Run healpy's spherical-harmonic transforms on ``n`` OpenMP threads inside the block.

    The maps here are small (``nside <= 64``: milliseconds per transform) and many;
    OpenMP's fork/spin overhead then dominates, and on a loaded machine it is
    catastrophic (measured on a 2-core host at load 8: 105 ms per six nside-4 maps with
    2 threads, 2.2 ms with 1). One thread is the default; ``None`` leaves healpy's
    setting alone. A no-op where healpy does not bundle its own ``libgomp``.
    """
    lib = _healpy_openmp() if n is not None else None
    if lib is None:
        yield
        return
    before = lib.omp_get_max_threads()
    lib.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        lib.omp_set_num_threads(before)


def _binning(lmax: int):
    """Sparse ``B[l, n]`` with ``sum_n B[l, n] Re(a_n b_n^*) = C_l^{ab}`` (healpy alm order:
    ``m = 0`` once, ``m > 0`` twice for the ``-m`` partner of a real map)."""
    ell, m = hp.Alm.getlm(lmax)
    weight = np.where(m == 0, 1.0, 2.0) / (2.0 * ell + 1.0)
    return scipy.sparse.csr_matrix((weight, (ell, np.arange(ell.size))), shape=(lmax + 1, ell.size))


def cross_spectra(maps, lmax: int, binning=None) -> np.ndarray:
    """All cross-spectra of a set of maps, packed (upper triangle).

    Parameters
    ----------
    maps : array_like, shape (n_time, npix, 6)
        Component maps (see :func:`component_maps`).
    lmax : int
        Largest multipole.
    binning : scipy.sparse.csr_matrix, optional
        Cache of ``_binning(lmax)``.

    Returns
    -------
    numpy.ndarray, shape (n_time, lmax + 1, 21)
        ``S_l^{AB} = (2l+1)^-1 sum_m Re(a^A_lm a^B_lm*)`` for ``A <= B`` in
        ``numpy.triu_indices(6)`` order; the ``C_l`` of ``w . V`` is
        ``sum_{A<=B} (2 - delta_AB) w_A w_B S_l^{AB}``. Same ``map2alm`` settings as
        :func:`angular_power`, so the two agree to rounding.
    """
    maps = np.asarray(maps, dtype=np.float64)
    n_time, npix, n_comp = maps.shape
    nside = hp.npix2nside(npix)
    B = _binning(lmax) if binning is None else binning
    out = np.empty((n_time, lmax + 1, _IU[0].size))
    opts = anafast_options(nside)
    a, b = _IU
    for t in range(n_time):
        with sht_threads():
            alm = np.asarray(hp.map2alm(np.ascontiguousarray(maps[t].T), lmax=lmax, **opts))  # (6, nalm)
        re, im = alm.real, alm.imag
        products = re[a] * re[b] + im[a] * im[b]  # (21, nalm): Re(a_A a_B^*)
        out[t] = (B @ products.T)  # (lmax + 1, 21)
    return out


def _quadratic_coefficients(w) -> np.ndarray:
    """Coefficients ``(2 - delta_AB) w_A w_B`` on the packed triangle; ``w`` (..., 6)."""
    w = np.asarray(w, dtype=np.float64)
    coef = w[..., _IU[0]] * w[..., _IU[1]]
    return coef * np.where(_IU[0] == _IU[1], 1.0, 2.0)


# ---------------------------------------------------------------------------------
# Per-realisation quantities
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
    """Relative diffusion tensor of one realisation (seed eq. 2.4) by the sky-mean identity.

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
    """Relative intensity map of seed eq. (2.1), ``dI = [x(-T) - 3 K p(-T)] . g``.

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
    """Shot noise of seed eq. (3.1), ``N = (4 pi / N_pix) 2 T g_i K^s_ij g_j``.

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
        Packed cross-spectra (:func:`cross_spectra`).
    """

    index: int
    moments: np.ndarray
    means: np.ndarray
    spectra: np.ndarray


def summarise_realisation(index: int, x, p, lmax: int, binning=None) -> tuple[RealisationSummary, np.ndarray]:
    """Reduce one realisation to its :class:`RealisationSummary`.

    Parameters
    ----------
    index : int
        Realisation index.
    x, p : array_like, shape (n_time, npix, 3)
        ``x(-T)`` (``L_c``) and ``p(-T)``.
    lmax : int
        Largest multipole.

    Returns
    -------
    summary : RealisationSummary
    maps : numpy.ndarray, shape (n_time, npix, 6)
        The component maps (to be added to the running sum by the caller).
    """
    V = component_maps(x, p)
    npix = V.shape[1]
    moments = np.einsum("tpa,tpb->tab", V, V) / npix
    means = V.mean(axis=1)
    spectra = cross_spectra(V, lmax, binning)
    return RealisationSummary(int(index), moments, means, spectra), V


# ---------------------------------------------------------------------------------
# Gradients and K
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


def _resolve_K(K, Ks: np.ndarray) -> tuple[np.ndarray, str]:
    """The tensor used in the map, shape (n_time, 3, 3), and a description."""
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
# Statistics helpers
# ---------------------------------------------------------------------------------
def _mean_sem(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and its standard error ``std(ddof=1) / sqrt(R)`` (NaN if R = 1)."""
    R = a.shape[0]
    mean = a.mean(axis=0)
    if R < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, a.std(axis=0, ddof=1) / math.sqrt(R)


def _ratio_sem(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
# The streaming analysis
# ---------------------------------------------------------------------------------
def analyze_run(run_dir, gradients=None, K=None, lmax: int | None = None, progress: bool = False,
                noise: str = "eq3.1", fit_nsigma: float = FIT_NSIGMA) -> xr.Dataset:
    """Analyse a run directory realisation by realisation (SPEC section 4).

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
        errors and the BGK fit. ``"eq3.1"`` (default, SPEC): ``(4 pi / N_pix) 2T K^s g g``.
        ``"relative"``: ``(4 pi / N_pix) 2T K~^s g g``, which leaves out the coherent
        sky-mean displacement (it only feeds ``l = 0``); measured to match the high-l
        plateau of ``<C_l>`` better (docs/analysis.md). Both are stored
        (``noise_eq31``, ``noise_rel``).
    fit_nsigma : float
        BGK fit range: ``l = 2 .. l_max_fit``, the contiguous run of multipoles with
        ``C_hat_l > fit_nsigma * sigma_noise_l``.

    Returns
    -------
    xarray.Dataset
        Dimensions ``gradient``, ``time``, ``ell``, ``i``, ``j``, ``realisation``;
        units in each variable's ``units`` attribute; the resolved configuration as
        JSON in ``attrs["config"]``. See docs/analysis.md for the variables.

    Raises
    ------
    RunDirError
        Missing run directory or no completed realisation.
    ValueError
        Bad ``gradients``, ``K`` or ``lmax``; realisations of inconsistent shape.
    """
    started = time.perf_counter()
    store = RunStore.existing(run_dir)
    config = store.config()
    nside = config.particles.nside
    npix = config.particles.n_particles
    lmax = 3 * nside - 1 if lmax is None else int(lmax)
    if noise not in NOISE_MODELS:
        raise InputError(f"noise = {noise!r}: must be one of {', '.join(NOISE_MODELS)}")
    if not 1 <= lmax <= 3 * nside - 1:
        raise InputError(f"lmax = {lmax}: must be between 1 and 3 nside - 1 = {3 * nside - 1}")
    grads = resolve_gradients(gradients)
    indices = store.completed()
    if not indices:
        raise RunDirError(f"run directory {store.path} has no completed realisation to analyse")

    binning = _binning(lmax)
    summaries: list[RealisationSummary] = []
    map_sum = None
    t_omega = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), unit="realisation", desc="crsky analyze", file=sys.stderr)
    try:
        for index, ds in store.iter_realisations():
            t_r = np.asarray(ds["t_omega"].values, dtype=np.float64)
            if t_omega is None:
                t_omega = t_r
            elif t_r.shape != t_omega.shape or not np.allclose(t_r, t_omega, rtol=1e-12, atol=0.0):
                raise InputError(f"realisation {index} has other snapshot times than realisation {indices[0]}")
            if ds["x"].shape != (t_omega.size, npix, 3) or ds["p"].shape != ds["x"].shape:
                raise InputError(f"realisation {index}: x/p of shape {ds['x'].shape}, expected {(t_omega.size, npix, 3)}")
            summary, V = summarise_realisation(index, ds["x"].values, ds["p"].values, lmax, binning)
            del ds
            summaries.append(summary)
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

    rl = config.particles.rl
    T = np.array([units.time_to_lc_over_c(float(t), rl) for t in t_omega])
    return _finalise(
        summaries, map_sum, t_omega, T, grads, K, lmax, npix, nside, config, noise, fit_nsigma,
        extra_attrs={"run_dir": str(store.path), "seconds": time.perf_counter() - started},
    )


def _finalise(summaries, map_sum, t_omega, T, grads, K, lmax, npix, nside, config, noise_model, fit_nsigma,
              extra_attrs):
    R = len(summaries)
    ell = np.arange(lmax + 1)
    moments = np.stack([s.moments for s in summaries])  # (R, t, 6, 6)
    means = np.stack([s.means for s in summaries])  # (R, t, 6)
    spectra = np.stack([s.spectra for s in summaries])  # (R, t, L, 21)
    twoT = 2.0 * T

    # -- diffusion tensors --------------------------------------------------------
    Ks_r = moments[:, :, :3, :3] / twoT[None, :, None, None]
    Krel_r = (moments[:, :, :3, :3] - means[:, :, :3, None] * means[:, :, None, :3]) / twoT[None, :, None, None]
    Ks, Ks_err = _mean_sem(Ks_r)
    Krel, Krel_err = _mean_sem(Krel_r)
    K_par, K_par_err = _mean_sem(Ks_r[..., 2, 2])
    K_perp, K_perp_err = _mean_sem(0.5 * (Ks_r[..., 0, 0] + Ks_r[..., 1, 1]))
    Krel_par, Krel_par_err = _mean_sem(Krel_r[..., 2, 2])
    Krel_perp, Krel_perp_err = _mean_sem(0.5 * (Krel_r[..., 0, 0] + Krel_r[..., 1, 1]))
    K_map, K_source = _resolve_K(K, Ks)

    names = list(grads)
    G = np.stack([grads[n] for n in names])  # (G, 3)
    Kg = np.einsum("tij,gj->gti", K_map, G)  # (G, t, 3)
    w = np.concatenate([np.broadcast_to(G[:, None, :], Kg.shape), -3.0 * Kg], axis=-1)  # (G, t, 6)
    coef = _quadratic_coefficients(w)  # (G, t, 21)

    # -- power spectra --------------------------------------------------------------
    cl_r = np.einsum("gtk,rtlk->rgtl", coef, spectra)
    cl, cl_err = _mean_sem(cl_r)
    Ksgg = np.einsum("tij,gi,gj->gt", Ks, G, G)
    Krelgg = np.einsum("tij,gi,gj->gt", Krel, G, G)
    noise_eq31 = 4.0 * np.pi / npix * twoT[None, :] * Ksgg
    noise_rel = 4.0 * np.pi / npix * twoT[None, :] * Krelgg
    noise = noise_eq31 if noise_model == "eq3.1" else noise_rel
    noise_long = {"eq3.1": "shot noise N = (4 pi/N_pix) 2T K^s g g (eq. 3.1)",
                  "relative": "shot noise N = (4 pi/N_pix) 2T K~^s g g (relative-diffusion variant of eq. 3.1)"}
    noise_err = noise_error(noise, ell, R)
    cl_hat = cl - noise[..., None]

    mean_maps = map_sum / R  # (t, npix, 6)
    mean_spectra = cross_spectra(mean_maps, lmax, _binning(lmax))  # (t, L, 21)
    dipole_standard = np.einsum("gtk,tk->gt", coef, mean_spectra[:, 1, :])
    dipole_theory = 4.0 * np.pi * np.einsum("gti,gti->gt", Kg, Kg)
    # C_1 of the mean map carries (<C_1> - C_1(E dI)) / R of realisation scatter (shot
    # noise and cosmic variance); the pair (U-) estimator removes it exactly.
    dipole_unbiased = (R * dipole_standard - cl[..., 1]) / (R - 1) if R > 1 else np.full_like(dipole_standard, np.nan)
    # The same split at every l: <C_l> = coherent + relative exactly, with the coherent
    # part the spectrum of the expected map E[dI] (the standard-diffusion anisotropy,
    # a dipole at late times) and the relative part that of dI - E[dI], the
    # realisation's own structure from relative diffusion (docs/validation.md s.5).
    cl_mean_map = np.einsum("gtk,tlk->gtl", coef, mean_spectra)
    cl_coherent = (R * cl_mean_map - cl) / (R - 1) if R > 1 else np.full_like(cl, np.nan)
    cl_relative = cl - cl_coherent

    # -- sum rules ------------------------------------------------------------------
    wt = (2.0 * ell + 1.0) / (4.0 * np.pi)
    lhs_total_r = np.einsum("rgtl,l->rgt", cl_r, wt)
    lhs_high_r = np.einsum("rgtl,l->rgt", cl_r[..., 1:], wt[1:])
    lhs_mono_r = cl_r[..., 0] / (4.0 * np.pi)
    var_pix_r = np.einsum("gta,rtab,gtb->rgt", w, moments, w)
    mono_pix_r = np.einsum("gta,rta->rgt", w, means) ** 2
    rhs_total_r = np.einsum("rtij,gi,gj->rgt", Ks_r, G, G) * twoT[None, None, :]
    rhs_high_r = np.einsum("rtij,gi,gj->rgt", Krel_r, G, G) * twoT[None, None, :]
    rhs_mono_r = rhs_total_r - rhs_high_r

    def rule(lhs_r, rhs_r):
        lhs, lhs_err = _mean_sem(lhs_r)
        rhs, _ = _mean_sem(rhs_r)
        ratio, ratio_err = _ratio_sem(lhs_r, rhs_r)
        return lhs, lhs_err, rhs, ratio, ratio_err

    tot = rule(var_pix_r, rhs_total_r)
    tot_h = rule(lhs_total_r, rhs_total_r)
    mono = rule(lhs_mono_r, rhs_mono_r)
    mono_pix = rule(mono_pix_r, rhs_mono_r)
    high = rule(var_pix_r - mono_pix_r, rhs_high_r)
    high_h = rule(lhs_high_r, rhs_high_r)

    # -- BGK fit at the last snapshot -----------------------------------------------
    fits = [_fit_bgk(cl_hat[g, -1], noise_err[g, -1], fit_nsigma, cl_err[g, -1]) for g in range(len(names))]
    # The relative part is what the ansatz's v_r(x) describes at every l, the dipole
    # included: fixed normalisation. Its errors at l >= 2 are those of <C_l> (the
    # coherent part is a dipole); the error of its C_1 is neglected.
    fits_rel = [_fit_bgk(cl_relative[g, -1] - noise[g, -1], noise_err[g, -1], fit_nsigma, cl_err[g, -1],
                         free_norm=False) for g in range(len(names))]
    fit_status = "; ".join(f"{n}: {f['status']}" for n, f in zip(names, fits))

    dims_gt = ("gradient", "time")
    dims_gtl = ("gradient", "time", "ell")
    dims_tij = ("time", "i", "j")
    pw = "1 (power of the dimensionless dI; scales as |g L_c|^2)"
    data = {
        "gradient_vector": (("gradient", "i"), G, {"long_name": "gradient grad n / n", "units": "1/L_c"}),
        "T": ("time", T, {"long_name": "backtracking time T = t_omega r_L", "units": "L_c/c"}),
        "K": (dims_tij, Ks, {"long_name": "running diffusion tensor K^s = <x_i x_j>/(2T)", "units": "L_c c"}),
        "K_err": (dims_tij, Ks_err, {"long_name": "standard error of K over realisations", "units": "L_c c"}),
        "K_rel": (dims_tij, Krel, {"long_name": "relative diffusion tensor K~^s (eq. 2.4)", "units": "L_c c"}),
        "K_rel_err": (dims_tij, Krel_err, {"long_name": "standard error of K_rel", "units": "L_c c"}),
        "K_par": ("time", K_par, {"long_name": "K^s_zz (along B0)", "units": "L_c c"}),
        "K_par_err": ("time", K_par_err, {"long_name": "standard error of K_par", "units": "L_c c"}),
        "K_perp": ("time", K_perp, {"long_name": "(K^s_xx + K^s_yy)/2", "units": "L_c c"}),
        "K_perp_err": ("time", K_perp_err, {"long_name": "standard error of K_perp", "units": "L_c c"}),
        "K_rel_par": ("time", Krel_par, {"long_name": "K~^s_zz", "units": "L_c c"}),
        "K_rel_par_err": ("time", Krel_par_err, {"long_name": "standard error of K_rel_par", "units": "L_c c"}),
        "K_rel_perp": ("time", Krel_perp, {"long_name": "(K~^s_xx + K~^s_yy)/2", "units": "L_c c"}),
        "K_rel_perp_err": ("time", Krel_perp_err, {"long_name": "standard error of K_rel_perp", "units": "L_c c"}),
        "K_map": (dims_tij, K_map, {"long_name": "diffusion tensor used in dI = [x - 3 K p].g",
                                     "units": "L_c c", "source": K_source}),
        "cl": (dims_gtl, cl, {"long_name": "ensemble mean <C_l> of dI", "units": pw}),
        "cl_err": (dims_gtl, cl_err, {"long_name": "standard error of <C_l> over realisations", "units": pw}),
        "cl_realisation": (("realisation",) + dims_gtl, cl_r, {"long_name": "C_l of each realisation", "units": pw}),
        "noise": (dims_gt, noise, {"long_name": noise_long[noise_model], "units": pw, "model": noise_model}),
        "noise_eq31": (dims_gt, noise_eq31, {"long_name": noise_long["eq3.1"], "units": pw}),
        "noise_err": (dims_gtl, noise_err, {"long_name": "noise standard deviation of <C_l>: N sqrt(2/((2l+1)R))",
                                            "units": pw}),
        "cl_hat": (dims_gtl, cl_hat, {"long_name": "estimator C_hat_l = <C_l> - N", "units": pw}),
        "dipole_standard": (dims_gt, dipole_standard, {"long_name": "C_1 of the realisation-averaged map <dI>",
                                                      "units": pw}),
        "dipole_standard_unbiased": (dims_gt, dipole_unbiased, {"long_name": "(R C_1(<dI>) - <C_1>)/(R-1): "
                                     "C_1 of the expected map without the realisation-scatter bias", "units": pw}),
        "dipole_standard_theory": (dims_gt, dipole_theory, {"long_name": "4 pi |K_map g|^2 (eq. 1.1)", "units": pw}),
        "cl_coherent": (dims_gtl, cl_coherent, {"long_name": "(R C_l(<dI>) - <C_l>)/(R-1): C_l of the expected map "
                        "E[dI] (coherent, standard-diffusion part), unbiased", "units": pw}),
        "cl_relative": (dims_gtl, cl_relative, {"long_name": "<C_l> - cl_coherent: C_l of dI - E[dI] (relative "
                        "part, incl. shot noise)", "units": pw}),
        "variance": (dims_gt, tot[0], {"long_name": "sum over all l of (2l+1)<C_l>/4pi = <pixel mean of dI^2> "
                                      "(Parseval on the pixelised sky); eq. 2.5 LHS", "units": "1"}),
        "variance_err": (dims_gt, tot[1], {"long_name": "standard error of variance", "units": "1"}),
        "variance_harmonic": (dims_gt, tot_h[0], {"long_name": "sum_{l<=lmax} (2l+1)<C_l>/4pi (anafast)",
                                                  "units": "1"}),
        "sum_rule_rhs": (dims_gt, tot[2], {"long_name": "2T K^s g g (eq. 2.5 RHS)", "units": "1"}),
        "sum_rule": (dims_gt, tot[3], {"long_name": "eq. 2.5 LHS/RHS (LHS = variance)", "units": "1"}),
        "sum_rule_err": (dims_gt, tot[4], {"long_name": "standard error of sum_rule (delta method)", "units": "1"}),
        "sum_rule_correction": (dims_gt, 9.0 * np.einsum("gti,gti->gt", Kg, Kg) / tot[2],
                                {"long_name": "expected late-time excess of sum_rule over 1 from the -3 K p(-T) "
                                 "term: 9 |K_map g|^2 / (2T K^s g g)", "units": "1"}),
        "sum_rule_harmonic": (dims_gt, tot_h[3], {"long_name": "eq. 2.5 with LHS = variance_harmonic", "units": "1"}),
        "sum_rule_harmonic_err": (dims_gt, tot_h[4], {"long_name": "standard error of sum_rule_harmonic",
                                                      "units": "1"}),
        "monopole_lhs": (dims_gt, mono[0], {"long_name": "<C_0>/4pi (anafast; eq. 2.6 LHS)", "units": "1"}),
        "monopole_rhs": (dims_gt, mono[2], {"long_name": "2T (K^s - K~^s) g g (eq. 2.6 RHS)", "units": "1"}),
        "monopole_rule": (dims_gt, mono[3], {"long_name": "eq. 2.6 LHS/RHS", "units": "1"}),
        "monopole_rule_err": (dims_gt, mono[4], {"long_name": "standard error of monopole_rule", "units": "1"}),
        "monopole_rule_pixel": (dims_gt, mono_pix[3], {"long_name": "eq. 2.6 with LHS = <(pixel mean of dI)^2>",
                                                       "units": "1"}),
        "higher_lhs": (dims_gt, high[0], {"long_name": "sum over all l>=1 of (2l+1)<C_l>/4pi = <pixel variance "
                                          "of dI about its sky mean> (eq. 2.7 LHS)", "units": "1"}),
        "higher_lhs_harmonic": (dims_gt, high_h[0], {"long_name": "sum_{1<=l<=lmax} (2l+1)<C_l>/4pi (anafast)",
                                                     "units": "1"}),
        "higher_rhs": (dims_gt, high[2], {"long_name": "2T K~^s g g (eq. 2.7 RHS)", "units": "1"}),
        "higher_rule": (dims_gt, high[3], {"long_name": "eq. 2.7 LHS/RHS", "units": "1"}),
        "higher_rule_err": (dims_gt, high[4], {"long_name": "standard error of higher_rule", "units": "1"}),
        "higher_rule_harmonic": (dims_gt, high_h[3], {"long_name": "eq. 2.7 with LHS = higher_lhs_harmonic",
                                                      "units": "1"}),
        "noise_rel": (dims_gt, noise_rel, {"long_name": noise_long["relative"], "units": pw}),
        "p_fit": ("gradient", np.array([f["p"] for f in fits]), {"long_name": "BGK exponent p fitted to "
                  "C_hat_l/C_hat_1 at the last snapshot", "units": "1"}),
        "p_err": ("gradient", np.array([f["p_err"] for f in fits]), {"long_name": "1-sigma error of p_fit",
                                                                    "units": "1"}),
        "p_lo": ("gradient", np.array([f["p_lo"] for f in fits]), {"long_name": "lower 1-sigma bound of p",
                                                                  "units": "1"}),
        "p_hi": ("gradient", np.array([f["p_hi"] for f in fits]), {"long_name": "upper 1-sigma bound of p",
                                                                  "units": "1"}),
        "p_fit_relative": ("gradient", np.array([f["p"] for f in fits_rel]), {"long_name": "BGK exponent p "
                           "fitted to the relative part (cl_relative - N) at the last snapshot", "units": "1"}),
        "p_err_relative": ("gradient", np.array([f["p_err"] for f in fits_rel]), {"long_name": "1-sigma error of "
                           "p_fit_relative", "units": "1"}),
        "fit_chi2_dof": ("gradient", np.array([f["chi2_dof"] for f in fits]), {"long_name": "chi^2 per degree "
                         "of freedom of the BGK fit", "units": "1"}),
        "fit_lmin": ("gradient", np.array([f["lmin"] for f in fits], dtype=np.int64),
                     {"long_name": "smallest l in the BGK fit (-1: no fit)", "units": "1"}),
        "fit_lmax": ("gradient", np.array([f["lmax"] for f in fits], dtype=np.int64),
                     {"long_name": "largest l in the BGK fit (-1: no fit)", "units": "1"}),
    }
    ds = xr.Dataset(
        data,
        coords={
            "gradient": ("gradient", np.array(names, dtype=object)),
            "t_omega": ("time", np.asarray(t_omega, dtype=np.float64), {"long_name": "Omega T", "units": "1"}),
            "ell": ("ell", ell),
            "i": ("i", list(_COMPONENTS)),
            "j": ("j", list(_COMPONENTS)),
            "realisation": ("realisation", np.array([s.index for s in summaries], dtype=np.int64)),
        },
        attrs={
            "title": "crsky analysis (SPEC section 4; Mertsch & Ahlers 2015 eqs. 2.1-3.1)",
            "config": config.to_json(),
            "config_sha256": config.digest(),
            "crsky_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n_realisations": R,
            "nside": nside,
            "npix": npix,
            "lmax": lmax,
            "K_source": K_source,
            "noise_model": noise_model,
            "anafast": json.dumps({k: v for k, v in anafast_options(nside).items()}),
            "fit_nsigma": float(fit_nsigma),
            "fit_status": fit_status,
            **extra_attrs,
        },
    )
    return ds


def fit_range(cl_hat: np.ndarray, noise_sigma: np.ndarray, nsigma: float = FIT_NSIGMA) -> int:
    """Last multipole of the BGK fit: the end of the contiguous run from ``l = 2`` with
    ``C_hat_l > nsigma * noise_sigma_l`` (1 if ``C_hat_2`` is already below)."""
    lmax_fit = 1
    for ell in range(2, cl_hat.size):
        if not cl_hat[ell] > nsigma * noise_sigma[ell]:
            break
        lmax_fit = ell
    return lmax_fit


def _fit_bgk(cl_hat: np.ndarray, noise_sigma: np.ndarray, nsigma: float, sigma: np.ndarray | None = None,
             free_norm: bool = True) -> dict:
    """Fit the BGK exponent p to ``C_hat_l / C_hat_1`` (one gradient, one snapshot).

    The multipoles used are ``l = 2`` up to the last one before ``C_hat_l`` first drops
    below ``nsigma`` times the noise standard deviation ``noise_sigma``. The errors of
    the fit are ``sigma`` (default ``noise_sigma``): the analysis passes the standard
    error of ``<C_l>`` over realisations, which holds shot noise *and* cosmic variance;
    the noise alone underestimates the error where the spectrum is far above the noise.
    ``free_norm=False`` fixes the ratio at ``l = 1`` to 1 (the dipole enters the fit;
    the error of ``C_hat_1`` is then neglected).
    """
    sigma = noise_sigma if sigma is None or not np.all(np.isfinite(sigma[1:])) else sigma
    nan = {"p": np.nan, "p_err": np.nan, "p_lo": np.nan, "p_hi": np.nan, "chi2_dof": np.nan, "lmin": -1, "lmax": -1}
    if cl_hat.size < 5 or not cl_hat[1] > 0:
        return {**nan, "status": "no fit (C_hat_1 <= 0 or lmax < 4)"}
    lmax_fit = fit_range(cl_hat, noise_sigma, nsigma)
    if lmax_fit < 4:
        return {**nan, "status": f"no fit (fewer than 3 multipoles l >= 2 with C_hat_l > {nsigma:g} sigma_noise)"}
    ells = np.arange(2, lmax_fit + 1)
    ratio = cl_hat[ells] / cl_hat[1]
    # With a free normalisation fit_p absorbs the common factor C_hat_1 and its
    # fluctuation: the errors are those of C_hat_l alone, over C_hat_1.
    ratio_err = sigma[ells] / cl_hat[1]
    try:
        from .bgk import fit_p
    except ImportError as exc:
        return {**nan, "lmin": 2, "lmax": lmax_fit, "status": f"no fit (crsky.bgk.fit_p not available: {exc})"}
    try:
        fit = fit_p(ells, ratio, ratio_err, lmin=2, lmax=lmax_fit, free_norm=free_norm)
    except Exception as exc:  # a failed fit must not lose the analysis
        warnings.warn(f"BGK fit failed: {exc}", RuntimeWarning, stacklevel=3)
        return {**nan, "lmin": 2, "lmax": lmax_fit, "status": f"fit failed: {exc}"}
    return {"p": float(fit.p), "p_err": float(fit.p_err), "p_lo": float(fit.p_lo), "p_hi": float(fit.p_hi),
            "chi2_dof": float(fit.chi2_dof), "lmin": int(fit.ell_min), "lmax": int(fit.ell_max),
            "status": f"fitted l = {int(fit.ell_min)}..{int(fit.ell_max)}, chi2/dof = {float(fit.chi2_dof):.3g}"
                      + (" (p at the boundary of (0, 1))" if getattr(fit, "at_boundary", False) else "")}


# ---------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------
def write_analysis(ds: xr.Dataset, path) -> Path:
    """Write an analysis Dataset as netCDF4 (h5netcdf) atomically
    (:func:`crsky.store.atomic_write_netcdf`: never half-written, umask permissions,
    a failed write is a one-line :class:`crsky.errors.StorageError`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    out = ds.copy()
    out["gradient"] = out["gradient"].astype(str)
    atomic_write_netcdf(out, path)
    return Path(path)


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
        return ds.load()


# ---------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------
def _json_list(a) -> list:
    """Nested lists of floats with NaN/inf replaced by None."""
    arr = np.asarray(a, dtype=np.float64)
    obj = np.where(np.isfinite(arr), arr, np.nan).astype(object)
    obj[~np.isfinite(arr)] = None
    return obj.tolist()


def _json_float(v):
    v = float(v)
    return v if math.isfinite(v) else None


def summary_dict(ds: xr.Dataset) -> dict:
    """The ``summary.json`` object of SPEC section 7 (JSON-native types, NaN as null).

    Returns
    -------
    dict
        ``{"t_omega", "K_par", "K_perp", "K_par_err", "K_perp_err"}`` per snapshot
        (``L_c c``) and ``"gradients": {name: {"cl", "cl_err"`` ([snapshot][ell], the
        ensemble mean ``<C_l>`` and its standard error), ``"noise"`` (eq. 3.1, per
        snapshot), ``"dipole_standard"`` (``C_1`` of ``<dI>``), ``"sum_rule"`` (eq. 2.5
        LHS / RHS with the LHS summed over all ``l``), ``"p_fit", "p_err"`` (BGK fit at
        the last snapshot)}}``. Everything else (``cl_coherent``, ``cl_relative``,
        ``p_fit_relative``, ...) is in ``analysis.nc``.
    """
    out = {
        "t_omega": _json_list(ds["t_omega"].values),
        "K_par": _json_list(ds["K_par"].values),
        "K_perp": _json_list(ds["K_perp"].values),
        "K_par_err": _json_list(ds["K_par_err"].values),
        "K_perp_err": _json_list(ds["K_perp_err"].values),
        "gradients": {},
    }
    for name in ds["gradient"].values:
        d = ds.sel(gradient=name)
        out["gradients"][str(name)] = {
            "cl": _json_list(d["cl"].values),
            "cl_err": _json_list(d["cl_err"].values),
            "noise": _json_list(d["noise"].values),
            "dipole_standard": _json_list(d["dipole_standard"].values),
            "sum_rule": _json_list(d["sum_rule"].values),
            "p_fit": _json_float(d["p_fit"].values),
            "p_err": _json_float(d["p_err"].values),
        }
    return out


def _fmt(v, width=10, prec=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{'-':>{width}}"
    return f"{v:>{width}.{prec}e}"


def format_summary(summary: dict) -> str:
    """A readable table of a :func:`summary_dict` for the terminal."""
    lines = []
    t = summary["t_omega"]
    lines.append("Diffusion tensor (running K^s = <x x>/2T, units L_c c; +- standard error over realisations)")
    lines.append(f"{'t_Omega':>10} {'K_par':>10} {'+-':>10} {'K_perp':>10} {'+-':>10}")
    for k in range(len(t)):
        lines.append(f"{t[k]:>10.4g} {_fmt(summary['K_par'][k])} {_fmt(summary['K_par_err'][k])} "
                     f"{_fmt(summary['K_perp'][k])} {_fmt(summary['K_perp_err'][k])}")
    for name, g in summary["gradients"].items():
        lines.append("")
        lines.append(f"Gradient {name}: <C_l> (power of dI), shot noise N (eq. 3.1), standard dipole C_1(<dI>), "
                     "sum rule 2.5 LHS/RHS")
        lines.append(f"{'t_Omega':>10} {'C_0':>10} {'C_1':>10} {'C_2':>10} {'C_3':>10} {'N':>10} "
                     f"{'dipole_std':>10} {'sum_rule':>8}")
        for k in range(len(t)):
            cl = g["cl"][k]
            cols = [_fmt(cl[m] if m < len(cl) else None) for m in range(4)]
            sr = g["sum_rule"][k]
            lines.append(f"{t[k]:>10.4g} {' '.join(cols)} {_fmt(g['noise'][k])} {_fmt(g['dipole_standard'][k])} "
                         f"{(f'{sr:8.4f}' if sr is not None else '       -')}")
        if g["p_fit"] is not None:
            lines.append(f"BGK fit at t_Omega = {t[-1]:.4g}: p = {g['p_fit']:.3f} +- "
                         f"{g['p_err']:.3f}" if g["p_err"] is not None else f"BGK fit: p = {g['p_fit']:.3f}")
        else:
            lines.append("BGK fit: none (see the dataset attribute fit_status)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------
def analyze(run_dir, gradients=None, K=None, lmax: int | None = None, progress: bool = False,
            out_dir=None, write: bool = True, **options):
    """Analyse a run and write ``analysis.nc`` and ``summary.json`` atomically.

    Parameters are those of :func:`analyze_run` (``options``: ``noise``, ``fit_nsigma``),
    and ``out_dir`` (default ``run_dir``), the directory the two files go to, and
    ``write`` (``False``: write nothing, e.g. for a read-only run).

    Returns
    -------
    dataset : xarray.Dataset
        The analysis (:func:`analyze_run`).
    summary : dict
        :func:`summary_dict` of it (what ``summary.json`` holds).
    """
    ds = analyze_run(run_dir, gradients=gradients, K=K, lmax=lmax, progress=progress, **options)
    out_dir = Path(run_dir if out_dir is None else out_dir)
    summary = summary_dict(ds)
    if write:
        write_analysis(ds, out_dir / ANALYSIS_FILE)
        atomic_write_bytes(out_dir / SUMMARY_FILE, (json.dumps(summary, indent=1, allow_nan=False) + "\n").encode())
    return ds, summary
