import dataclasses

import numpy as np
import pytest
from reference import field_reference

from crsky.config import TurbulenceConfig
from crsky.turbulence import field, make_modes, spectrum_weights, wavenumbers

GEOMETRIES = ["isotropic", "slab", "2d", "composite"]


def test_wavenumbers_log_spaced_with_both_ends():
    k = wavenumbers(0.01, 100.0, 256)
    assert k[0] == pytest.approx(2 * np.pi / 100.0, rel=1e-14)
    assert k[-1] == pytest.approx(2 * np.pi / 0.01, rel=1e-14)
    ratios = k[1:] / k[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_mode_is_transverse(geometry):
    modes = make_modes(TurbulenceConfig(geometry=geometry, n_modes=300), seed=3, realisation=7)
    k, a = modes[0:3], modes[3:6]
    kdota = np.abs((k * a).sum(axis=0)) / (np.linalg.norm(k, axis=0) * np.linalg.norm(a, axis=0))
    assert kdota.max() < 1e-14  # div B = 0 mode by mode


def test_isotropic_amplitudes_follow_the_spec_spectrum():
    t = TurbulenceConfig(n_modes=256, sigma2=1.7)
    modes = make_modes(t, seed=0, realisation=0)
    k = np.linalg.norm(modes[0:3], axis=0)
    a2 = (modes[3:6] ** 2).sum(axis=0)
    g = k**3 / (1.0 + k**t.gamma)  # docs/conventions.md, "Turbulent field", written directly (L_c = 1)
    np.testing.assert_allclose(a2, 2 * t.sigma2 * g / g.sum(), rtol=1e-12)
    np.testing.assert_allclose(k, wavenumbers(t.lambda_min, t.lambda_max, t.n_modes), rtol=1e-14)


def test_reduced_spectra_have_the_same_inertial_range():
    k = np.geomspace(1e3, 1e4, 5)
    for d in (1, 2, 3):
        slope = np.diff(np.log(spectrum_weights(k, 11 / 3, d))) / np.diff(np.log(k))
        np.testing.assert_allclose(slope, -2 / 3, atol=2e-3)  # energy per ln k ~ k^-(gamma-3)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_mean_turbulent_energy_is_sigma2(geometry):
    # Over random phases <|dB|^2> = sum A_n^2 / 2 = sigma2 exactly; estimate it over
    # 300 realisations x 16 points and compare within 4 standard errors (the error of
    # the mean of per-realisation averages; points of one realisation are correlated).
    t = TurbulenceConfig(geometry=geometry, n_modes=64, sigma2=0.8, slab_fraction=0.3)
    rng = np.random.default_rng(1)
    per_realisation = []
    for j in range(300):
        pts = rng.uniform(-50, 50, size=(16, 3))
        b = field(make_modes(t, seed=11, realisation=j), pts)
        b[:, 2] -= 1.0
        per_realisation.append((b**2).sum(axis=1).mean())
    per_realisation = np.array(per_realisation)
    err = per_realisation.std(ddof=1) / np.sqrt(len(per_realisation))
    assert abs(per_realisation.mean() - t.sigma2) < 4 * err
    assert err < 0.05 * t.sigma2  # the test has the power to see a 20% error


def test_isotropic_directions_are_isotropic():
    modes = make_modes(TurbulenceConfig(n_modes=20000), seed=0, realisation=0)
    khat = modes[0:3] / np.linalg.norm(modes[0:3], axis=0)
    # Each component of a uniform unit vector has mean 0 and variance 1/3; the error
    # of the mean is sqrt(1/3 / N) = 0.0041, of the variance sqrt(4/45 / N) = 0.0021.
    np.testing.assert_allclose(khat.mean(axis=1), 0.0, atol=4 * 0.0041)
    np.testing.assert_allclose((khat**2).mean(axis=1), 1 / 3, atol=4 * 0.0021)


def test_slab_is_transverse_to_b0_and_depends_on_z_only(rng):
    modes = make_modes(TurbulenceConfig(geometry="slab", n_modes=50), seed=2, realisation=0)
    pts = rng.uniform(-10, 10, size=(100, 3))
    b = field(modes, pts)
    np.testing.assert_array_equal(b[:, 2], 1.0)  # dB perpendicular to z
    on_axis = pts * [0, 0, 1]
    np.testing.assert_allclose(b, field(modes, on_axis), rtol=0, atol=1e-13)


def test_2d_has_no_z_dependence_and_is_transverse(rng):
    modes = make_modes(TurbulenceConfig(geometry="2d", n_modes=50), seed=2, realisation=0)
    pts = rng.uniform(-10, 10, size=(100, 3))
    b = field(modes, pts)
    np.testing.assert_array_equal(b[:, 2], 1.0)
    np.testing.assert_allclose(b, field(modes, pts * [1, 1, 0]), rtol=0, atol=1e-13)


def test_composite_energy_split():
    t = TurbulenceConfig(geometry="composite", n_modes=64, sigma2=2.0, slab_fraction=0.25)
    modes = make_modes(t, seed=0, realisation=0)
    slab = (modes[0] == 0) & (modes[1] == 0)
    a2 = (modes[3:6] ** 2).sum(axis=0)
    assert slab.sum() == 32
    assert a2[slab].sum() == pytest.approx(2 * t.sigma2 * 0.25, rel=1e-12)
    assert a2[~slab].sum() == pytest.approx(2 * t.sigma2 * 0.75, rel=1e-12)


def test_realisation_is_fixed_by_parameters_seed_and_index():
    t = TurbulenceConfig(n_modes=32)
    a = make_modes(t, 5, 3)
    np.testing.assert_array_equal(a, make_modes(t, 5, 3))
    assert not np.array_equal(a, make_modes(t, 5, 4))
    assert not np.array_equal(a, make_modes(t, 6, 3))
    # Independent of other realisations having been generated first, and of the order.
    for j in (9, 0, 3):
        make_modes(t, 5, j)
    np.testing.assert_array_equal(a, make_modes(t, 5, 3))


def test_sigma2_zero_is_the_uniform_field(rng):
    modes = make_modes(TurbulenceConfig(sigma2=0.0, n_modes=8), 0, 0)
    b = field(modes, rng.normal(size=(10, 3)))
    np.testing.assert_array_equal(b, np.tile([0.0, 0.0, 1.0], (10, 1)))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_numba_field_matches_numpy_oracle(geometry, rng):
    t = dataclasses.replace(TurbulenceConfig(), geometry=geometry, n_modes=256)
    modes = make_modes(t, seed=4, realisation=2)
    # Positions out to 100 L_c: phases up to ~6e4 rad, as late in a run.
    pts = rng.uniform(-100, 100, size=(500, 3))
    np.testing.assert_allclose(field(modes, pts), field_reference(modes, pts), rtol=0, atol=1e-12)


def test_field_accepts_any_leading_shape(rng):
    modes = make_modes(TurbulenceConfig(n_modes=16), 0, 0)
    pts = rng.normal(size=(4, 5, 3))
    assert field(modes, pts).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="last axis"):
        field(modes, np.zeros((4, 2)))
