"""Gyrotropy about B0 and the local field, and spectra at any angle between gradient and B0.

Tolerances are written next to each assertion with their reason; seeds are fixed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import healpy as hp
import numpy as np
import pytest

from crsky import analysis as an
from crsky.analysis.harmonics import anafast_options, axial_coefficients, rotate_to_axis
from crsky.config import ConfigError, TurbulenceConfig, analysis_gradients, resolve_config
from crsky.store import RunStore, realisation_dataset
from crsky.turbulence import local_field_direction, make_modes

NSIDE = 16
LMAX = 3 * NSIDE - 1
AXIS = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])


def _alm(m):
    return hp.map2alm(m, lmax=LMAX, **anafast_options(NSIDE))


def _axisymmetric_map(axis):
    """A band-limited map symmetric about ``axis``: P_1 + P_2 + P_3 of mu = n . axis."""
    n = np.array(hp.pix2vec(NSIDE, np.arange(hp.nside2npix(NSIDE)))).T
    mu = n @ axis
    return mu + 0.5 * (3 * mu**2 - 1) / 2 + 0.3 * (5 * mu**3 - 3 * mu) / 2


def _power(alm):
    return hp.alm2cl(alm, lmax=LMAX)


def test_axisymmetric_map_has_all_its_power_in_m0_about_its_axis():
    alm = _alm(_axisymmetric_map(AXIS))
    cl = _power(alm)
    a0_axis, a0_z = axial_coefficients(alm, [AXIS, [0.0, 0.0, 1.0]], LMAX)
    ell = np.arange(LMAX + 1)
    gyro_axis, gyro_z = a0_axis**2 / (2 * ell + 1), a0_z**2 / (2 * ell + 1)
    # l = 1..3 carry the map. The quadrature of map2alm (iter=0, ring weights) is exact
    # to ~1e-5 relative for l <= 3 at nside 16 (docs/analysis.md table: <= 1.7e-4 for l <= nside)
    assert np.allclose(gyro_axis[1:4], cl[1:4], rtol=1e-4)
    # About z the m = 0 share of a map symmetric about AXIS is P_l(cos angle)^2 (addition theorem)
    c = AXIS[2]
    P = [c, (3 * c**2 - 1) / 2, (5 * c**3 - 3 * c) / 2]
    assert np.allclose(gyro_z[1:4] / cl[1:4], np.square(P), rtol=1e-3, atol=1e-6)
    assert np.all(gyro_z[1:4] < 0.7 * cl[1:4])


def test_rotation_conserves_cl_and_agrees_with_the_projection(rng):
    """healpy.rotate_alm: C_l conserved to rounding; its m = 0 row equals the addition-theorem projection."""
    m = rng.standard_normal(hp.nside2npix(NSIDE))
    alm = _alm(m)
    rotated = rotate_to_axis(alm, AXIS, LMAX)
    # a rotation is unitary per l: double-precision rounding of the Wigner recursion (~1e-13)
    assert np.allclose(_power(rotated), _power(alm), rtol=1e-10, atol=0)
    ell, mm = hp.Alm.getlm(LMAX)
    a0_rot = rotated[mm == 0]
    a0_proj = axial_coefficients(alm, [AXIS], LMAX)[0]
    assert np.allclose(a0_rot.imag, 0.0, atol=1e-10 * np.abs(a0_rot).max())
    assert np.allclose(a0_proj, a0_rot.real, rtol=0, atol=1e-10 * np.abs(a0_rot).max())
    # the map symmetric about AXIS is axisymmetric after the rotation; what is left in m != 0 is the
    # aliasing of map2alm's quadrature (iter=0, measured 2.5e-5 of the power at nside 16)
    sym = rotate_to_axis(_alm(_axisymmetric_map(AXIS)), AXIS, LMAX)
    assert np.sum(np.abs(sym[mm > 0]) ** 2) < 1e-4 * np.sum(np.abs(sym) ** 2)


def test_local_field_direction_is_the_plain_mode_sum_at_the_origin():
    turbulence = TurbulenceConfig(n_modes=48)
    for realisation in (0, 3):
        modes = make_modes(turbulence, 11, realisation)
        # B(0)/B0 = z_hat + sum_n A_n xi_n cos(beta_n)  (k . x = 0 at the origin)
        b = np.array([0.0, 0.0, 1.0]) + (modes[3:6] * np.cos(modes[6])).sum(axis=1)
        direction = local_field_direction(turbulence, 11, realisation)
        assert np.allclose(direction, b / np.linalg.norm(b), rtol=0, atol=1e-12)  # float64 field: rounding


def test_gyrotropy_estimator_splits_cl_exactly():
    """rest = <C_l> - gyro exactly; a map whose power is all in m = 0 about an axis has fraction 1 there."""
    rng = np.random.default_rng(3)
    R, T, L = 5, 2, 4
    axial = rng.standard_normal((R, T, 2, L, 6))
    G = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    w = an.estimators.map_weights(G, np.zeros((T, 3, 3)))  # dI = x . g
    only_m0 = np.einsum("gtc,rtlc->rgtl", w.w, axial[:, :, 0]) ** 2 / (2 * np.arange(L) + 1)
    g = an.estimators.gyrotropy(w, axial, only_m0)
    assert np.allclose(g.fraction[0], 1.0, rtol=1e-14) and np.allclose(g.rest[0], 0.0, atol=1e-14)
    extra = rng.uniform(0.5, 1.0, only_m0.shape)
    g = an.estimators.gyrotropy(w, axial, only_m0 + extra)
    assert np.allclose(g.gyro + g.rest, (only_m0 + extra).mean(axis=0)[None], rtol=1e-13)
    assert np.all(g.fraction[0] < 1.0) and np.all(np.isfinite(g.fraction_err))


# ---------------------------------------------------------------------------------
# End to end: a tiny synthetic run
# ---------------------------------------------------------------------------------
def _tiny_run(path, nside=4, realisations=4, t_omega=(1.0, 10.0), seed=5):
    """Random walks x and isotropic p; the field of the config gives each realisation's local axis."""
    cfg = resolve_config({
        "turbulence": {"n_modes": 16},
        "particles": {"nside": nside, "rl": 0.1},
        "integration": {"t_max": float(t_omega[-1]), "n_snapshots": len(t_omega), "dt": 0.05},
        "ensemble": {"realisations": realisations, "seed": seed},
    })
    store = RunStore.open(path, cfg)
    rng = np.random.default_rng(seed)
    npix = hp.nside2npix(nside)
    p0 = np.array(hp.pix2vec(nside, np.arange(npix))).T
    for r in range(realisations):
        x = np.sqrt(2 * np.asarray(t_omega) * 0.1)[:, None, None] * rng.standard_normal((len(t_omega), npix, 3))
        x[..., 2] += 0.3 * p0[:, 2]  # a dipole along z: gyrotropic about B0
        p = rng.standard_normal((len(t_omega), npix, 3))
        p /= np.linalg.norm(p, axis=-1, keepdims=True)
        store.record(r, store.write_realisation(realisation_dataset(cfg, r, t_omega, x, p), r))
    return path, cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, cfg = _tiny_run(tmp_path_factory.mktemp("gyro") / "run")
    ds, summary = an.analyze(path, gradients={**an.GRADIENT_PRESETS, "angle30": an.gradient_at_angle(30)})
    return path, cfg, ds, summary


def test_end_to_end_writes_the_gyrotropy(tiny):
    path, cfg, ds, summary = tiny
    saved = an.load_analysis(path)
    for name in ("cl_gyro", "cl_gyro_err", "cl_nongyro", "cl_nongyro_err", "gyro_fraction", "gyro_fraction_err",
                 "local_field_direction", "cl_form", "cl_form_cov", "dipole_standard_form"):
        assert name in saved, name
        assert saved[name].attrs["units"] == "1", name  # CF: udunits-valid
        assert saved[name].attrs["long_name"]
    assert list(saved["axis"].values) == ["B0", "local"]
    # the split is exact, per axis
    assert np.allclose(saved["cl_gyro"] + saved["cl_nongyro"], saved["cl"].broadcast_like(saved["cl_gyro"]),
                       rtol=1e-12, atol=0)
    # each realisation's axis is its field at the origin
    for k, r in enumerate(saved["realisation"].values):
        assert np.allclose(saved["local_field_direction"].values[k],
                           local_field_direction(cfg.turbulence, cfg.ensemble.seed, int(r)), atol=1e-15)
    assert summary["gradients"]["parallel"]["gyrotropy"]["B0"]["gyro_fraction"][1] is not None


def test_end_to_end_first_realisation_exact(tmp_path):
    """With one realisation the ensemble mean is that realisation: cl_gyro equals healpy's a_l0 exactly."""
    path, _ = _tiny_run(tmp_path / "run", realisations=1)
    ds = an.analyze_run(path)
    store = RunStore.existing(path)
    first = next(iter(store.iter_realisations()))[1]
    K = ds["K_map"].values[-1]
    lmax = int(ds.attrs["lmax"])
    ell, mm = hp.Alm.getlm(lmax)
    for name, g in (("parallel", [0.0, 0.0, 1.0]), ("perpendicular", [1.0, 0.0, 0.0])):
        g = np.asarray(g)
        dI = first["x"].values[-1] @ g - 3 * first["p"].values[-1] @ (K @ g)
        alm = hp.map2alm(dI, lmax=lmax, **anafast_options(4))
        about_z = alm[mm == 0].real ** 2 / (2 * ell[mm == 0] + 1)
        rotated = rotate_to_axis(alm, ds["local_field_direction"].values[0], lmax)
        about_local = rotated[mm == 0].real ** 2 / (2 * ell[mm == 0] + 1)
        # same transforms, linear recombination: rounding (relative 1e-10 of the largest power)
        scale = hp.alm2cl(alm).max()
        assert np.allclose(ds["cl_gyro"].sel(axis="B0", gradient=name).values[-1], about_z, atol=1e-10 * scale)
        assert np.allclose(ds["cl_gyro"].sel(axis="local", gradient=name).values[-1], about_local,
                           atol=1e-10 * scale)


def test_angle_spectra_reproduce_the_analysed_gradients(tiny):
    _, _, ds, _ = tiny
    a = an.angle_spectra(ds, [0.0, 30.0, 90.0])
    for k, name in enumerate(("parallel", "angle30", "perpendicular")):
        d = ds.sel(gradient=name)
        # the same quadratic forms, summed in another order: rounding
        for var in ("cl", "cl_err", "cl_hat", "dipole_standard", "dipole_standard_unbiased",
                    "dipole_standard_theory", "noise"):
            assert np.allclose(a[var].values[k], d[var].values, rtol=1e-9, atol=1e-14), (name, var)
    dense = an.angle_spectra(ds)
    assert dense.sizes["angle"] == 91 and dense["angle"].values[-1] == 90.0


def test_angle_and_direction_input_refused():
    with pytest.raises(an.estimators.InputError, match="between 0 and 180"):
        an.gradient_at_angle(181)
    with pytest.raises(ConfigError, match="zero length"):
        analysis_gradients({"gradients": {"a": [0, 0, 0]}})
    with pytest.raises(ConfigError, match="unknown key"):
        analysis_gradients({"gradient_angle": [3]})
    with pytest.raises(ConfigError, match="0 and 180"):
        analysis_gradients({"gradient_angles_deg": [-1]})
    got = analysis_gradients({"gradients": {"tilted": [1, 0, 1]}, "gradient_angles_deg": [45]})
    assert list(got) == ["parallel", "perpendicular", "tilted", "angle45"]
    assert np.allclose(got["angle45"], [np.sqrt(0.5), 0, np.sqrt(0.5)])
    # a run's config file may carry the [analysis] table: the run ignores it, but a bad one is refused early
    resolve_config({"analysis": {"gradient_angles_deg": [45]}, "particles": {"nside": 4}})


def test_run_config_with_a_bad_analysis_table_is_refused(tmp_path):
    from crsky.config import load_config

    path = tmp_path / "run.toml"
    path.write_text("[particles]\nnside = 4\n[analysis]\ngradient_angles_deg = [45]\n")
    assert load_config(path).particles.nside == 4
    path.write_text("[particles]\nnside = 4\n[analysis]\ngradient_angles_deg = [200]\n")
    with pytest.raises(ConfigError, match="between 0 and 180"):
        load_config(path)


@pytest.mark.parametrize("args, message", [
    (["--gradient-angle", "-1"], "between 0 and 180"),
    (["--gradient-angle", "180.5"], "between 0 and 180"),
    (["--gradient", "zero=0,0,0"], "must not be zero"),
    (["--config", "BAD"], "zero length"),
])
def test_cli_refuses_bad_gradients(tiny, tmp_path, args, message):
    path = tiny[0]
    bad = tmp_path / "bad.toml"
    bad.write_text("[analysis]\ngradients = {a = [0.0, 0.0, 0.0]}\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "crsky.cli", "analyze", str(path), "--out", str(tmp_path / "o"),
                           *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_cli_gradient_angle_and_config(tiny, tmp_path):
    path = tiny[0]
    cfg = tmp_path / "analysis.toml"
    cfg.write_text("[analysis]\ngradient_angles_deg = [60]\n")
    proc = subprocess.run([sys.executable, "-m", "crsky.cli", "analyze", str(path), "--out", str(tmp_path / "o"),
                           "--json", "--gradient-angle", "30", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert list(summary["gradients"]) == ["parallel", "perpendicular", "angle60", "angle30"]
    assert np.allclose(summary["gradients"]["angle30"]["gradient_vector"], [0.5, 0.0, np.sqrt(0.75)])
    assert set(summary["gradients"]["angle30"]["gyrotropy"]) == {"B0", "local"}
