"""Forward model of a ground-based observatory (crsky.analysis.observatory, `crsky observe`)."""

from __future__ import annotations

import os
import subprocess
import sys

import healpy as hp
import numpy as np
import pytest

from crsky.analysis import observatory as obs
from crsky.analysis.harmonics import anafast_options
from crsky.errors import InputError


def _random_map(nside, seed):
    return np.random.default_rng(seed).standard_normal(hp.nside2npix(nside))


@pytest.mark.parametrize("frame, b0, gradient", [
    ("galactic", (210.5, -4.5), (0.0, 0.0)),
    ("icrs", (30.0, 40.0), (100.0, -70.0)),
    ("galactic", (10.0, 80.0), (10.0, 80.0)),  # gradient along B0: azimuth free
])
def test_rotation_puts_b0_and_the_gradient_where_given(frame, b0, gradient):
    """R z_hat is B0 and R (sin theta, 0, cos theta) is the gradient, both to < 1e-9 rad
    (astropy separation); R is a proper rotation."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    R, theta = obs.sky_rotation(obs.sky_direction(b0, frame), obs.sky_direction(gradient, frame))
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-14)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-14)
    names = ("l", "b") if frame == "galactic" else ("ra", "dec")

    def on_sky(vec):
        return SkyCoord(x=vec[0], y=vec[1], z=vec[2], representation_type="cartesian", frame="icrs")

    given_b0 = SkyCoord(**{names[0]: b0[0] * u.deg, names[1]: b0[1] * u.deg}, frame=frame)
    given_g = SkyCoord(**{names[0]: gradient[0] * u.deg, names[1]: gradient[1] * u.deg}, frame=frame)
    assert on_sky(R @ [0, 0, 1]).separation(given_b0).rad < 1e-9
    t = np.radians(theta)
    assert on_sky(R @ [np.sin(t), 0, np.cos(t)]).separation(given_g).rad < 1e-9
    assert theta == pytest.approx(given_b0.separation(given_g).deg, abs=1e-9)


def test_full_sky_band_without_filter_reproduces_the_full_sky_cl():
    """Rotation, synthesis at 2 nside and the transform of the 'partial' sky change
    nothing when the band is the whole sky and m = 0 is kept: C_l to 1e-8 relative
    (measured 1e-10; the equatorial map is sampled at 2 nside for exactly this)."""
    nside = 8
    m = _random_map(nside, 3)
    lmax = 3 * nside - 1
    R, _ = obs.sky_rotation(obs.sky_direction((210.5, -4.5)), obs.sky_direction((300.0, 30.0)))
    alm = obs.equatorial_alm(m, R, lmax)
    full = obs.pseudo_cl(hp.alm2map(alm, 2 * nside, lmax=lmax), obs.resolve_band((-90, 90)), lmax, remove_m0=False)
    reference = hp.anafast(m, lmax=lmax, **anafast_options(nside))
    np.testing.assert_allclose(full, reference, rtol=1e-8)
    np.testing.assert_allclose(hp.alm2cl(alm), reference, rtol=1e-12)  # the rotation alone: to rounding
    np.testing.assert_allclose(obs.noise_transfer(2 * nside, lmax, obs.resolve_band((-90, 90)), False), 1.0,
                               rtol=1e-8)


def test_pure_m0_map_has_no_power_after_the_filter():
    """A map of declination only (only a_l0 in equatorial coordinates) is invisible to the
    detector: after the ring-mean filter its pseudo-C_l is zero to rounding, in any band;
    without the filter it is not."""
    nside, lmax = 16, 47
    rng = np.random.default_rng(8)
    alm = np.zeros(hp.Alm.getsize(lmax), dtype=complex)
    ell, em = hp.Alm.getlm(lmax)
    alm[em == 0] = rng.standard_normal(int(np.sum(em == 0)))
    m = hp.alm2map(alm, nside, lmax=lmax)
    for band in ("icecube", "hawc", "combined", (-90, 90)):
        b = obs.resolve_band(band)
        kept = obs.pseudo_cl(m, b, lmax, remove_m0=False)
        removed = obs.pseudo_cl(m, b, lmax, remove_m0=True)
        assert kept[1:].max() > 1e-3
        assert removed.max() < 1e-24 * kept[1:].max(), band


def test_ring_filter_keeps_m_not_0_and_noise_transfer_matches_f_sky():
    """A map with no m = 0 part keeps its full-sky C_l through the filter (to 1e-6: the
    polar rings of n_r = 4, 8, ... pixels also average away the m = n_r, 2 n_r, ... modes
    they alias, measured 2.6e-7 here);
    white noise through a band without the filter keeps a fraction f_sky of its power
    (within 5 % below lmax / 2: the mask's coupling and the ring weights)."""
    nside, lmax = 8, 23
    alm = hp.map2alm(_random_map(2 * nside, 4), lmax=lmax, iter=3)
    alm[hp.Alm.getlm(lmax)[1] == 0] = 0.0
    m = hp.alm2map(alm, 2 * nside, lmax=lmax)
    full = obs.pseudo_cl(m, obs.resolve_band((-90, 90)), lmax, remove_m0=True)
    np.testing.assert_allclose(full[1:], hp.alm2cl(alm)[1:], rtol=1e-6)
    band = obs.resolve_band("hawc")
    T = obs.noise_transfer(2 * nside, lmax, band, remove_m0=False)
    f_sky = obs.band_mask(2 * nside, band).mean()
    np.testing.assert_allclose(T[: lmax // 2], f_sky, rtol=0.05)


@pytest.mark.parametrize("band, message", [
    ("-20,-90", "empty or inverted"),
    ("10,10", "empty or inverted"),
    ("-100,0", "must be in [-90, 90]"),
    ("0,95", "must be in [-90, 90]"),
    ("south", "expected one of icecube, hawc, combined or DECMIN,DECMAX"),
    ("a,b", "must be two numbers"),
])
def test_bad_bands(band, message):
    with pytest.raises(InputError, match=__import__("re").escape(message)):
        obs.resolve_band(band)


@pytest.mark.parametrize("frame", ["galactic", "icrs"])
def test_cartesian_direction_is_the_same_direction_as_lon_lat(frame):
    """X,Y,Z in the frame (any length) and LON,LAT of that vector give one ICRS unit vector;
    the galactic frame's Cartesian axes point to (l, b) = (0, 0), (90, 0) and the pole."""
    lon, lat = np.radians([34.7, 56.6])
    xyz = 2.5 * np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    np.testing.assert_allclose(obs.sky_direction(xyz, frame), obs.sky_direction((34.7, 56.6), frame), atol=1e-12)
    np.testing.assert_allclose(obs.sky_direction((0, 0, 1), frame), obs.sky_direction((0.0, 90.0), frame), atol=1e-12)


def test_bad_directions():
    with pytest.raises(InputError, match="zero length"):
        obs.sky_direction((0, 0, 0), "galactic", "B0")
    with pytest.raises(InputError, match=r"latitude must be in \[-90, 90\]"):
        obs.sky_direction((10, 91), "galactic", "B0")
    with pytest.raises(InputError, match="zero length"):
        obs.sky_rotation([0, 0, 0], [1, 0, 0])
    assert obs.resolve_band("icecube").dec_max == -20.0 and obs.resolve_band("-10, 30").dec_min == -10.0


# -- a real (tiny) run ------------------------------------------------------------------

def test_full_sky_observatory_of_a_run_is_the_analysis(analysed_run):
    """B0 and the gradient in one direction (the analysis' 'parallel'), the whole sky, m = 0
    kept: each realisation's full-sky C_l is the analysis' to rounding and the
    observatory's pseudo-C_l equals it to 1e-8; the noise is the analysis' N."""
    from crsky.analysis import load_current_analysis

    ds = load_current_analysis(analysed_run)
    res = obs.observe_run(analysed_run, (30, 40), (30, 40), (-90, 90), frame="icrs", remove_m0=False, ds=ds)
    d = ds.sel(gradient="parallel")
    np.testing.assert_allclose(res.cl_full, d["cl_realisation"].values[:, -1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.pcl[:, 1:], res.cl_full[:, 1:], rtol=1e-8)
    assert res.noise == pytest.approx(float(d["noise"].values[-1]), rel=1e-12) and res.f_sky == 1.0


def test_observatory_figure_and_file(analysed_run):
    """The figure (Agg) has both spectra, both noise levels and the ratio in its legends;
    the file holds what the figure shows."""
    from crsky import plots
    from crsky.analysis import load_current_analysis

    plots._use_agg()
    ds = load_current_analysis(analysed_run)
    res = obs.observe_run(analysed_run, (210.5, -4.5), (0, 0), "icecube", ds=ds)
    ds_obs = obs.observatory_dataset(res, ds, b0=(210.5, -4.5), gradient=(0, 0), frame="galactic")
    fig = plots.plot_observatory(ds_obs, {})
    texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any("full sky" in t for t in texts) and any("observatory icecube (m = 0 removed)" in t for t in texts)
    assert any("observatory noise" in t for t in texts) and any("shot noise" in t for t in texts)
    assert any("observatory / full sky" in t for t in texts)
    assert ds_obs.attrs["f_sky"] == pytest.approx(obs.band_mask(8, obs.resolve_band("icecube")).mean())
    np.testing.assert_allclose(ds_obs["pcl_hat"].values,
                               (res.pcl.mean(0) - res.noise * res.noise_transfer) / res.f_sky)
    assert np.all(np.isfinite(ds_obs["ratio_err"].values[1:]))


def _crsky(*args):
    return subprocess.run([sys.executable, "-m", "crsky.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})


def test_cli_observe_writes_file_and_figure(analysed_run):
    proc = _crsky("observe", analysed_run, "--b0", "210.5,-4.5", "--gradient", "0,0", "--band", "hawc", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "observatory hawc" in proc.stdout and "f_sky" in proc.stdout
    assert (analysed_run / "observatory" / "hawc.nc").is_file()
    assert (analysed_run / "figures" / "observatory_hawc.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--b0", "0,0,0", "--gradient", "1,0"], "zero length"),
    (["--b0", "10,0", "--gradient", "1,0", "--band=-20,-90"], "empty or inverted"),
    (["--b0", "10,0", "--gradient", "1,0", "--band", "0,95"], "must be in [-90, 90]"),
])
def test_cli_observe_bad_input_exit_2(analysed_run, args, message):
    """One line on stderr, exit 2, nothing written (real processes)."""
    proc = _crsky("observe", analysed_run, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
