"""Spectra against the angle between the density gradient and B0, from the stored quadratic forms.

The map ``dI = [x - 3 K p] . g`` is linear in ``g``, so every power the analysis
computes is a quadratic form in ``g``: ``<C_l>(g) = g_i g_j cl_form_ij(l)``, the standard
dipole ``g_i g_j dipole_standard_form_ij``, the shot noise ``(4 pi / N_pix) 2T K^s_ij g_i
g_j``. ``analysis.nc`` stores the forms (``cl_form``, ``cl_form_cov``,
``dipole_standard_form``) with ``K``, ``K_rel`` and ``K_map``, so the spectra of a gradient
at any angle to ``B0`` follow without a new pass over the realisations and without
backtracking (docs/analysis.md, "Any gradient, any angle").
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .dataset import TIME_DIM
from .estimators import FORM_PAIRS, gradient_at_angle

__all__ = ["angle_spectra", "form_power"]


def form_power(form, g) -> np.ndarray:
    """``g_i g_j form_ij`` over the last two axes of ``form`` (..., 3, 3) for gradients ``g`` (n, 3):
    shape (n, ...)."""
    return np.einsum("ni,...ij,nj->n...", np.atleast_2d(g), np.asarray(form), np.atleast_2d(g))


def angle_spectra(ds: xr.Dataset, angles_deg=None) -> xr.Dataset:
    """``<C_l>``, the standard dipole, the noise and ``C_hat_l / C_hat_1`` against the angle
    between the gradient and ``B0``.

    Parameters
    ----------
    ds : xarray.Dataset
        An analysis (:func:`crsky.analysis.load_analysis`) with the variables
        ``cl_form``, ``cl_form_cov``, ``dipole_standard_form``, ``K``, ``K_rel``,
        ``K_map``.
    angles_deg : array_like, optional
        Angles in degrees in ``[0, 180]``; default 0 to 90 in steps of 1. The gradient is
        :func:`crsky.analysis.estimators.gradient_at_angle` (x-z plane, unit length).

    Returns
    -------
    xarray.Dataset
        Dimensions ``angle`` (degrees), ``t_omega``, ``ell``: ``cl``, ``cl_err``,
        ``noise`` (the analysis' noise model), ``cl_hat``, ``ratio`` (``C_hat_l /
        C_hat_1``), ``dipole_standard`` (``C_1`` of the mean map),
        ``dipole_standard_unbiased``, ``dipole_standard_theory`` (``4 pi |K_map g|^2``);
        dimensionless powers for ``|g| = 1 / L_c``. At 0 and 90 degrees they equal the
        analysis' ``parallel`` and ``perpendicular`` values to rounding.

    Raises
    ------
    crsky.errors.InputError
        An angle outside ``[0, 180]``.
    """
    angles = np.arange(0.0, 90.5, 1.0) if angles_deg is None else np.atleast_1d(np.asarray(angles_deg, float))
    G = np.stack([gradient_at_angle(a) for a in angles])  # (A, 3)
    R = int(ds.attrs["n_realisations_used"])
    npix = int(ds.attrs["npix"])
    cl = form_power(ds["cl_form"].values, G)  # (A, t, L)
    c = G[:, FORM_PAIRS[0]] * G[:, FORM_PAIRS[1]] * np.where(FORM_PAIRS[0] == FORM_PAIRS[1], 1.0, 2.0)
    var = np.einsum("na,tlab,nb->ntl", c, ds["cl_form_cov"].values, c)
    cl_err = np.sqrt(np.clip(var, 0.0, None))
    K_noise = ds["K_rel"].values if ds.attrs.get("noise_model") == "relative" else ds["K"].values
    twoT = 2.0 * np.asarray(ds["T"].values, dtype=float)
    noise = 4.0 * np.pi / npix * twoT[None, :] * form_power(K_noise, G)  # (A, t)
    cl_hat = cl - noise[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = cl_hat / cl_hat[..., 1:2]
    dipole = form_power(ds["dipole_standard_form"].values, G)  # (A, t)
    dipole_unbiased = (R * dipole - cl[..., 1]) / (R - 1) if R > 1 else np.full_like(dipole, np.nan)
    Kg = np.einsum("tij,nj->nti", ds["K_map"].values, G)
    theory = 4.0 * np.pi * np.einsum("nti,nti->nt", Kg, Kg)
    pw = {"units": "1", "comment": "power of the dimensionless dI for |g| = 1/L_c; scales as |g L_c|^2"}
    at, atl = ("angle", TIME_DIM), ("angle", TIME_DIM, "ell")
    return xr.Dataset(
        {
            "gradient_vector": (("angle", "i"), G, {"long_name": "gradient (sin a, 0, cos a)", "units": "1",
                                                    "code_units": "1/L_c"}),
            "cl": (atl, cl, {"long_name": "ensemble mean <C_l> of dI", **pw}),
            "cl_err": (atl, cl_err, {"long_name": "standard error of <C_l> over realisations", **pw}),
            "noise": (at, noise, {"long_name": f"shot noise ({ds.attrs.get('noise_model', 'eq3.1')})", **pw}),
            "cl_hat": (atl, cl_hat, {"long_name": "C_hat_l = <C_l> - N", **pw}),
            "ratio": (atl, ratio, {"long_name": "C_hat_l / C_hat_1", "units": "1"}),
            "dipole_standard": (at, dipole, {"long_name": "C_1 of the realisation-averaged map <dI>", **pw}),
            "dipole_standard_unbiased": (at, dipole_unbiased, {"long_name": "(R C_1(<dI>) - <C_1>)/(R-1)", **pw}),
            "dipole_standard_theory": (at, theory, {"long_name": "4 pi |K_map g|^2 (eq. 1.1)", **pw}),
        },
        coords={"angle": ("angle", angles, {"long_name": "angle between the gradient and B0", "units": "degree"}),
                TIME_DIM: ds[TIME_DIM].values, "ell": ds["ell"].values, "i": ["x", "y", "z"]},
        attrs={"analysis_id": ds.attrs.get("analysis_id", ""), "n_realisations_used": R},
    )
