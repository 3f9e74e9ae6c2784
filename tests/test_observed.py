"""The observed-spectrum reader refuses, up front, everything the comparison figure
cannot draw: one line naming the file, the line and the column."""

import pytest

from crsky.errors import InputError
from crsky.observed import MAX_ELL, read_observed

HEADER = "ell,C_ell,error,noise\n"


@pytest.mark.parametrize("rows, message", [
    ("1,2e-7,2e-8,0\n2,3e-8,3e-9,0\n1e30,1e-9,1e-10,0\n", "line 4, column ell: ell = 1e30 is larger than 10000"),
    (f"{MAX_ELL + 1},2e-7,2e-8,0\n", f"line 2, column ell: ell = {MAX_ELL + 1} is larger than"),
    ("2.5,2e-7,2e-8,0\n", "line 2, column ell: ell = 2.5 is not a positive integer"),
    ("0,2e-7,2e-8,0\n", "line 2, column ell: ell = 0 is not a positive integer"),
    ("nan,2e-7,2e-8,0\n", "line 2, column ell: 'nan' is not a finite number"),
    ("1,2e-7,2e-8,0\n1.0,3e-8,2e-9,0\n", "line 3, column ell: ell = 1 repeats line 2"),
    ("1,nan,2e-8,0\n", "line 2, column C_ell: 'nan' is not a finite number"),
    ("1,2e-7,-1e-8,0\n", "line 2, column error: negative error -1e-8 (must be >= 0)"),
    ("1,2e-7,2e-8,-inf\n", "line 2, column noise: '-inf' is not a finite number"),
    ("1,2e-7,2e-8,-1\n", "line 2, column noise: negative noise -1"),
])
def test_bad_rows_name_line_and_column(tmp_path, rows, message):
    path = tmp_path / "spectrum.csv"
    path.write_text(HEADER + rows)
    with pytest.raises(InputError) as info:
        read_observed(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_every_c_ell_negative_is_read(tmp_path):
    """Noise-subtracted estimates may all be negative: the reader keeps them (the
    figure leaves them out of its logarithmic axis)."""
    path = tmp_path / "negative.csv"
    path.write_text(HEADER + "1,-2e-7,2e-8,1e-11\n2,-3e-8,3e-9,1e-11\n")
    obs = read_observed(path)
    assert list(obs.ell) == [1, 2] and (obs.cl < 0).all()


def test_largest_multipole_and_bom_are_accepted(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_bytes(("\ufeff" + HEADER + f"{MAX_ELL}.0,1e-9,1e-10,0\n3,1e-8,1e-9,0\n").encode())
    obs = read_observed(path)
    assert list(obs.ell) == [3, MAX_ELL]


def test_large_and_non_utf8_files_are_refused_unread(tmp_path):
    big = tmp_path / "big.csv"
    big.write_bytes(HEADER.encode() + b"1,2e-7,2e-8,0 #" + b"x" * (16 << 20) + b"\n")
    with pytest.raises(InputError, match="larger than 16 MiB"):
        read_observed(big)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"# Aartsen caf\xe9\n" + HEADER.encode() + b"1,2e-7,2e-8,0\n")
    with pytest.raises(InputError, match=r"line 1: not a UTF-8 text file \(byte 0xe9\)"):
        read_observed(latin1)


def test_cli_plot_refuses_bad_observed_before_any_figure(tmp_path, capsys):
    """`crsky plot RUN --observed bad.csv` on a real (tiny) run: exit 2, one line,
    and no figure written."""
    from crsky.cli import main

    (tmp_path / "c.toml").write_text("[turbulence]\nn_modes = 4\n[particles]\nnside = 1\n[integration]\n"
                                     "t_max = 0.3\nn_snapshots = 2\n[ensemble]\nrealisations = 1\n")
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu", "--quiet"]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "1,2e-7,2e-8,0\n1e30,1e-9,1e-10,0\n")
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "run"), "--observed", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 3, column ell: ell = 1e30 is larger than" in err
    assert not (tmp_path / "run" / "figures").exists()


# ---------------------------------------------------------------------------------
# Fits of observed spectra (BGK shape, broken power law), asymmetric errors
# ---------------------------------------------------------------------------------
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from crsky.bgk import bgk_ratio, fit_p
from crsky.observed import ObservedSpectrum, broken_power_law, fit_broken_power_law, fit_observed, noise_level

DATA = Path(__file__).parent / "data"
SYNTHETIC = DATA / "synthetic_observed.csv"
#: The broken power law tests/data/synthetic_observed.csv was drawn from (its header says so).
SYNTHETIC_TRUTH = dict(amplitude=3e-8, ell_break=4.0, slope_low=-3.0, slope_high=-1.2)


def split_normal(model, err_low, err_high, rng):
    """Data scattered about ``model`` with the asymmetric errors of a data point: a point
    above the model is off by ``err_low |z|`` (its lower bar points at the model), one
    below by ``err_high |z|``; so ``(data - model) / sigma_side = z`` exactly."""
    z = rng.standard_normal(np.shape(model))
    return np.where(z > 0, model + err_low * z, model + err_high * z)


def test_example_file_is_the_documented_draw():
    """The example file is what its header says: regenerate it from the seed."""
    rng = np.random.default_rng(2026)
    ell = np.arange(1, 31)
    model = broken_power_law(ell, **SYNTHETIC_TRUTH)
    expected = split_normal(model, 0.10 * model, 0.15 * model, rng)
    obs = read_observed(SYNTHETIC)
    assert obs.asymmetric and list(obs.ell) == list(ell)
    np.testing.assert_allclose(obs.cl, expected, rtol=1e-6)  # 7 significant digits in the file
    np.testing.assert_allclose(obs.error_low, 0.10 * model, rtol=1e-6)
    np.testing.assert_allclose(obs.error_high, 0.15 * model, rtol=1e-6)


def test_broken_power_law_recovers_the_synthetic_truth():
    """Each parameter within 3 of its fitted 1-sigma errors of the truth (a 0.3 % chance
    per parameter for a Gaussian error); chi^2 within 3 sigma of its expectation for 26
    degrees of freedom (chi^2/dof = 1 +- 3 sqrt(2/26) = 1 +- 0.83)."""
    obs = read_observed(SYNTHETIC)
    fit = fit_observed(obs, noise=noise_level(1.5e11, 0.3))
    b = fit.broken
    assert b.n_points == 30 and b.dof == 26 and not b.break_at_edge
    for name, err in (("amplitude", b.amplitude_err), ("ell_break", b.ell_break_err),
                      ("slope_low", b.slope_low_err), ("slope_high", b.slope_high_err)):
        assert abs(getattr(b, name) - SYNTHETIC_TRUTH[name]) < 3 * err, (name, getattr(b, name), err)
    assert abs(b.chi2_dof - 1) < 3 * np.sqrt(2 / 26)


def test_broken_power_law_errors_match_the_scatter():
    """Over 20 draws (seed 11) of symmetric 5 % errors: the mean chi^2/dof is 1 within
    3 sigma (sigma = sqrt(2 / (20 dof))); the scatter of the fitted slopes matches the
    reported error within the central 99.9 % of the sample standard deviation of 20
    Gaussian draws, sqrt(chi^2_19 quantile / 19) = 0.51 .. 1.54; the mean slope lies within one reported
    error of the truth (the fit is non-linear: over 200 draws its bias was measured at
    0.23 of one fit's error for the high slope, so the mean of 20 draws is not held to
    3 sigma / sqrt(20) but to the error of one fit)."""
    rng = np.random.default_rng(11)
    ell = np.arange(1, 21)
    truth = dict(amplitude=1e-8, ell_break=5.0, slope_low=-2.5, slope_high=-1.0)
    model = broken_power_law(ell, **truth)
    fits = [fit_broken_power_law(ell, split_normal(model, 0.05 * model, 0.05 * model, rng), 0.05 * model)
            for _ in range(20)]
    from scipy import stats

    dof = fits[0].dof
    assert abs(np.mean([f.chi2_dof for f in fits]) - 1) < 3 * np.sqrt(2 / (20 * dof))
    lo_ratio, hi_ratio = np.sqrt(stats.chi2.ppf([0.0005, 0.9995], 19) / 19)
    for name in ("slope_low", "slope_high"):
        values = np.array([getattr(f, name) for f in fits])
        reported = np.median([getattr(f, name + "_err") for f in fits])
        assert abs(values.mean() - truth[name]) < reported
        assert lo_ratio < values.std(ddof=1) / reported < hi_ratio, (name, values.std(ddof=1), reported)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_bgk_fit_of_data_recovers_p(asymmetric):
    """A BGK spectrum (p = 0.4, C_1 = 2e-7, l = 2..25) scattered by its errors (seed 5):
    the fitted p lies within 3 of its delta chi^2 = 1 half-widths (on the side of the
    truth) of 0.4; chi^2/dof within 3 sigma of 1 for 22 dof (1 +- 0.9); the
    normalisation (the fitted C_1, extrapolated from l >= 2 and so loosely held) within
    50 % of 2e-7."""
    rng = np.random.default_rng(5)
    ell = np.arange(2, 26)
    model = 2e-7 * bgk_ratio(0.4, 25)[ell - 1]
    lo, hi = 0.08 * model, (0.16 if asymmetric else 0.08) * model
    obs = ObservedSpectrum(ell, split_normal(model, lo, hi, rng), 0.5 * (lo + hi), None, "synthetic",
                           Path("synthetic.csv"), error_low=lo if asymmetric else None,
                           error_high=hi if asymmetric else None)
    fit = fit_observed(obs).bgk
    assert fit.ell_min == 2 and fit.dof == 22
    half_width = fit.p - fit.p_lo if fit.p > 0.4 else fit.p_hi - fit.p  # the side towards the truth
    assert abs(fit.p - 0.4) < 3 * half_width, (fit.p, fit.p_lo, fit.p_hi)
    assert abs(fit.chi2_dof - 1) < 3 * np.sqrt(2 / 22)
    assert abs(fit.norm / 2e-7 - 1) < 0.5


def test_asymmetric_errors_take_the_side_of_the_model():
    """With the lower bars tiny and the upper ones huge, a model above every point is
    cheap and one below is dear: the fitted normalisation moves up; with equal bars
    the asymmetric fit is the symmetric one to rounding."""
    ell = np.arange(2, 12)
    data = 1e-7 * bgk_ratio(0.5, 11)[ell - 1] * (1 + 0.05 * np.cos(ell))
    sym = fit_p(ell, data, 0.1 * data)
    same = fit_p(ell, data, 0.1 * data, ratio_err_high=0.1 * data)
    assert same.p == pytest.approx(sym.p, abs=1e-9) and same.norm == pytest.approx(sym.norm, rel=1e-9)
    up = fit_p(ell, data, 0.01 * data, ratio_err_high=1.0 * data)
    assert up.norm > sym.norm * 1.02


def test_noise_level_selects_the_multipoles_fitted():
    """Multipoles with C_ell <= N (f_sky 4 pi / N_CR) are left out of both fits."""
    obs = read_observed(SYNTHETIC)
    level = float(np.sort(obs.cl)[4])  # the five smallest C_ell are at or below it
    fit = fit_observed(obs, noise=level)
    assert fit.used.sum() == 25 and fit.broken.n_points == 25 and np.all(obs.cl[fit.used] > level)
    assert noise_level(1.5e11, 0.3) == pytest.approx(0.3 * 4 * np.pi / 1.5e11, rel=1e-15)


# -- the command line, real processes ---------------------------------------------------

def _crsky(*args):
    return subprocess.run([sys.executable, "-m", "crsky.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})


def test_cli_plot_fits_prints_and_stores(analysed_run):
    """`crsky plot RUN --observed synthetic.csv --n-cr --f-sky` (a real process): exit 0,
    one block of fit results on stdout equal to the stored figures/observed_fit.json,
    analysis.nc untouched."""
    import hashlib

    before = hashlib.sha256((analysed_run / "analysis.nc").read_bytes()).hexdigest()
    proc = _crsky("plot", analysed_run, "--observed", SYNTHETIC, "--n-cr", "1.5e11", "--f-sky", "0.3",
                  "--format", "png")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((analysed_run / "figures" / "observed_fit.json").read_text())
    from crsky.observed import format_comparison

    assert format_comparison(record) in proc.stdout
    assert "BGK eq. 4.7" in proc.stdout and "broken power law" in proc.stdout
    o = record["observed"][0]
    assert o["asymmetric_errors"] and o["noise_level"][0] == pytest.approx(0.3 * 4 * np.pi / 1.5e11)
    assert [s["gradient"] for s in record["simulation"]] == ["parallel", "perpendicular"]
    assert hashlib.sha256((analysed_run / "analysis.nc").read_bytes()).hexdigest() == before


def test_stale_fit_file_goes_with_its_figure(tmp_path):
    """A plot without --observed removes the fits of an earlier --observed plot."""
    from crsky import plots

    (tmp_path / "observed_fit.json").write_text("{}")
    (tmp_path / "notes.json").write_text("{}")
    removed = plots._remove_stale(tmp_path, [], ("png",))
    assert [p.name for p in removed] == ["observed_fit.json"] and (tmp_path / "notes.json").exists()


@pytest.mark.parametrize("rows, extra, message", [
    ("ell,C_ell,error\n1,2e-7,2e-8\n2,3e-8,0\n3,1e-8,1e-9\n4,5e-9,5e-10\n5,3e-9,3e-10\n6,2e-9,2e-10\n", [],
     "line 3: error 0 at ell = 2; a fit needs errors > 0"),
    ("ell,C_ell,error\n1,2e-7,2e-8\n2,3e-8,3e-9\n3,1e-8,1e-9\n4,5e-9,5e-10\n", [],
     "the broken power law (4 parameters) needs at least 5 multipoles, got 4"),
    ("ell,C_ell,error\n1,2e-7,2e-8\n", ["--n-cr", "1e10", "--f-sky", "1.5"], "--f-sky (sky fraction f_sky) must be in (0, 1]"),
])
def test_cli_plot_bad_fit_input_exit_2(analysed_run, tmp_path, rows, extra, message):
    """Bad input for a fit: one line on stderr, exit 2, no traceback (real processes)."""
    path = tmp_path / "obs.csv"
    path.write_text(rows)
    proc = _crsky("plot", analysed_run, "--observed", path, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("rows, extra, message", [
    ("ell,C_ell,error_low\n1,2e-7,2e-8\n", [], "column error_low without column error_high"),
    ("ell,C_ell,error,error_low,error_high\n1,2e-7,2e-8,1e-8,3e-8\n", [], "not both"),
    ("ell,C_ell,error\n1,2e-7,2e-8\n", ["--n-cr", "1e10"], "--n-cr needs --f-sky as well"),
    ("ell,C_ell,error\n1,2e-7,2e-8\n", ["--n-cr", "-3", "--f-sky", "0.5"], "--n-cr (number of events N_CR) must be > 0"),
    ("ell,C_ell,error_low,error_high\n1,2e-7,2e-8,-1e-8\n", [], "line 2, column error_high: negative error -1e-8"),
])
def test_plot_bad_error_columns_and_noise_options(analysed_run, tmp_path, capsys, rows, extra, message):
    """The same refusals in-process (the exit code and the one line come from crsky.cli.main)."""
    from crsky.cli import main

    path = tmp_path / "obs.csv"
    path.write_text(rows)
    capsys.readouterr()
    assert main(["plot", str(analysed_run), "--observed", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_no_fit_draws_zero_errors(analysed_run, tmp_path):
    """Without a fit a spectrum whose errors are 0 is drawn, and no fit file is written."""
    from crsky.plots import make_figures

    path = tmp_path / "obs.csv"
    path.write_text("ell,C_ell,error\n1,2e-7,0\n2,3e-8,0\n")
    paths = make_figures(analysed_run, observed=path, fit_observed=False, formats=("png",))
    assert "observed_comparison.png" in {p.name for p in paths}
    assert not (analysed_run / "figures" / "observed_fit.json").exists()
