"""Self-describing outputs: summary.json and its schema, analysis.nc's CF layout, the
K of the -3 K p term, extra gradients, the honest BGK fit, the steady-state test.

Real runs are tiny (nside 2, 8 modes, 3 realisations); runs that only need to exist are
written through the store with Brownian stand-in trajectories (no kernels).
"""

from __future__ import annotations

import json
import math

import healpy as hp
import jsonschema
import numpy as np
import pytest
import xarray as xr

from crsky import analysis as an
from crsky.cli import main
from crsky.config import resolve_config
from crsky.store import RunStore, realisation_dataset

def _schema():
    from crsky.analysis.report import SUMMARY_SCHEMA

    return json.loads(SUMMARY_SCHEMA.read_text())


def _tiny_config(**particles):
    return resolve_config({
        "turbulence": {"n_modes": 8},
        "particles": {"nside": 2, **particles},
        "integration": {"t_max": 20.0, "n_snapshots": 5, "dt": 0.1},
        "ensemble": {"realisations": 3},
    })


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two real runs: code units (rl) and physical units (100 TeV protons, 1 muG, L_c = 1 pc)."""
    from crsky.ensemble import run_ensemble

    tmp = tmp_path_factory.mktemp("outputs")
    runs = {}
    for name, particles in (("code", {}), ("physical", {"energy_tev": 100.0, "b0_microgauss": 1.0, "lc_pc": 1.0})):
        run_ensemble(_tiny_config(**particles), tmp / name, backend="cpu", progress=False)
        runs[name] = tmp / name
    return runs


def _brownian_run(path, t_omega, seed=5, realisations=4, nside=2, draws=None):
    """A run of Brownian stand-in trajectories; ``draws`` (x, p per realisation) reused if given."""
    cfg = resolve_config({
        "particles": {"nside": nside, "rl": 0.1},
        "integration": {"t_max": float(t_omega[-1]), "n_snapshots": len(t_omega), "dt": 0.05},
        "ensemble": {"realisations": realisations, "seed": seed},
    })
    store = RunStore.open(path, cfg)
    rng = np.random.default_rng(seed)
    npix = hp.nside2npix(nside)
    T = np.asarray(t_omega) * cfg.particles.rl
    out = []
    for r in range(realisations):
        if draws is None:
            x = np.sqrt(2.0 * T)[:, None, None] * rng.standard_normal((len(T), npix, 3))
            p = rng.standard_normal((len(T), npix, 3))
            p /= np.linalg.norm(p, axis=-1, keepdims=True)
        else:
            x, p = (a[: len(T)] for a in draws[r])
        out.append((x, p))
        store.record(r, store.write_realisation(realisation_dataset(cfg, r, t_omega, x, p), r))
    return path, out


def _numeric_keys(obj, skip=("config", "units", "unit_definitions", "K_map", "schema_version")):
    """Every key whose value is a number or a (nested) list of numbers (quantities; ``skip``:
    the configuration and inputs, documented in docs/conventions.md, and the layout version)."""
    keys = set()

    def numeric(v):
        if isinstance(v, bool) or v is None:
            return False
        if isinstance(v, (int, float)):
            return True
        return isinstance(v, list) and any(numeric(x) for x in v)

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in skip:
                    continue
                if numeric(v):
                    keys.add(k)
                walk(v)

    walk(obj)
    return keys


# ---------------------------------------------------------------------------------
# summary.json
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["code", "physical"])
def test_summary_validates_against_its_schema(tiny_runs, kind, capsys):
    run = tiny_runs[kind]
    assert main(["analyze", str(run)]) == 0
    summary = json.loads((run / an.SUMMARY_FILE).read_text())
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(summary, schema)
    ds = an.load_analysis(run)
    assert summary["crsky_version"] == ds.attrs["crsky_version"]
    assert summary["config"] == json.loads(ds.attrs["config"])
    assert (summary["nside"], summary["npix"], summary["lmax"]) == (2, 48, 5)
    assert summary["ell"] == list(range(6))
    np.testing.assert_array_equal(summary["T"], ds["T"].values)
    np.testing.assert_array_equal(summary["t_omega"], ds["t_omega"].values)
    # every quantity has a unit
    missing = _numeric_keys(summary) - set(summary["units"])
    assert not missing, missing
    if kind == "physical":
        phys = summary["physical_inputs"]
        assert (phys["energy_tev"], phys["b0_microgauss"], phys["lc_pc"]) == (100.0, 1.0, 1.0)
        # r_L / pc = 1.0810e-3 (E/TeV) / (|Z| B0/muG) (docs/conventions.md), L_c = 1 pc
        assert phys["rl"] == pytest.approx(1.0810e-1, rel=1e-3)
        assert phys["t_max_lc_over_c"] == pytest.approx(20.0 * phys["rl"], rel=1e-12)  # T = (t Omega) r_L
    else:
        assert summary["physical_inputs"] is None
    # t_max = 20 / Omega is far too short for the steady state: the summary says so
    codes = [w["code"] for w in summary["warnings"]]
    assert "steady_state_not_reached" in codes
    assert "WARNING (steady_state_not_reached)" in capsys.readouterr().out


def test_schema_rejects_a_summary_without_units(tiny_runs):
    run = tiny_runs["code"]
    an.analyze(run)
    summary = json.loads((run / an.SUMMARY_FILE).read_text())
    del summary["units"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(summary, _schema())


def test_schema_ships_with_the_package():
    from importlib.resources import files

    assert files("crsky").joinpath("schemas/summary.schema.json").is_file()


# ---------------------------------------------------------------------------------
# analysis.nc: CF layout
# ---------------------------------------------------------------------------------
def test_sel_by_t_omega_on_the_file(tmp_path):
    run, _ = _brownian_run(tmp_path / "run", (10.0, 100.0, 300.0, 1000.0))
    an.analyze(run)
    with xr.open_dataset(run / an.ANALYSIS_FILE) as ds:
        snap = ds.sel(t_omega=290.0, method="nearest")
        assert float(snap["t_omega"]) == 300.0
        assert float(snap["T"]) == pytest.approx(30.0, rel=1e-12)  # T = t Omega r_L, r_L = 0.1 L_c
        assert snap["cl"].dims == ("gradient", "ell")
        for name in ("gradient", "t_omega", "T", "ell", "realisation", "i", "j", "map_time"):
            assert ds[name].attrs.get("long_name"), name
        for name in ("t_omega", "T", "ell", "realisation", "i", "j"):
            assert ds[name].attrs.get("units") == "1", name
        # udunits: every variable's units is "1"; code units named in code_units
        for name, var in ds.data_vars.items():
            assert var.attrs.get("units") == "1", (name, var.attrs.get("units"))
        assert ds["K_par"].attrs["code_units"] == "L_c c"
        assert ds["T"].attrs["code_units"] == "L_c/c"
        assert ds["gradient_vector"].attrs["code_units"] == "1/L_c"
        config = json.loads(ds.attrs["config"])
        for section, values in config.items():
            for key, value in values.items():
                if value is not None:
                    flat = ds.attrs[f"config_{section}_{key}"]
                    assert flat == (int(value) if isinstance(value, bool) else value), (section, key)
        sky = ds["skymap"].attrs
        assert (sky["healpix_ordering"], int(sky["healpix_nside"]), sky["pixel_direction"]) == ("RING", 2, "momentum")
        assert "-p_i" in sky["pixel_convention"]


def test_older_layout_is_upgraded(tmp_path):
    """A file with the snapshot dimension ``time`` (earlier crsky) loads with ``t_omega`` indexed."""
    run, _ = _brownian_run(tmp_path / "run", (10.0, 100.0))
    ds, _ = an.analyze(run)
    old = ds.reset_coords("T").swap_dims({"t_omega": "time"})
    old["gradient"] = old["gradient"].astype(str)
    old.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    loaded = an.load_analysis(tmp_path / "old.nc")
    assert "t_omega" in loaded.indexes and "T" in loaded.coords
    np.testing.assert_array_equal(loaded["cl"].values, ds["cl"].values)


def test_arrival_direction_map_is_the_antipodal_permutation():
    nside = 4
    npix = hp.nside2npix(nside)
    m = np.arange(npix, dtype=float)
    out = an.arrival_direction_map(m)
    vec = np.array(hp.pix2vec(nside, np.arange(npix)))
    for i in (0, 17, npix - 1):
        j = hp.vec2pix(nside, *(-vec[:, i]))
        assert out[j] == m[i]
    np.testing.assert_array_equal(an.arrival_direction_map(out), m)  # an involution
    da = xr.DataArray(np.stack([m, 2 * m]), dims=("map_time", "pixel"), attrs=an.map_attributes(nside))
    arrived = an.arrival_direction_map(da)
    assert arrived.attrs["pixel_direction"] == "arrival" and arrived.dims == da.dims
    np.testing.assert_array_equal(arrived.values[1], 2 * out)


# ---------------------------------------------------------------------------------
# K of the -3 K p term, extra gradients
# ---------------------------------------------------------------------------------
def test_fixed_K_makes_C_l_independent_of_t_max(tmp_path, capsys):
    """Two runs with the same trajectories up to t Omega = 100, one continued to 1000: with
    the default K (late) the C_l at t Omega = 100 differ (K from the last snapshot); with a
    given K they are identical."""
    _, draws = _brownian_run(tmp_path / "long", (10.0, 100.0, 1000.0))
    short2, _ = _brownian_run(tmp_path / "short2", (10.0, 100.0), draws=draws)
    for argv in (["--K", "0.3,0.1"], []):
        assert main(["analyze", str(tmp_path / "long"), *argv]) == 0
        assert main(["analyze", str(short2), *argv]) == 0
        a = an.load_analysis(tmp_path / "long").sel(t_omega=100.0)
        b = an.load_analysis(short2).sel(t_omega=100.0)
        same = np.array_equal(a["cl"].values, b["cl"].values)
        assert same == bool(argv), argv
    capsys.readouterr()
    assert main(["analyze", str(short2), "--K", "0.3,0.1"]) == 0
    ds = an.load_analysis(short2)
    np.testing.assert_array_equal(ds["K_map"].values[-1], np.diag([0.1, 0.1, 0.3]))
    summary = json.loads((short2 / an.SUMMARY_FILE).read_text())
    assert summary["K_map"]["source"].startswith("given") and summary["K_map"]["constant_in_time"]
    assert "given" in capsys.readouterr().out


def test_gradient_option_adds_a_direction(tmp_path, capsys):
    run, _ = _brownian_run(tmp_path / "run", (10.0, 100.0))
    assert main(["analyze", str(run), "--gradient", "diag=1,1,0"]) == 0
    ds = an.load_analysis(run)
    assert list(ds["gradient"].values) == ["parallel", "perpendicular", "diag"]
    np.testing.assert_array_equal(ds["gradient_vector"].sel(gradient="diag").values, [1.0, 1.0, 0.0])
    summary = json.loads((run / an.SUMMARY_FILE).read_text())
    assert set(summary["gradients"]) == {"parallel", "perpendicular", "diag"}
    assert "Gradient diag" in capsys.readouterr().out


@pytest.mark.parametrize("value, words", [
    ("diag=0,0,0", "must not be zero"),
    ("diag=a,b,c", "three numbers"),
    ("diag=1,2", "three finite numbers"),
    ("diag=1,nan,2", "three finite numbers"),
    ("=1,2,3", "NAME=x,y,z"),
    ("parallel=1,0,0", "name is taken"),
])
def test_gradient_option_bad_input(tmp_path, capsys, value, words):
    run, _ = _brownian_run(tmp_path / "run", (10.0, 100.0))
    assert main(["analyze", str(run), "--gradient", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and words in err, err
    assert not (run / an.ANALYSIS_FILE).exists()


@pytest.mark.parametrize("value", ["lats", "1,2,3", "1,x", "inf,1"])
def test_K_option_bad_input(tmp_path, capsys, value):
    run, _ = _brownian_run(tmp_path / "run", (10.0, 100.0))
    assert main(["analyze", str(run), "--K", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--K" in err and "late, running" in err, err


# ---------------------------------------------------------------------------------
# BGK fit reported honestly
# ---------------------------------------------------------------------------------
def test_fit_interval_clipped_at_one_is_flagged():
    """A BGK spectrum with p = 0.9 and 30 % errors: the 1-sigma interval reaches p = 1 (the
    fit cannot tell 0.9 from 1 at that precision), so the upper end is the boundary."""
    from crsky.bgk import bgk_ratio

    cl = np.zeros(12)
    cl[1:] = bgk_ratio(0.9, 11)
    err = 0.3 * cl
    fit = an.fit_bgk(cl, noise_sigma=1e-6 * np.ones(12), sigma=err)
    assert fit.clipped_hi and not fit.clipped_lo and fit.p_hi == 1.0 and fit.clipped_flag == 2
    text = fit.interval_text()
    assert text.startswith(f"p = {fit.p:.2f} (") and text.endswith(".. 1, clipped at 1)"), text
    assert "interval clipped at 1" in fit.status


def test_tight_fit_is_not_clipped():
    from crsky.bgk import bgk_ratio

    cl = np.zeros(12)
    cl[1:] = bgk_ratio(0.5, 11)
    fit = an.fit_bgk(cl, noise_sigma=1e-6 * np.ones(12), sigma=0.01 * cl)
    assert fit.clipped_flag == 0 and 0 < fit.p_lo < 0.5 < fit.p_hi < 1
    assert "clipped" not in fit.interval_text()


@pytest.mark.parametrize("cl1, lmax, above, words", [
    (1.0, 3, 3, "lmax = 3 < 4"),
    (-1.0, 11, 11, "C_hat_1 = -1 <= 0"),
    (1.0, 11, 3, "only l = 2..3"),
    (1.0, 11, 1, "none"),
])
def test_no_fit_always_says_why(cl1, lmax, above, words):
    cl = np.full(lmax + 1, 1e-3)
    cl[1] = cl1
    cl[above + 1:] = -1e-3  # below the noise from l = above + 1 on
    fit = an.fit_bgk(cl, noise_sigma=1e-4 * np.ones(lmax + 1))
    assert math.isnan(fit.p) and fit.status.startswith("no fit: ") and words in fit.status, fit.status
    assert fit.interval_text() == fit.status


def test_table_reports_interval_relative_fit_and_sum_rule_form(tiny_runs):
    from crsky.analysis.report import summary_dict

    ds, _ = an.analyze(tiny_runs["code"])
    # a fit with its upper end clipped at 1, as a stored analysis would hold it
    fake = ds.copy(deep=True)
    for var, value in (("p_fit", 0.81), ("p_err", 0.29), ("p_lo", 0.42), ("p_hi", 1.0), ("fit_chi2_dof", 1.3)):
        fake[var][0] = value
    fake["p_clipped"][0] = 2
    fake["fit_lmin"][0], fake["fit_lmax"][0] = 2, 6
    fake.attrs["fit_status"] = "parallel: fitted l = 2..6, chi2/dof = 1.3, interval clipped at 1; perpendicular: x"
    summary = summary_dict(fake)
    fit = summary["gradients"]["parallel"]["bgk_fit"]
    assert fit["clipped_at"] == [1] and fit["p_hi"] == 1.0
    text = an.format_summary(summary)
    assert "p = 0.81 (0.42 .. 1, clipped at 1), 1 sigma, at t_Omega" in text and "l = 2..6, chi2/dof = 1.3" in text
    assert "BGK fit of the relative part" in text
    assert "expected" in text and "huge at early times" in text and "1 + 9|K g|^2/(2T K^s g g)" in text
    assert "Steady state:" in text


# ---------------------------------------------------------------------------------
# Steady state
# ---------------------------------------------------------------------------------
def _shape(r2, n_time=3, lmax=5):
    cl = np.zeros((n_time, lmax + 1))
    cl[:, 1] = 1.0
    cl[:, 2:] = r2[:, None] * 0.5 ** np.arange(lmax - 1)
    return cl


def test_steady_state_same_shape_passes_and_changed_shape_fails():
    t = np.array([50.0, 150.0, 300.0])
    err = np.full((3, 6), 0.01)
    noise = np.full((3, 6), 1e-4)
    same = an.steady_state(t, _shape(np.array([0.3, 0.2, 0.2])), err, noise)
    assert same.steady and same.tested and (same.t_early, same.t_late) == (150.0, 300.0)
    # r_2 0.2 -> 0.25 with a combined error 0.01 sqrt(2): 3.5 sigma > 2
    changed = an.steady_state(t, _shape(np.array([0.3, 0.2, 0.25])), err, noise)
    assert not changed.steady and changed.tested and changed.max_sigma == pytest.approx(0.05 / (0.01 * 2**0.5))
    below = an.steady_state(t, _shape(np.array([0.3, 0.2, 0.2])), err, np.full((3, 6), 1.0))
    assert not below.steady and not below.tested and "not above the noise" in below.status
