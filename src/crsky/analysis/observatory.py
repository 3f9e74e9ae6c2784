r"""Forward model of a ground-based observatory: the simulated sky as IceCube or HAWC would report it.

A ground-based detector sees cosmic rays in the equatorial frame, over a declination band
fixed by its latitude, and measures the *relative* intensity in each declination band
(the exposure is not known well enough, so the intensity is normalised ring by ring in
right ascension): the ``m = 0`` modes in equatorial coordinates are lost. The power
spectrum it reports is a pseudo-``C_l`` of that partial sky. This module turns the
simulated sky of a run into that spectrum, realisation by realisation:

1. **Orientation.** The simulation frame has ``B0`` along ``+z`` and the gradient in the
   ``x``-``z`` plane (docs/conventions.md). Given the directions of ``B0`` and of the
   gradient on the sky (galactic or equatorial, :mod:`astropy.coordinates`),
   :func:`sky_rotation` builds the rotation ``R`` that takes simulation vectors to
   equatorial (ICRS) ones: ``R z_hat = B0``, ``R x_hat`` is the part of the gradient
   perpendicular to ``B0``. The gradient in the simulation frame is then
   ``g_sim = R^T g = (sin theta, 0, cos theta) / L_c`` with ``theta`` the angle between
   them, and the map of each realisation is ``dI = [x - 3 K_map p] . g_sim``
   (:func:`crsky.analysis.estimators.relative_intensity`; ``K_map`` of the analysis).
2. **Arrival directions.** Pixel ``i`` of a stored map is the momentum direction
   ``p_i``; the cosmic ray arrives from ``-p_i`` (:func:`crsky.analysis.arrival_direction_map`).
   The arrival-direction map's ``a_lm`` (``healpy.map2alm``, the analysis' settings) are
   rotated with ``healpy.rotate_alm`` by ``R`` and synthesised at ``nside_eq = 2 nside``
   in equatorial coordinates: the band-limited map (``l <= 3 nside - 1``) is then sampled
   finely enough that the transforms reproduce its ``C_l`` to ~1e-10 (measured; at
   ``nside_eq = nside`` the error is 10-30 % near ``lmax``).
3. **What the detector cannot see.** Pixels outside ``[dec_min, dec_max]`` are masked
   (HEALPix rings are rings of constant declination, so the band is whole rings), and
   the mean of every ring in the band is subtracted (:func:`remove_ring_means`): that
   removes exactly the declination-only (``m = 0``) part of the sky, as the experiments'
   ring-by-ring normalisation does.
4. **Pseudo-C_l.** ``healpy.map2alm`` of the masked, filtered map (``iter = 3``, ring
   weights), ``C~_l = sum_m |a~_lm|^2 / (2l+1)``. Stored raw and divided by the sky
   fraction ``f_sky`` of the band (the first-order correction for the masked area; the
   spectra the experiments publish are partial-sky spectra normalised in this way,
   see docs/observatories.md for what is and is not comparable).
5. **Noise.** The simulation's shot noise ``N`` (eq. 3.1, the analysis' noise model)
   is white, so its ``a_lm`` have variance ``N`` at every ``l <= lmax`` in any frame.
   Through the (linear) steps 2-4 it becomes ``N T_l`` with the transfer ``T_l`` of
   :func:`noise_transfer`, computed exactly by passing one multipole at a time through
   the same steps. The observatory's estimate is ``(<C~_l> - N T_l) / f_sky``.

Why a pass over the realisations: ``analysis.nc`` keeps the ensemble-mean maps and the
maps of one realisation only, and the pseudo-``C_l`` of a mean map is not the mean
pseudo-``C_l`` (the mask couples multipoles quadratically). The pass reads one
realisation at a time through :meth:`crsky.store.RunStore.iter_realisations` (checked
against the manifest) and keeps per realisation two spectra of ``lmax + 1`` numbers.

Units: every power is dimensionless (the relative intensity ``dI`` of a gradient of
``1 / L_c``), as in the analysis; angles in degrees at the interface.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import healpy as hp
import numpy as np

from ..errors import InputError
from . import estimators as est
from .harmonics import anafast_options, sht_threads
from .sky import arrival_direction_map

__all__ = [
    "BANDS",
    "BAND_REFERENCES",
    "FRAMES",
    "OBSERVATORY_DIR",
    "DeclinationBand",
    "ObservatorySpectra",
    "resolve_band",
    "sky_direction",
    "sky_rotation",
    "equatorial_alm",
    "remove_ring_means",
    "band_mask",
    "pseudo_cl",
    "noise_transfer",
    "observe_run",
    "observatory_dataset",
    "output_name",
    "write_observatory",
]

#: Declination bands of the presets (degrees, ``dec_min, dec_max``): the field of view
#: of the published spectra, approximately (docs/observatories.md says how they were
#: chosen and that a user band ``DECMIN,DECMAX`` should follow the data set compared).
BANDS = {
    "icecube": (-90.0, -20.0),
    "hawc": (-30.0, 64.0),
    "combined": (-90.0, 64.0),
}
#: Where each preset comes from.
BAND_REFERENCES = {
    "icecube": "IceCube, southern sky: Aartsen et al. (2016), ApJ 826, 220",
    "hawc": "HAWC: Abeysekara et al. (2018), ApJ 865, 57",
    "combined": "IceCube + HAWC: Abeysekara et al. (2019), ApJ 871, 96",
}
#: Coordinate frames accepted for the directions of B0 and the gradient.
FRAMES = ("galactic", "icrs")
#: Sub-directory of a run that holds the observatory files.
OBSERVATORY_DIR = "observatory"
#: Iterations of ``map2alm`` on the equatorial maps (docs: module docstring, step 2).
EQ_ITER = 3


@dataclass(frozen=True)
class DeclinationBand:
    """A declination band ``[dec_min, dec_max]`` in degrees and its name."""

    name: str
    dec_min: float
    dec_max: float
    reference: str = "user-given"


def resolve_band(band) -> DeclinationBand:
    """A preset name (:data:`BANDS`), ``"DECMIN,DECMAX"`` (degrees) or a pair of numbers.

    Raises
    ------
    InputError
        Unknown name; bounds that are not numbers, outside ``[-90, 90]``, inverted or
        empty (``dec_min >= dec_max``).
    """
    if isinstance(band, DeclinationBand):
        lo, hi, name, ref = band.dec_min, band.dec_max, band.name, band.reference
    elif isinstance(band, str) and band.strip().lower() in BANDS:
        name = band.strip().lower()
        (lo, hi), ref = BANDS[name], BAND_REFERENCES[name]
    else:
        if isinstance(band, str):
            parts = band.split(",")
            if len(parts) != 2:
                raise InputError(f"declination band {band!r}: expected one of {', '.join(BANDS)} or DECMIN,DECMAX "
                                 "in degrees")
        else:
            parts = list(band)
            if len(parts) != 2:
                raise InputError(f"declination band {band!r}: expected (dec_min, dec_max) in degrees")
        try:
            lo, hi = (float(p) for p in parts)
        except (TypeError, ValueError):
            raise InputError(f"declination band {band!r}: DECMIN,DECMAX must be two numbers (degrees)") from None
        name, ref = f"dec{lo:+g}_{hi:+g}", "user-given"
    for value in (lo, hi):
        if not (math.isfinite(value) and -90.0 <= value <= 90.0):
            raise InputError(f"declination band {lo:g},{hi:g}: bounds must be in [-90, 90] degrees")
    if not lo < hi:
        raise InputError(f"declination band {lo:g},{hi:g}: empty or inverted (need dec_min < dec_max, degrees)")
    return DeclinationBand(name, float(lo), float(hi), ref)


def sky_direction(direction, frame: str = "galactic", what: str = "direction") -> np.ndarray:
    """Unit vector in equatorial (ICRS) Cartesian coordinates of a direction on the sky.

    Parameters
    ----------
    direction : (lon, lat) in degrees, (x, y, z), or an astropy ``SkyCoord``
        Galactic ``(l, b)`` or equatorial ``(ra, dec)`` by ``frame``, or a Cartesian
        vector of any non-zero length in that frame.
    frame : {"galactic", "icrs"}
    what : str
        Name for messages (``"B0"``, ``"gradient"``).

    Raises
    ------
    InputError
        Not two or three finite numbers, a vector of zero length, a latitude outside
        ``[-90, 90]``, an unknown frame.
    """
    from astropy import units as u
    from astropy.coordinates import CartesianRepresentation, SkyCoord

    if isinstance(direction, SkyCoord):
        coord = direction
    else:
        if frame not in FRAMES:
            raise InputError(f"frame {frame!r}: must be one of {', '.join(FRAMES)}")
        try:
            values = [float(v) for v in direction]
        except (TypeError, ValueError):
            raise InputError(f"{what} {direction!r}: expected LON,LAT in degrees or X,Y,Z") from None
        if len(values) == 3:  # a Cartesian vector in the frame
            if not all(math.isfinite(v) for v in values) or not any(values):
                raise InputError(f"{what} {','.join(f'{v:g}' for v in values)}: a direction of zero length "
                                 "or not finite (X,Y,Z must be finite, not all 0)")
            # a representation, not x=, y=, z= keywords: the galactic frame names its Cartesian axes u, v, w
            coord = SkyCoord(CartesianRepresentation(*values), frame=frame)
        elif len(values) != 2:
            raise InputError(f"{what} {direction!r}: expected LON,LAT in degrees or X,Y,Z")
        else:
            lon, lat = values
            if not (math.isfinite(lon) and math.isfinite(lat)):
                raise InputError(f"{what} {direction!r}: angles must be finite (degrees)")
            if not -90.0 <= lat <= 90.0:
                raise InputError(f"{what} {lon:g},{lat:g}: latitude must be in [-90, 90] degrees")
            names = ("l", "b") if frame == "galactic" else ("ra", "dec")
            coord = SkyCoord(**{names[0]: lon * u.deg, names[1]: lat * u.deg}, frame=frame)
    c = coord.icrs.cartesian
    vec = np.array([c.x.value, c.y.value, c.z.value], dtype=np.float64)
    return vec / np.linalg.norm(vec)


def _unit(vector, what: str) -> np.ndarray:
    vec = np.asarray(vector, dtype=np.float64)
    if vec.shape != (3,) or not np.all(np.isfinite(vec)):
        raise InputError(f"{what}: must be 3 finite numbers")
    norm = float(np.linalg.norm(vec))
    if not norm > 0:
        raise InputError(f"{what}: a direction of zero length")
    return vec / norm


def sky_rotation(b0, gradient) -> tuple[np.ndarray, float]:
    """The rotation from the simulation frame to equatorial coordinates.

    Parameters
    ----------
    b0, gradient : array_like, shape (3,)
        Directions of ``B0`` and of the gradient in equatorial Cartesian coordinates
        (:func:`sky_direction`); any non-zero length.

    Returns
    -------
    R : numpy.ndarray, shape (3, 3)
        Proper rotation with ``R @ z_hat = b0`` and ``R @ x_hat`` the unit part of the
        gradient perpendicular to ``b0`` (columns: the simulation axes on the sky). A
        gradient along ``+-b0`` leaves the azimuth free; ``x_hat`` is then put towards
        the celestial north pole (or ``+x`` of ICRS when ``b0`` is the pole).
    theta_deg : float
        Angle between ``b0`` and the gradient in degrees, ``[0, 180]``.

    Raises
    ------
    InputError
        A direction of zero length or not 3 finite numbers.
    """
    ez = _unit(b0, "B0 direction")
    g = _unit(gradient, "gradient direction")
    perp = g - (g @ ez) * ez
    if np.linalg.norm(perp) < 1e-12:
        ref = np.array([0.0, 0.0, 1.0]) if abs(ez[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        perp = ref - (ref @ ez) * ez
    ex = perp / np.linalg.norm(perp)
    ey = np.cross(ez, ex)
    theta = math.degrees(math.atan2(float(np.linalg.norm(np.cross(ez, g))), float(ez @ g)))
    return np.column_stack([ex, ey, ez]), theta


def equatorial_alm(dI_momentum, rotation, lmax: int | None = None) -> np.ndarray:
    """``a_lm`` in equatorial coordinates of the arrival-direction sky of a stored map.

    Parameters
    ----------
    dI_momentum : array_like, shape (npix,)
        A map as stored (pixel ``i`` = momentum direction ``p_i``, RING, simulation frame).
    rotation : array_like, shape (3, 3)
        :func:`sky_rotation`.
    lmax : int, optional
        Default ``3 nside - 1``.

    Returns
    -------
    numpy.ndarray of complex
        healpy ``alm`` (``mmax = lmax``) of the arrival-direction map, rotated to equatorial.
    """
    arrival = arrival_direction_map(np.asarray(dI_momentum, dtype=np.float64))
    nside = hp.npix2nside(arrival.size)
    lmax = 3 * nside - 1 if lmax is None else int(lmax)
    with sht_threads():
        alm = hp.map2alm(arrival, lmax=lmax, **anafast_options(nside))
    hp.rotate_alm(alm, matrix=np.asarray(rotation, dtype=np.float64))  # in place, active: z_hat -> R z_hat
    return alm


@functools.lru_cache(maxsize=16)
def band_mask(nside: int, band: DeclinationBand) -> np.ndarray:
    """Boolean HEALPix map (RING, equatorial): pixel centres with ``dec_min <= dec <= dec_max``.

    Cached (the same band is applied to every realisation): do not modify the result.
    """
    theta, _ = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)))
    dec = 90.0 - np.degrees(theta)
    return (dec >= band.dec_min) & (dec <= band.dec_max)


@functools.lru_cache(maxsize=8)
def _rings(nside: int) -> np.ndarray:
    """Ring index of every pixel (RING ordering: rings of constant declination)."""
    theta, _ = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)))
    return np.unique(theta, return_inverse=True)[1]


def remove_ring_means(m: np.ndarray) -> np.ndarray:
    """The map minus its mean on every HEALPix ring (constant declination): no ``m = 0`` part.

    A map that depends on declination only becomes zero (to rounding); every ring of
    the result averages to zero, which is what a detector that normalises the
    intensity in declination bands measures.
    """
    m = np.asarray(m, dtype=np.float64)
    ring = _rings(hp.npix2nside(m.size))
    means = np.bincount(ring, weights=m) / np.bincount(ring)
    return m - means[ring]


def pseudo_cl(map_eq, band: DeclinationBand, lmax: int, remove_m0: bool = True) -> np.ndarray:
    """Pseudo-``C_l`` of an equatorial map seen through the band (not divided by ``f_sky``).

    Parameters
    ----------
    map_eq : array_like, shape (npix,)
        Equatorial map, RING.
    band : DeclinationBand
    lmax : int
    remove_m0 : bool
        Subtract the ring means (:func:`remove_ring_means`) first (default True).

    Returns
    -------
    numpy.ndarray, shape (lmax + 1,)
    """
    m = np.asarray(map_eq, dtype=np.float64)
    nside = hp.npix2nside(m.size)
    if remove_m0:
        m = remove_ring_means(m)
    m = np.where(band_mask(nside, band), m, 0.0)
    with sht_threads():
        alm = hp.map2alm(m, lmax=lmax, iter=EQ_ITER, use_weights=True, pol=False)
    return np.asarray(hp.alm2cl(alm))


def noise_transfer(nside_eq: int, lmax: int, band: DeclinationBand, remove_m0: bool = True) -> np.ndarray:
    """``T_l``: expected pseudo-``C_l`` of white noise of unit power through the band and filter.

    White noise of power ``N`` has independent ``a_lm`` of variance ``N``, in any frame
    (the rotation is unitary at each ``l``). Masking whole rings and subtracting ring
    means commute with rotations about the pole, so the steps do not mix ``m``: passing
    the input multipole ``l'`` with ``a_l'm = 1`` for every ``m`` gives, in each output
    ``a_lm``, exactly that input's contribution, and
    ``E[C~_l] = N sum_l' C~_l(l')`` (apart from HEALPix's ``m`` aliasing in the
    smallest polar rings, which the sum then counts coherently).

    Returns
    -------
    numpy.ndarray, shape (lmax + 1,)
        ``T_l`` (``f_sky`` for a band without the filter, up to the mask's coupling).
    """
    total = np.zeros(lmax + 1)
    idx_l, _ = hp.Alm.getlm(lmax)
    for ell in range(lmax + 1):
        alm = np.where(idx_l == ell, 1.0 + 0.0j, 0.0j)
        with sht_threads():
            m = hp.alm2map(alm, nside_eq, lmax=lmax)
        total += pseudo_cl(m, band, lmax, remove_m0)
    return total


@dataclass(frozen=True)
class ObservatorySpectra:
    """Result of :func:`observe_run`.

    Attributes
    ----------
    indices : numpy.ndarray of int
        Realisations used.
    cl_full : numpy.ndarray, shape (R, lmax + 1)
        Full-sky ``C_l`` of each realisation's map for this gradient.
    pcl : numpy.ndarray, shape (R, lmax + 1)
        The observatory's pseudo-``C_l`` (not divided by ``f_sky``).
    noise : float
        Shot noise ``N`` of the full-sky ``C_l`` for this gradient (analysis' noise model).
    noise_transfer : numpy.ndarray, shape (lmax + 1,)
        ``T_l`` (:func:`noise_transfer`).
    f_sky : float
        Sky fraction of the band (pixels of ``nside_eq``).
    time_index : int
    t_omega : float
    gradient_sim : numpy.ndarray, shape (3,)
        The gradient in the simulation frame, ``1 / L_c``.
    rotation : numpy.ndarray, shape (3, 3)
    theta_deg : float
        Angle between B0 and the gradient (degrees).
    band : DeclinationBand
    remove_m0 : bool
    nside_eq : int
    """

    indices: np.ndarray
    cl_full: np.ndarray
    pcl: np.ndarray
    noise: float
    noise_transfer: np.ndarray
    f_sky: float
    time_index: int
    t_omega: float
    gradient_sim: np.ndarray
    rotation: np.ndarray
    theta_deg: float
    band: DeclinationBand
    remove_m0: bool
    nside_eq: int


def observe_run(run_dir, b0, gradient, band="combined", *, frame: str = "galactic", remove_m0: bool = True,
                time_index: int | None = None, ds=None, progress: bool = False) -> ObservatorySpectra:
    """The observatory's pseudo-``C_l`` of every realisation of a run (streaming pass).

    Parameters
    ----------
    run_dir : path
        A run with its current analysis (``K_map``, noise model and times are taken from it).
    b0, gradient : (lon, lat) in degrees or SkyCoord
        Directions of the regular field and of the gradient ``grad n / n`` (magnitude
        ``1 / L_c``, as the analysis' presets).
    band : str, pair or DeclinationBand
        :func:`resolve_band`.
    frame : {"galactic", "icrs"}
        Frame of ``b0`` and ``gradient``.
    remove_m0 : bool
        Remove the ``m = 0`` modes in equatorial coordinates (default True).
    time_index : int, optional
        Snapshot; default the last.
    ds : xarray.Dataset, optional
        The current analysis if already loaded.

    Returns
    -------
    ObservatorySpectra
    """
    from ..store import RunStore
    from .dataset import load_current_analysis

    band = resolve_band(band)
    rotation, theta = sky_rotation(sky_direction(b0, frame, "B0"), sky_direction(gradient, frame, "gradient"))
    store = RunStore.existing(run_dir)
    ds = load_current_analysis(run_dir) if ds is None else ds
    t = np.asarray(ds["t_omega"].values, dtype=float)
    k = t.size - 1 if time_index is None else int(time_index)
    if not 0 <= k < t.size:
        raise InputError(f"snapshot index {time_index}: must be in [0, {t.size - 1}]")
    nside, npix, lmax = int(ds.attrs["nside"]), int(ds.attrs["npix"]), int(ds.attrs["lmax"])
    nside_eq = 2 * nside
    g_sim = rotation.T @ (rotation[:, 0] * math.sin(math.radians(theta)) + rotation[:, 2] * math.cos(math.radians(theta)))
    K_map = np.asarray(ds["K_map"].values, dtype=float)[k]
    K_noise = np.asarray(ds["K" if ds["noise"].attrs.get("model", "eq3.1") == "eq3.1" else "K_rel"].values)[k]
    T = float(np.asarray(ds["T"].values, dtype=float)[k])  # L_c / c
    noise = float(est.shot_noise(T, K_noise, g_sim, npix))
    mask = band_mask(nside_eq, band)
    indices, cl_full, pcl = [], [], []
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=len(store.completed()), unit="realisation", desc="crsky observe", file=sys.stderr)
    try:
        for index, real in store.iter_realisations():
            t_r = np.asarray(real["t_omega"].values, dtype=float)
            if t_r.shape != t.shape or not np.allclose(t_r, t, rtol=1e-12, atol=0.0):
                raise InputError(f"realisation {index} has other snapshot times than the analysis; "
                                 "run `crsky analyze` again")
            dI = est.relative_intensity(real["x"].values[k], real["p"].values[k], g_sim, K_map)
            del real
            alm = equatorial_alm(dI, rotation, lmax)
            with sht_threads():
                m_eq = hp.alm2map(alm, nside_eq, lmax=lmax)
            indices.append(index)
            cl_full.append(np.asarray(hp.alm2cl(alm)))
            pcl.append(pseudo_cl(m_eq, band, lmax, remove_m0))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return ObservatorySpectra(
        indices=np.array(indices, dtype=np.int64), cl_full=np.array(cl_full), pcl=np.array(pcl), noise=noise,
        noise_transfer=noise_transfer(nside_eq, lmax, band, remove_m0), f_sky=float(mask.mean()), time_index=k,
        t_omega=float(t[k]), gradient_sim=g_sim, rotation=rotation, theta_deg=theta, band=band,
        remove_m0=bool(remove_m0), nside_eq=nside_eq,
    )


def observatory_dataset(obs: ObservatorySpectra, ds_analysis, *, b0, gradient, frame: str):
    """The observatory file's Dataset: per-realisation spectra, means, errors, noise, metadata."""
    import json

    import xarray as xr

    R = obs.indices.size
    cl_mean, cl_err = est.mean_sem(obs.cl_full)
    pcl_mean, pcl_err = est.mean_sem(obs.pcl)
    noise_pcl = obs.noise * obs.noise_transfer
    ell = np.arange(obs.cl_full.shape[1])
    # paired per realisation: the two spectra of one sky share its fluctuations
    ratio, ratio_err = est.ratio_sem((obs.pcl - noise_pcl) / obs.f_sky, obs.cl_full - obs.noise)
    pw = "1 (power of the dimensionless dI; scales as |g L_c|^2)"
    variables = {
        "cl_full": (("realisation", "ell"), obs.cl_full, {"long_name": "full-sky C_l of each realisation", "units": pw}),
        "pcl": (("realisation", "ell"), obs.pcl, {"long_name": "pseudo-C_l of the band, m = 0 removed if "
                                                  "remove_m0, not divided by f_sky", "units": pw}),
        "cl_full_hat": ("ell", cl_mean - obs.noise, {"long_name": "<C_l> - N (full sky)", "units": pw}),
        "cl_full_err": ("ell", cl_err, {"long_name": "standard error of <C_l> (full sky)", "units": pw}),
        "pcl_hat": ("ell", (pcl_mean - noise_pcl) / obs.f_sky,
                    {"long_name": "observatory estimate (<pseudo-C_l> - N T_l) / f_sky", "units": pw}),
        "pcl_err": ("ell", pcl_err / obs.f_sky, {"long_name": "standard error of pcl_hat", "units": pw}),
        "ratio": ("ell", ratio, {"long_name": "pcl_hat / cl_full_hat: what the band and filter do to each l",
                                 "units": "1"}),
        "ratio_err": ("ell", ratio_err, {"long_name": "standard error of ratio, paired over realisations "
                                         "(delta method)", "units": "1"}),
        "noise_transfer": ("ell", obs.noise_transfer, {"long_name": "T_l: pseudo-C_l of unit white noise "
                                                       "through the band and filter", "units": "1"}),
        "rotation": (("i", "j"), obs.rotation, {"long_name": "rotation simulation frame -> ICRS (columns: the "
                                                "simulation axes x, y, z = B0 on the sky)", "units": "1"}),
        "gradient_sim": ("i", obs.gradient_sim, {"long_name": "gradient in the simulation frame", "units": "1/L_c"}),
    }
    attrs = {
        "title": "crsky observatory forward model: the simulated sky seen from the ground",
        "analysis_id": str(ds_analysis.attrs.get("analysis_id", "")),
        "b0": json.dumps(list(map(float, b0))), "gradient": json.dumps(list(map(float, gradient))), "frame": frame,
        "theta_deg": obs.theta_deg, "band": obs.band.name, "dec_min": obs.band.dec_min, "dec_max": obs.band.dec_max,
        "band_reference": obs.band.reference, "remove_m0": int(obs.remove_m0), "f_sky": obs.f_sky,
        "noise": obs.noise, "noise_model": str(ds_analysis["noise"].attrs.get("model", "eq3.1")),
        "t_omega": obs.t_omega, "time_index": obs.time_index, "nside_eq": obs.nside_eq, "n_realisations": R,
        "pixel_convention": "arrival directions, equatorial (ICRS) coordinates, HEALPix RING",
    }
    return xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()},
                      coords={"ell": ell, "realisation": obs.indices}, attrs=attrs)


def output_name(band_name: str) -> str:
    """File-name stem of a band: its preset name or ``dec-20_+64``-like, safe characters only."""
    return re.sub(r"[^0-9A-Za-z_+.-]", "_", band_name)


def write_observatory(ds_obs, run_dir) -> Path:
    """Write ``RUN_DIR/observatory/<band>.nc`` atomically; returns the path."""
    from ..store import atomic_write_netcdf

    out = Path(run_dir) / OBSERVATORY_DIR
    out.mkdir(exist_ok=True)
    path = out / f"{output_name(ds_obs.attrs['band'])}.nc"
    atomic_write_netcdf(ds_obs, path)
    return path


def _shape_fits(ds_obs) -> dict:
    """Broken power laws fitted to the full-sky and the observatory spectrum (one status each).

    Range: ``l = 1`` up to the last multipole before the estimate drops below
    :data:`crsky.analysis.estimators.FIT_NSIGMA` times its noise error, as for the
    analysis' fits; the observatory's noise error is that of ``N T_l / f_sky`` over
    ``R`` realisations of ``(2l+1) f_sky`` modes.
    """
    from ..observed import BROKEN_POWER_LAW_MIN_POINTS, fit_broken_power_law

    R, f_sky, N = int(ds_obs.attrs["n_realisations"]), float(ds_obs.attrs["f_sky"]), float(ds_obs.attrs["noise"])
    ell = ds_obs["ell"].values
    T = ds_obs["noise_transfer"].values
    with np.errstate(divide="ignore", invalid="ignore"):
        noise_err = {"full sky": est.noise_error(N, ell, R),
                     "observatory": N * T / f_sky * np.sqrt(2.0 / ((2 * ell + 1) * f_sky * R))}
    out = {}
    for key, hat, err in (("full sky", "cl_full_hat", "cl_full_err"), ("observatory", "pcl_hat", "pcl_err")):
        c, e = ds_obs[hat].values, ds_obs[err].values
        lmax_fit = est.fit_range(c, noise_err[key], est.FIT_NSIGMA)
        l_fit = np.arange(1, lmax_fit + 1)
        if l_fit.size < BROKEN_POWER_LAW_MIN_POINTS or not np.all(e[l_fit] > 0):
            out[key] = (None, f"no fit: {l_fit.size} multipoles above {est.FIT_NSIGMA:g} sigma of the noise")
            continue
        fit = fit_broken_power_law(l_fit, c[l_fit], e[l_fit])
        out[key] = (fit, f"l = 1..{lmax_fit}")
    return out


def format_observatory(ds_obs, fits: dict | None = None) -> str:
    """A few lines: the band, what was removed, the spectra's shapes side by side."""
    from ..observed import _bpl_text

    a = ds_obs.attrs
    fits = _shape_fits(ds_obs) if fits is None else fits
    lines = [f"observatory {a['band']} (dec {a['dec_min']:g}..{a['dec_max']:g} deg; {a['band_reference']}): "
             f"f_sky = {a['f_sky']:.3f}, m = 0 {'removed' if a['remove_m0'] else 'kept'}, angle(B0, gradient) = "
             f"{a['theta_deg']:.1f} deg, t Omega = {a['t_omega']:.4g}, {a['n_realisations']} realisations",
             "  l   full-sky C_hat_l     observatory (pseudo-C_l - N T_l)/f_sky   ratio (paired error)"]
    full, obs = ds_obs["cl_full_hat"].values, ds_obs["pcl_hat"].values
    full_err, obs_err = ds_obs["cl_full_err"].values, ds_obs["pcl_err"].values
    ratio, ratio_err = ds_obs["ratio"].values, ds_obs["ratio_err"].values
    for ell in range(1, min(10, full.size - 1) + 1):
        lines.append(f"  {ell:<3d} {full[ell]:10.3e} +- {full_err[ell]:8.2e}   {obs[ell]:10.3e} +- {obs_err[ell]:8.2e}"
                     f"{'':14s}{ratio[ell]:6.3f} +- {ratio_err[ell]:.3f}")
    for key, (fit, status) in fits.items():
        text = _bpl_text(fit.record()) if fit is not None else status
        lines.append(f"  broken power law, {key}: {text}")
    return "\n".join(lines)


def run_observatory(run_dir, b0, gradient, band="combined", *, frame: str = "galactic", remove_m0: bool = True,
                    time_index: int | None = None, progress: bool = False, formats=("png", "pdf")):
    """``crsky observe``: :func:`observe_run`, the file, the figure and the text summary.

    Returns
    -------
    paths : list of pathlib.Path
        ``RUN_DIR/observatory/<band>.nc`` and ``RUN_DIR/figures/observatory_<band>.<fmt>``.
    text : str
        :func:`format_observatory`.
    """
    from .. import plots
    from .dataset import load_current_analysis

    ds = load_current_analysis(run_dir)
    obs = observe_run(run_dir, b0, gradient, band, frame=frame, remove_m0=remove_m0, time_index=time_index,
                      ds=ds, progress=progress)
    ds_obs = observatory_dataset(obs, ds, b0=b0, gradient=gradient, frame=frame)
    paths = [write_observatory(ds_obs, run_dir)]
    fits = _shape_fits(ds_obs)
    plots._use_agg()
    fig = plots.plot_observatory(ds_obs, fits)
    try:
        paths += plots.save_figure(fig, Path(run_dir) / plots.FIGURES_DIR,
                                   f"observatory_{output_name(ds_obs.attrs['band'])}", formats)
    finally:
        fig.clear()
    return paths, format_observatory(ds_obs, fits)
