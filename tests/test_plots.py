"""Figures (crsky.plots) and the observed-spectrum reader (crsky.observed)."""

from __future__ import annotations

import math
from pathlib import Path

import healpy as hp
import numpy as np
import pytest

from crsky import plots
from crsky.observed import ObservedSpectrum, read_observed

FORMATS = ("png", "pdf")
#: stem -> figure size in inches (width, height) at plots._DPI
EXPECTED = {
    "fig2_spectrum_evolution": (8.0, 6.2),
    "fig3_spectrum_shape": (12.4, 6.8),
    "skymaps_parallel": (13.2, 6.6),
    "diffusion_coefficients": (7.5, 5.6),
    "gyrotropy": (13.0, 7.0),  # two gradient rows: 2.9 per row + 1.2
    "angle_dependence": (12.0, 4.9),
    "observed_comparison": (9.0, 6.0),
}

OBSERVED_CSV = """\
# synthetic test spectrum (not a measurement)
ell, C_ell, error, noise
1, 2.0e-7, 0.2e-7, 2.5e-11
2, 3.1e-8, 0.3e-8, 2.5e-11   # trailing comment
3, 1.05e-8, 0.12e-8, 2.5e-11

4, 4.9e-9, 0.6e-9, 2.5e-11
6, 1.5e-9, 0.2e-9, 2.5e-11
30, 2.0e-11, 1.0e-11, 2.5e-11
40, -1.0e-11, 1.0e-11, 2.5e-11
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny real run, its analysis and its figures (with an observed overlay)."""
    from crsky.analysis import analyze
    from crsky.config import resolve_config
    from crsky.ensemble import run_ensemble

    tmp = tmp_path_factory.mktemp("plots")
    cfg = resolve_config({"turbulence": {"n_modes": 16}, "particles": {"nside": 4},
                          "integration": {"t_max": 50.0, "n_snapshots": 8, "dt": 0.05},
                          "ensemble": {"realisations": 4}})
    run_dir = tmp / "run"
    run_ensemble(cfg, run_dir, backend="cpu", progress=False)
    observed = tmp / "observed.csv"
    observed.write_text(OBSERVED_CSV)
    analyze(run_dir)
    paths = plots.make_figures(run_dir, observed=observed)
    return run_dir, paths, observed


# ---------------------------------------------------------------------------------
# make_figures
# ---------------------------------------------------------------------------------
def test_every_figure_written(run):
    run_dir, paths, _ = run
    expected = {run_dir / "figures" / f"{stem}.{fmt}" for stem in EXPECTED for fmt in FORMATS}
    expected.add(run_dir / "figures" / "observed_fit.json")  # the fits of the observed spectrum
    assert set(paths) == expected
    assert len(paths) == len(expected)
    assert (run_dir / "analysis.nc").is_file() and (run_dir / "summary.json").is_file()
    # no temporary files left behind
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == sorted(p.name for p in expected)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_png_decodes_with_expected_size_and_content(run, stem):
    import matplotlib.image as mpimg

    run_dir, _, _ = run
    img = mpimg.imread(run_dir / "figures" / f"{stem}.png")
    width, height = EXPECTED[stem]
    assert img.shape[:2] == (round(height * plots._DPI), round(width * plots._DPI))
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not blank
    white = np.all(rgb > 0.98, axis=-1).mean()
    assert 0.3 < white < 0.995  # mostly white paper, but with something drawn on it
    # several distinct colours (lines, bands, maps), not a single-colour drawing
    colours = np.unique((rgb[::4, ::4] * 15).round().reshape(-1, 3), axis=0)
    assert len(colours) > 20


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_pdf_non_trivial(run, stem):
    run_dir, _, _ = run
    data = (run_dir / "figures" / f"{stem}.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(data) > 10_000


def test_rerun_uses_existing_analysis_and_overwrites(run):
    run_dir, _, _ = run
    analysis = run_dir / "analysis.nc"
    before = analysis.stat().st_mtime_ns
    paths = plots.make_figures(run_dir, formats=("png",))
    assert analysis.stat().st_mtime_ns == before  # up to date: not recomputed
    assert {p.name for p in paths} == {f"{s}.png" for s in EXPECTED if s != "observed_comparison"}


def test_plot_never_writes_the_analysis(run):
    """make_figures reads analysis.nc and summary.json and writes neither."""
    run_dir, _, _ = run
    files = [run_dir / "analysis.nc", run_dir / "summary.json"]
    before = [(f.stat().st_mtime_ns, f.read_bytes()) for f in files]
    plots.make_figures(run_dir, formats=("png",))
    assert [(f.stat().st_mtime_ns, f.read_bytes()) for f in files] == before


def test_plot_refuses_without_a_current_analysis(run, tmp_path, capsys):
    """No analysis.nc, or one of other realisations than the run holds: plot says to run
    analyze (exit 2, one line) and writes nothing; it never analyses by itself."""
    import shutil

    from crsky.analysis import AnalysisNotCurrentError, load_analysis, write_analysis
    from crsky.cli import main

    run_dir, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("figures", "analysis.nc", "summary.json"))
    with pytest.raises(AnalysisNotCurrentError, match="crsky analyze"):
        plots.make_figures(copy)
    assert main(["plot", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"run `crsky analyze {copy}` first" in err
    assert not (copy / "analysis.nc").exists() and not (copy / "figures").exists()
    # an analysis of 3 of the 4 realisations the run holds is out of date
    write_analysis(load_analysis(run_dir).isel(realisation=slice(0, 3)), copy / "analysis.nc")
    with pytest.raises(AnalysisNotCurrentError, match="used 3 realisations, the run now has 4"):
        plots.make_figures(copy)


def test_sky_maps_are_the_stored_maps_of_the_realisation(run):
    """The analysis stores dI = [x - 3 K_map p].g of its sky-map realisation at the
    sky-map times; recomputed here from the realisation file (same arithmetic: equal)."""
    from crsky.analysis import load_analysis, relative_intensity, select_map_times
    from crsky.store import RunStore

    run_dir, _, _ = run
    ds = load_analysis(run_dir)
    r = int(ds.attrs["skymap_realisation"])
    assert r == int(ds["realisation"][0])
    times = ds["map_time"].values
    np.testing.assert_array_equal(times, select_map_times(ds["t_omega"].values))
    real = RunStore.existing(run_dir).read_realisation(r)
    for name in ds["gradient"].values:
        g = ds["gradient_vector"].sel(gradient=name).values
        for m, k in enumerate(times):
            want = relative_intensity(real["x"].values[k], real["p"].values[k], g, ds["K_map"].values[k])
            np.testing.assert_allclose(ds["skymap"].sel(gradient=name).values[m], want, rtol=1e-13, atol=1e-15)


def test_bad_observed_file_fails_before_anything_is_written(run, tmp_path):
    import shutil

    run_dir, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("figures"))
    with pytest.raises(ValueError, match="no such file"):
        plots.make_figures(copy, observed=tmp_path / "missing.csv")
    assert not (copy / "figures").exists()


def test_cli_plot_bad_observed_exit_2(run, tmp_path, capsys):
    from crsky.cli import main

    run_dir, _, _ = run
    bad = tmp_path / "bad.csv"
    bad.write_text("ell,C_ell\n1,2e-7\n")
    assert main(["plot", str(run_dir), "--observed", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.csv" in err and "error" in err


# ---------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("nside", [1, 4, 8])
def test_arrival_map_is_the_antipodal_permutation(nside):
    npix = hp.nside2npix(nside)
    v = np.array(hp.pix2vec(nside, np.arange(npix))).T
    # a map of momentum directions p_i, seen in arrival directions n = -p
    for c in range(3):
        arrival = plots.arrival_map(v[:, c])
        np.testing.assert_allclose(arrival, -v[:, c], atol=1e-12)
    m = np.random.default_rng(1).normal(size=npix)
    assert np.array_equal(np.sort(plots.arrival_map(m)), np.sort(m))
    np.testing.assert_array_equal(plots.arrival_map(plots.arrival_map(m)), m)


def test_select_times_steady_state():
    t = np.geomspace(0.1, 2000.0, 40)
    idx, steady = plots.select_times(t)
    assert steady and len(idx) == 3
    assert idx[-1] == 39 and t[idx[0]] >= 100.0 and t[idx[0] - 1] < 100.0
    assert idx[0] < idx[1] < idx[2]
    mid = math.sqrt(t[idx[0]] * t[idx[2]])
    assert abs(math.log(t[idx[1]] / mid)) <= abs(math.log(t[idx[1] + 1] / t[idx[1]]))


def test_select_times_without_steady_state():
    t = np.geomspace(0.1, 50.0, 8)
    idx, steady = plots.select_times(t)
    assert not steady and idx[-1] == 7 and len(idx) == 3 and len(set(idx)) == 3
    idx, _ = plots.select_times(np.array([1.0, 200.0]))
    assert list(idx) == [0, 1]


def test_select_map_times():
    t = np.geomspace(0.1, 300.0, 24)
    idx = plots.select_map_times(t)
    assert len(idx) == 3 and idx[-1] == 23 and abs(math.log(t[idx[0]])) < 0.4


def test_observed_overlay_beyond_simulated_lmax(run):
    from crsky.analysis import load_analysis

    run_dir, _, observed = run
    ds = load_analysis(run_dir)
    obs = read_observed(observed)
    assert obs.ell.max() > ds.sizes["ell"] - 1  # l = 30, 40 > lmax = 11
    fig = plots.plot_observed(ds, [obs, ObservedSpectrum(obs.ell[:3], obs.cl[:3] * 2, obs.error[:3], None,
                                                         "second", obs.path)])
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("observed: observed" in t for t in texts) and any("observed: second" in t for t in texts)
    assert any("not shown" in t for t in texts)  # the negative C_ell at l = 40
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlim()[1] > 40


def test_scale_to_recovers_amplitude():
    ell = np.arange(1, 11)
    model = ell ** -2.0
    obs = ObservedSpectrum(ell, 3e-7 * model, 0.1 * 3e-7 * model, None, "x", Path("x.csv"))
    assert plots._scale_to(ell, model, obs) == pytest.approx(3e-7, rel=1e-12)


# ---------------------------------------------------------------------------------
# read_observed
# ---------------------------------------------------------------------------------
def test_read_observed_valid(tmp_path):
    path = tmp_path / "ic.csv"
    path.write_text("# comment\n\n Ell , c_ell,ERROR ,noise, other\n3,1e-8,1e-9,2e-11,x\n1,2e-7,2e-8,2e-11,y\n"
                    "2.0,3e-8,0,2e-11,z # trailing\n")
    obs = read_observed(path)
    assert obs.ell.tolist() == [1, 2, 3] and obs.ell.dtype == np.int64
    assert obs.cl.tolist() == [2e-7, 3e-8, 1e-8]
    assert obs.error.tolist() == [2e-8, 0.0, 1e-9]
    assert obs.noise.tolist() == [2e-11] * 3
    assert obs.label == "ic" and obs.path == path


def test_read_observed_without_noise(tmp_path):
    path = tmp_path / "hawc.csv"
    path.write_text("ell,C_ell,error\n2,3e-8,1e-9\n")
    obs = read_observed(path, label="HAWC")
    assert obs.noise is None and obs.label == "HAWC"


BAD = [
    ("", "empty file"),
    ("# only a comment\n\n", "empty file"),
    ("ell,C_ell,error\n", "no data rows"),
    ("1,2e-7,2e-8\n2,3e-8,3e-9\n", "missing header row"),
    ("ell,C_ell\n1,2e-7\n", "missing column error"),
    ("l,cl,err\n1,2e-7,2e-8\n", "missing columns ell, C_ell, error"),
    ("ell,C_ell,error,error\n1,2e-7,2e-8,1\n", "appears more than once"),
    ("ell,C_ell,error\n1,abc,2e-8\n", "line 2, column C_ell: 'abc' is not a number"),
    ("ell,C_ell,error\n1,2e-7,\n", "column error: '(empty)' is not a number"),
    ("ell,C_ell,error\n1,nan,2e-8\n", "not a finite number"),
    ("ell,C_ell,error\n1,2e-7,inf\n", "not a finite number"),
    ("ell,C_ell,error\n1,2e-7,-2e-8\n", "negative error"),
    ("ell,C_ell,error,noise\n1,2e-7,2e-8,-1\n", "negative noise"),
    ("ell,C_ell,error\n1.5,2e-7,2e-8\n", "ell = 1.5 is not a positive integer"),
    ("ell,C_ell,error\n0,2e-7,2e-8\n", "ell = 0 is not a positive integer"),
    ("ell,C_ell,error\n-2,2e-7,2e-8\n", "is not a positive integer"),
    ("ell,C_ell,error\nx,2e-7,2e-8\n", "column ell: 'x' is not a number"),
    ("ell,C_ell,error\n1,2e-7,2e-8\n1,3e-8,2e-9\n", "ell = 1 repeats line 2"),
    ("ell,C_ell,error\n1,2e-7\n", "line 2: 2 fields, the header has 3"),
    ("ell,C_ell,error\n1,2e-7,2e-8,5\n", "line 2: 4 fields, the header has 3"),
]


@pytest.mark.parametrize("content, message", BAD, ids=[m for _, m in BAD])
def test_read_observed_errors(tmp_path, content, message):
    path = tmp_path / "spectrum.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        read_observed(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text and "\n" not in text


def test_read_observed_missing_file_and_directory(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.csv: no such file"):
        read_observed(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="not a regular file"):
        read_observed(tmp_path)


def test_read_observed_binary(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_observed(path)


# ---------------------------------------------------------------------------------
# Fig. 3: the curve drawn as the fit is the stored fit
# ---------------------------------------------------------------------------------
def test_fig3_fit_line_is_the_stored_fit(run):
    """The crimson 'fit' lines of Fig. 3 are the analysis' fit_curve, point for point,
    and that curve is fit_norm times eq. 4.7 at p_fit, with the normalisation of the fit
    itself (fit_p re-run on the stored C_hat_l and errors gives the same p and A).

    ``fit_nsigma = 0`` so that the tiny run has a fit (parallel: l = 2..5)."""
    from crsky.analysis import analyze_run
    from crsky.bgk import bgk_ratio, fit_p

    run_dir, _, _ = run
    ds = analyze_run(run_dir, fit_nsigma=0.0)
    d = ds.sel(gradient="parallel")
    p_fit, amp = float(d["p_fit"]), float(d["fit_norm"])
    lo, hi = int(d["fit_lmin"]), int(d["fit_lmax"])
    assert 0 < p_fit < 1 and hi >= 4, "the fixture must have a fit"
    curve = np.asarray(d["fit_curve"].values)
    lmax = ds.sizes["ell"] - 1
    # the stored curve is the fitted one: same p and A as fit_p on the stored inputs (the
    # fit is deterministic: equality up to the minimiser's rounding, 1e-12)
    cl_hat, err = d["cl_hat"].values[-1], d["cl_err"].values[-1]
    ells = np.arange(lo, hi + 1)
    refit = fit_p(ells, cl_hat[ells] / cl_hat[1], err[ells] / cl_hat[1], lmin=lo, lmax=hi)
    assert refit.p == pytest.approx(p_fit, rel=1e-12) and refit.norm == pytest.approx(amp, rel=1e-12)
    np.testing.assert_array_equal(curve[1:], amp * bgk_ratio(p_fit, lmax))
    assert math.isnan(curve[0])

    plots._use_agg()
    fig = plots.plot_spectrum_shape(ds)
    fig.canvas.draw()
    ax = fig.axes[0]  # the parallel panel
    lines = [line for line in ax.get_lines() if line.get_gid() == "bgk_fit"]
    assert len(lines) == 2  # the whole curve and the thick fitted range
    for line in lines:
        x = np.asarray(line.get_xdata(), dtype=int)
        y = np.asarray(line.get_ydata(), dtype=float)
        assert x.size > 0
        np.testing.assert_array_equal(y, curve[x])  # exactly the stored curve
    thick = max(lines, key=lambda line: line.get_linewidth())
    assert set(np.asarray(thick.get_xdata(), dtype=int)) == set(range(lo, hi + 1))


def test_observed_with_every_c_ell_negative_is_drawn(run, tmp_path):
    """A noise-subtracted spectrum may be negative everywhere (the reader allows it):
    the overlay is still written, with a note that nothing is drawn on the log axis."""
    from crsky.analysis import load_analysis

    run_dir, _, _ = run
    path = tmp_path / "negative.csv"
    path.write_text("ell,C_ell,error\n1,-2e-7,1e-8\n2,-1e-7,1e-8\n3,-5e-8,1e-8\n")
    fig = plots.plot_observed(load_analysis(run_dir), read_observed(path))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("no observed" in t for t in texts)
    paths = plots.save_figure(fig, tmp_path / "figs", "observed_comparison")
    assert all(p.stat().st_size > 1000 for p in paths)


# ---------------------------------------------------------------------------------
# Legends, labels, the steady-state line (Agg)
# ---------------------------------------------------------------------------------
def _legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def _plain_words(texts) -> list[str]:
    """Texts that spell an estimator in plain words instead of mathtext."""
    import re

    bad = re.compile(r"C_hat|sigma_noise|noise_err|chi2|t Omega")
    return [t for t in texts if bad.search(re.sub(r"\$[^$]*\$", "", t))]


def test_fig2_every_line_and_band_in_the_legend(run):
    from crsky.analysis import load_analysis

    plots._use_agg()
    ds = load_analysis(run[0])
    # the fixture ends at t Omega = 50; stretch the time axis so that t Omega = 100 is inside
    stretched = ds.assign_coords(t_omega=ds["t_omega"] * 10.0)
    fig = plots.plot_spectrum_evolution(stretched)
    texts = _legend_texts(fig)
    joined = "\n".join(texts)
    for words in (r"$\langle C_0\rangle$", r"$\langle C_1\rangle$", r"$\ell$ = 2..9 (colour bar)",
                  "standard-diffusion dipole", "shade: down to the estimate", "shot noise",
                  r"$\nabla n/n \parallel \mathbf{B}_0$", r"$\nabla n/n \perp \mathbf{B}_0$",
                  "standard error over", r"$t\Omega$ = 100: steady state"):
        assert words in joined, words
    # the l = 2..9 curves are keyed by a colour bar with one tick per multipole
    colourbars = [ax for ax in fig.axes if "multipole" in ax.get_xlabel()]
    assert len(colourbars) == 1
    assert [int(round(v)) for v in colourbars[0].get_xticks()] == list(range(2, 10))
    assert not _plain_words(texts + [ax.get_xlabel() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes])
    # without t Omega = 100 in range there is no marker and no legend entry for it
    assert "steady state" not in "\n".join(_legend_texts(plots.plot_spectrum_evolution(ds)))


def test_fig3_fit_band_in_the_legend_and_steady_line_from_the_analysis(run):
    from crsky.analysis import analyze_run

    plots._use_agg()
    ds = analyze_run(run[0], fit_nsigma=0.0)  # a fit for the parallel gradient (see above)
    fig = plots.plot_spectrum_shape(ds)
    texts = _legend_texts(fig)
    joined = "\n".join(texts)
    for words in ("BGK eq. 4.7, p = 1/3", "BGK eq. 4.7, p = 1/2", "BGK eq. 4.7, p = 2/3",
                  "fit at $t\\Omega$", r"1$\sigma$ range of p", "thin steps: noise", "below the noise level"):
        assert words in joined, words
    assert not _plain_words(texts)
    figure_texts = "\n".join(t.get_text() for t in fig.texts)
    for flag, words in ((1, "parallel: steady"), (0, "parallel: NOT steady")):
        changed = ds.copy()
        changed["steady_state"] = ds["steady_state"].copy(data=np.full(ds.sizes["gradient"], flag, dtype=np.int8))
        text = "\n".join(t.get_text() for t in plots.plot_spectrum_shape(changed).texts)
        assert words in text, text
    if not int(ds["steady_state"].sel(gradient="parallel")):
        assert "parallel: NOT steady" in figure_texts
    older = ds.drop_vars(["steady_state", "steady_state_sigma"])
    assert "not tested" in "\n".join(t.get_text() for t in plots.plot_spectrum_shape(older).texts)


def test_plot_replaces_its_figure_set_and_lists_the_files(run, tmp_path, capsys):
    """An earlier --observed call leaves observed_comparison.* and PDFs; a plain PNG-only
    call removes them (and nothing that crsky did not write) and prints exactly the files
    in the directory."""
    import shutil

    from crsky.cli import main

    run_dir, _, observed = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("figures"))
    assert main(["plot", str(copy), "--observed", str(observed)]) == 0
    figures = copy / plots.FIGURES_DIR
    assert (figures / "observed_comparison.png").is_file()
    (figures / "notes.txt").write_text("mine")
    (figures / "my_plot.png").write_bytes(b"mine")
    capsys.readouterr()
    assert (figures / "fig3_spectrum_shape.pdf").is_file()
    assert main(["plot", str(copy), "--format", "png"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = {line.strip() for line in out[1:]}
    on_disk = {p.name for p in figures.iterdir()} - {"notes.txt", "my_plot.png"}
    assert listed == on_disk and f"wrote {len(on_disk)} files" in out[0]
    assert on_disk and all(name.endswith(".png") for name in on_disk)  # the old PDFs went with the old set
    assert not (figures / "observed_comparison.png").exists() and not (figures / "observed_comparison.pdf").exists()
    assert (figures / "notes.txt").read_text() == "mine" and (figures / "my_plot.png").read_bytes() == b"mine"


def test_reproduce_with_a_config_counts_what_is_in_the_directory(tmp_path, capsys):
    from crsky.cli import main

    config = tmp_path / "tiny.toml"
    config.write_text('[turbulence]\nn_modes = 8\n[particles]\nnside = 2\n'
                      '[integration]\nt_max = 10.0\nn_snapshots = 4\ndt = 0.1\n[ensemble]\nrealisations = 2\n')
    out = tmp_path / "run"
    assert main(["reproduce", str(config), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "crsky run:" not in captured.err and "realisation/s" not in captured.err  # --quiet: no bars
    lines = captured.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("figures: wrote"))
    count = int(lines[head].split("wrote ")[1].split()[0])
    files = sorted(p.name for p in (out / plots.FIGURES_DIR).iterdir())
    assert count == len(files) and sorted(line.strip() for line in lines[head + 1:]) == files


def test_reproduce_help_for_every_option_and_in_the_readme():
    from crsky.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for command, options in (("reproduce", ("CONFIG", "--preset", "--out", "--force", "--quiet", "--backend",
                                            "--workers")),
                             ("analyze", ("--json", "--partial", "--gradient", "--K"))):
        actions = {a.dest: a for a in sub.choices[command]._actions}
        for a in actions.values():
            if a.dest not in ("help", "debug"):
                assert a.help, (command, a.dest)
        usage = next(line for line in readme.splitlines() if line.strip().startswith(f"crsky {command} "))
        block = readme[readme.index(usage):readme.index(usage) + 400]
        for option in options:
            assert option in block, (command, option)
