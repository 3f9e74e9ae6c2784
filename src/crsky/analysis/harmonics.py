"""Spherical-harmonic transforms of HEALPix maps for the analysis.

The one place that calls healpy's transforms (``map2alm``, ``anafast``) and controls the
OpenMP threads of healpy's bundled runtime. Maps are in RING order; the pixel of a
particle is its momentum direction (docs/conventions.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path

import healpy as hp
import numpy as np
import scipy.sparse

__all__ = [
    "PACKED_PAIRS",
    "anafast_options",
    "angular_power",
    "axial_coefficients",
    "axis_weights",
    "binning_matrix",
    "component_harmonics",
    "cross_spectra",
    "rotate_to_axis",
    "quadratic_coefficients",
    "sht_threads",
]

#: Packed upper triangle of the 6 x 6 cross-spectra of the component maps (21 entries).
PACKED_PAIRS = np.triu_indices(6)


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


def binning_matrix(lmax: int):
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
        Component maps ``V = (x, y, z, p_x, p_y, p_z)`` of each snapshot.
    lmax : int
        Largest multipole.
    binning : scipy.sparse.csr_matrix, optional
        Cache of ``binning_matrix(lmax)``.

    Returns
    -------
    numpy.ndarray, shape (n_time, lmax + 1, 21)
        ``S_l^{AB} = (2l+1)^-1 sum_m Re(a^A_lm a^B_lm*)`` for ``A <= B`` in
        ``numpy.triu_indices(6)`` order; the ``C_l`` of ``w . V`` is
        ``sum_{A<=B} (2 - delta_AB) w_A w_B S_l^{AB}``. Same ``map2alm`` settings as
        :func:`angular_power`, so the two agree to rounding.
    """
    return component_harmonics(maps, lmax, binning=binning)[0]


def component_harmonics(maps, lmax: int, weights=None, binning=None) -> tuple[np.ndarray, np.ndarray]:
    """Packed cross-spectra and the ``m = 0`` coefficients about given axes, one ``map2alm`` per snapshot.

    Parameters
    ----------
    maps : array_like, shape (n_time, npix, 6)
        Component maps ``V = (x, y, z, p_x, p_y, p_z)`` of each snapshot.
    lmax : int
        Largest multipole.
    weights : numpy.ndarray, shape (n_axes, n_alm), optional
        :func:`axis_weights` of the axes; none by default.
    binning : scipy.sparse.csr_matrix, optional
        Cache of ``binning_matrix(lmax)``.

    Returns
    -------
    spectra : numpy.ndarray, shape (n_time, lmax + 1, 21)
        As :func:`cross_spectra`.
    axial : numpy.ndarray, shape (n_time, n_axes, lmax + 1, 6)
        ``a_l0`` of each component map in a frame whose pole is the axis
        (:func:`axial_coefficients`); real.
    """
    maps = np.asarray(maps, dtype=np.float64)
    n_time, npix, n_comp = maps.shape
    nside = hp.npix2nside(npix)
    B = binning_matrix(lmax) if binning is None else binning
    Y = np.zeros((0, B.shape[1]), dtype=np.complex128) if weights is None else weights
    spectra = np.empty((n_time, lmax + 1, PACKED_PAIRS[0].size))
    axial = np.empty((n_time, Y.shape[0], lmax + 1, n_comp))
    opts = anafast_options(nside)
    a, b = PACKED_PAIRS
    for t in range(n_time):
        with sht_threads():
            alm = np.asarray(hp.map2alm(np.ascontiguousarray(maps[t].T), lmax=lmax, **opts))  # (n_comp, nalm)
        re, im = alm.real, alm.imag
        products = re[a] * re[b] + im[a] * im[b]  # (21, nalm): Re(a_A a_B^*)
        spectra[t] = (B @ products.T)  # (lmax + 1, 21)
        if Y.shape[0]:
            axial[t] = _project(alm, Y, B)
    return spectra, axial


def _project(alm: np.ndarray, Y: np.ndarray, B) -> np.ndarray:
    """``a_l0`` about each axis of ``Y`` (n_axes, nalm) for ``alm`` (n_comp, nalm): (n_axes, L, n_comp)."""
    # B[l, n] (2l+1) is 1 for m = 0 and 2 for m > 0: the -m partner of a real map
    factor = np.sqrt(4.0 * np.pi * (2.0 * np.arange(B.shape[0]) + 1.0))  # (2l+1) sqrt(4 pi / (2l+1))
    n_axes, n_comp = Y.shape[0], alm.shape[0]
    terms = alm.real[None] * Y.real[:, None] - alm.imag[None] * Y.imag[:, None]  # Re(a_lm Y_lm(n))
    out = (B @ terms.reshape(n_axes * n_comp, -1).T) * factor[:, None]  # (L, n_axes * n_comp)
    return out.reshape(B.shape[0], n_axes, n_comp).transpose(1, 0, 2)


def axis_weights(axes, lmax: int) -> np.ndarray:
    """``Y_lm(n)`` of unit vectors ``n`` in healpy's ``a_lm`` order (``m >= 0``).

    Parameters
    ----------
    axes : array_like, shape (n_axes, 3)
        Axis directions (any length > 0), in the frame of the maps.
    lmax : int
        Largest multipole.

    Returns
    -------
    numpy.ndarray, shape (n_axes, n_alm), complex
        Weights for :func:`axial_coefficients` / :func:`component_harmonics`.
    """
    from scipy.special import sph_harm_y

    axes = np.atleast_2d(np.asarray(axes, dtype=np.float64))
    theta, phi = hp.vec2ang(axes / np.linalg.norm(axes, axis=1, keepdims=True))
    ell, m = hp.Alm.getlm(lmax)
    return np.stack([sph_harm_y(ell, m, th, ph) for th, ph in zip(theta, phi)])


def axial_coefficients(alm, axes, lmax: int) -> np.ndarray:
    """``a_l0`` of real maps in frames whose pole is each of ``axes``.

    By the addition theorem the ``m = 0`` coefficient about a unit vector ``n`` is
    ``a'_l0 = sqrt(4 pi / (2l+1)) sum_m a_lm Y_lm(n)``: ``sqrt(4 pi / (2l+1))`` times the
    degree-``l`` part of the map at ``n``; real, and independent of the rotation about
    ``n`` that completes the frame. Equal to the ``m = 0`` coefficients of
    ``healpy.rotate_alm`` (:func:`rotate_to_axis`) to rounding, at ``O(n_alm)`` instead
    of ``O(lmax^3)`` per map. The power ``a'_l0^2 / (2l+1)`` is the same about ``-n``.

    Parameters
    ----------
    alm : array_like, shape (..., n_alm)
        healpy ``a_lm`` (``m >= 0``) of real maps.
    axes : array_like, shape (n_axes, 3)
        Axis directions in the frame of the maps.
    lmax : int
        Largest multipole of ``alm``.

    Returns
    -------
    numpy.ndarray, shape (n_axes, ..., lmax + 1)
        ``a'_l0`` (units of the map).
    """
    alm = np.asarray(alm, dtype=np.complex128)
    lead = alm.shape[:-1]
    flat = alm.reshape(-1, alm.shape[-1])
    out = _project(flat, axis_weights(axes, lmax), binning_matrix(lmax))  # (n_axes, L, n)
    return np.moveaxis(out, 1, -1).reshape((out.shape[0],) + lead + (lmax + 1,))


def rotate_to_axis(alm, axis, lmax: int) -> np.ndarray:
    """``a_lm`` of a map in a frame whose pole is ``axis``, with ``healpy.rotate_alm``.

    The active rotation ``R_y(-theta) R_z(-phi)`` (``theta, phi`` the angles of
    ``axis``) carries ``axis`` to ``+z``; ``m = 0`` of the result is the axisymmetric part
    about ``axis``. The spectrum ``C_l`` is unchanged (to rounding).

    Parameters
    ----------
    alm : array_like, shape (n_alm,)
        healpy ``a_lm`` of one map.
    axis : array_like, shape (3,)
        Direction in the frame of the map.
    lmax : int
        Largest multipole of ``alm``.
    """
    axis = np.asarray(axis, dtype=np.float64)
    theta, phi = hp.vec2ang(axis / np.linalg.norm(axis))
    out = np.array(alm, dtype=np.complex128, copy=True)
    hp.rotate_alm(out, psi=-float(phi[0]), theta=-float(theta[0]), phi=0.0, lmax=lmax)
    return out


def quadratic_coefficients(w) -> np.ndarray:
    """Coefficients ``(2 - delta_AB) w_A w_B`` on the packed triangle; ``w`` (..., 6)."""
    w = np.asarray(w, dtype=np.float64)
    coef = w[..., PACKED_PAIRS[0]] * w[..., PACKED_PAIRS[1]]
    return coef * np.where(PACKED_PAIRS[0] == PACKED_PAIRS[1], 1.0, 2.0)
