"""Sky pixels and directions: what a pixel of a crsky map is, and the arrival-direction sky.

Every map crsky stores (the analysis' ``skymap``, the realisation files' ``x`` and
``p``) is a HEALPix map in RING ordering whose pixel ``i`` holds the cosmic ray with
momentum direction ``p_i`` (the pixel centre) at ``t = 0``; that cosmic ray arrives
*from* ``-p_i`` (docs/conventions.md, "Sky pixels and directions"). A map drawn with
``healpy.mollview`` as stored therefore shows the sky of momentum directions, the
antipode of the sky an observer sees; :func:`arrival_direction_map` turns it into
the arrival-direction sky.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["PIXEL_CONVENTION", "HEALPIX_ORDERING", "arrival_direction_map", "map_attributes"]

#: HEALPix ordering of every stored map.
HEALPIX_ORDERING = "RING"
#: What pixel ``i`` of a stored map is, in words (stored as an attribute of each map).
PIXEL_CONVENTION = ("pixel i is the momentum direction p_i (the HEALPix pixel centre) of the cosmic ray at "
                    "t = 0; its arrival direction on the sky is -p_i (crsky.analysis.arrival_direction_map)")


def map_attributes(nside: int, direction: str = "momentum") -> dict:
    """netCDF attributes that say what the pixels of a map are.

    Parameters
    ----------
    nside : int
        HEALPix resolution.
    direction : {"momentum", "arrival"}
        Whether pixel ``i`` is the momentum direction ``p_i`` (as stored) or the arrival
        direction (after :func:`arrival_direction_map`).
    """
    text = PIXEL_CONVENTION if direction == "momentum" else (
        "pixel i is the arrival direction of the cosmic ray (the momentum direction at t = 0 is minus the "
        "pixel centre)")
    return {"healpix_ordering": HEALPIX_ORDERING, "healpix_nside": int(nside), "pixel_direction": direction,
            "pixel_convention": text}


@functools.lru_cache(maxsize=8)
def _antipodes(npix: int) -> np.ndarray:
    import healpy as hp

    nside = hp.npix2nside(npix)
    v = np.array(hp.pix2vec(nside, np.arange(npix)))
    return hp.vec2pix(nside, -v[0], -v[1], -v[2])


def arrival_direction_map(values):
    """Remap HEALPix maps (RING) from momentum directions ``p_i`` to arrival directions ``-p_i``.

    Pixel ``i`` of a stored map belongs to the cosmic ray with momentum direction
    ``p_i``; it arrives from ``-p_i``, the centre of the antipodal pixel (the HEALPix
    grid is symmetric under ``n -> -n``, so this is an exact permutation, its own
    inverse). The angular power spectrum is unchanged (parity multiplies ``a_lm`` by
    ``(-1)^l``).

    Parameters
    ----------
    values : array_like or xarray.DataArray, shape (..., npix)
        Maps with pixels along the last axis, ``npix = 12 nside^2``; for example
        ``ds["skymap"]`` of an analysis.

    Returns
    -------
    numpy.ndarray or xarray.DataArray
        ``out[..., antipode(i)] = values[..., i]``, same type and shape; a DataArray
        keeps its coordinates and gets ``pixel_direction = "arrival"``.
    """
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(values, xr.DataArray):
        import healpy as hp

        out = values.copy(data=arrival_direction_map(values.values))
        out.attrs.update(map_attributes(hp.npix2nside(values.shape[-1]), "arrival"))
        return out
    values = np.asarray(values)
    out = np.empty_like(values)
    out[..., _antipodes(values.shape[-1])] = values
    return out
