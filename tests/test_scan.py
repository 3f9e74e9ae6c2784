"""``crsky scan``: sub-runs that are ordinary run directories (resumed and adopted like
``crsky run``), scan.nc with an ``rl`` dimension, the scan figures, one compilation for
every rigidity, and bad input refused in real processes with nothing written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from crsky.analysis import load_analysis
from crsky.cli import main
from crsky.config import load_config, resolve_config
from crsky.scan import (SCAN_FIGURE_STEMS, SCAN_FILE, plot_scan_diffusion, plot_scan_fits, plot_scan_shape, read_scan,
                        run_scan)

# Two rigidities at the smallest size that still gives a spectrum (nside 2: l <= 5).
BASE = """
[turbulence]
lambda_min = "auto"
n_modes = 16
[particles]
nside = 2
[integration]
n_snapshots = 5
dt = 0.1
[ensemble]
realisations = 3
"""
SCAN = BASE + """
[scan]
rl = [0.1, 0.03]
t_max = [20, 30]
"""


def _write(tmp_path, text, name="scan.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _legend_texts(fig) -> list[str]:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A scan made after ``crsky run`` made its first rigidity by hand (to be adopted)."""
    tmp = tmp_path_factory.mktemp("scan")
    config = _write(tmp, SCAN)
    single = _write(tmp, BASE.replace("nside = 2", "nside = 2\nrl = 0.1").replace("dt = 0.1", "dt = 0.1\nt_max = 20"),
                    "single.toml")
    out = tmp / "out"
    assert main(["run", str(single), "--out", str(out / "rl_0.1"), "--quiet"]) == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "rl_0.1" / "realisations").iterdir()}
    from crsky.backends import cpu_mixed

    signatures = list(cpu_mixed.trace_groups.signatures)  # compiled (or loaded) for rl = 0.1
    ds = run_scan(config, out, progress=False)  # computes rl = 0.03
    return {"out": out, "config": config, "single": single, "ds": ds, "before": before, "signatures": signatures}


def test_sub_runs_are_the_runs_of_crsky_run_and_an_existing_one_is_adopted(scanned):
    out, ds = scanned["out"], scanned["ds"]
    assert list(ds["rl"].values) == [0.1, 0.03] and list(ds["run"].values) == ["rl_0.1", "rl_0.03"]
    # the sub-run's resolved configuration is the one `crsky run` makes of the same TOML values
    assert load_config(out / "rl_0.1" / "config.toml").digest() == load_config(scanned["single"]).digest()
    plan = read_scan(scanned["config"])
    assert [p.config.turbulence.lambda_min for p in plan.points] == pytest.approx([0.01, 0.003])
    # adopted: not one realisation file rewritten, the scan's session computed nothing
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "rl_0.1" / "realisations").iterdir()}
    assert after == scanned["before"]
    sessions = json.loads((out / "rl_0.1" / "manifest.json").read_text())["sessions"]
    assert [s["pending"] for s in sessions] == [3, 0]


def test_scan_nc_holds_each_runs_analysis(scanned):
    out = scanned["out"]
    on_disk = xr.load_dataset(out / SCAN_FILE)
    assert on_disk.attrs["Conventions"] == "CF-1.10" and on_disk["rl"].attrs["code_units"] == "L_c"
    for k, name in enumerate(on_disk["run"].values):
        a = load_analysis(out / str(name)).isel(t_omega=-1)
        assert float(on_disk["K_par"][k]) == float(a["K_par"])
        assert float(on_disk["K_perp_err"][k]) == float(a["K_perp_err"])
        c_hat = a["cl_hat"].values
        ratio = on_disk["shape_ratio"].values[k]
        np.testing.assert_allclose(ratio[:, 2], c_hat[:, 2] / c_hat[:, 1], rtol=1e-12)
        np.testing.assert_array_equal(on_disk["steady_onset"].values[k],
                                      load_analysis(out / str(name))["steady_onset"].values)
        config = load_config(out / str(name) / "config.toml")
        assert int(on_disk["n_modes"][k]) == config.turbulence.n_modes
        assert float(on_disk["mode_evaluations"][k]) == 3 * 48 * round(config.integration.t_max / 0.1) * 16
        assert float(on_disk["wall_seconds"][k]) > 0
    for var in ("K_par", "dipole_amplitude", "steady_onset", "p_fit", "wall_seconds", "lambda_min"):
        assert "units" in on_disk[var].attrs and on_disk[var].attrs.get("long_name"), var


def test_rerun_recomputes_nothing_and_the_kernels_compile_once(scanned, capsys):
    from crsky.backends import cpu_mixed

    out = scanned["out"]
    pattern = ("rl_*/realisations/*.nc", "rl_*/analysis.nc", "rl_*/summary.json")
    stamps = {p: p.stat().st_mtime_ns for g in pattern for p in out.glob(g)}
    assert len(stamps) == 2 * 3 + 2 + 2
    assert main(["scan", str(scanned["config"]), "--out", str(out), "--quiet"]) == 0
    # neither the runs nor their (current) analyses are recomputed
    assert {p: p.stat().st_mtime_ns for g in pattern for p in out.glob(g)} == stamps
    printed = capsys.readouterr().out
    assert "onset" in printed and "K_par" in printed
    # rl is a runtime argument of the kernels: the second rigidity ran the loop compiled for the first
    assert scanned["signatures"] and list(cpu_mixed.trace_groups.signatures) == scanned["signatures"]


def test_scan_figures_and_their_legends(scanned):
    ds = scanned["ds"]
    assert sorted(p.name for p in (scanned["out"] / "figures").iterdir()) == sorted(
        f"{s}.{f}" for s in SCAN_FIGURE_STEMS for f in ("pdf", "png"))
    diffusion = _legend_texts(plot_scan_diffusion(ds))
    guide = [t for t in diffusion if "slope guide" in t]
    assert sorted(set(diffusion) - set(guide)) == [r"$K_\parallel$", r"$K_\perp$"]
    assert len(guide) == 1 and r"r_L^{1/3}" in guide[0] and "quasi-linear" in guide[0]
    shape = plot_scan_shape(ds)
    assert [ax.get_title() for ax in shape.axes] == ["parallel gradient", "perpendicular gradient"]
    texts = _legend_texts(shape)
    assert sum(t.startswith(r"$r_L/L_c$ = 0.1 ") for t in texts) == 2 and "BGK p = 1/2" in texts
    fits = _legend_texts(plot_scan_fits(ds))
    assert "p = 1/2 (Mertsch & Ahlers 2015)" in fits


def test_slope_guide_runs_through_the_highest_rigidity():
    rl = np.array([0.1, 0.01])
    ds = xr.Dataset({"K_par": ("rl", [0.6, 0.2]), "K_par_err": ("rl", [0.01, 0.01]),
                     "K_perp": ("rl", [0.03, 0.02]), "K_perp_err": ("rl", [0.001, 0.001])}, coords={"rl": rl})
    ax = plot_scan_diffusion(ds).axes[0]
    guide = next(line for line in ax.get_lines() if "slope guide" in line.get_label())
    x, y = guide.get_data()
    assert y[-1] == pytest.approx(0.6) and y[0] == pytest.approx(0.6 * 0.1 ** (1 / 3))


# -- bad input: real processes, exit 2, one line, nothing written ---------------------
# (extra [particles] lines, the [scan] table or other text, expected fragment of the message)
BAD = [
    ("", "[scan]\nrl = []\n", "[scan] rl is empty"),
    ("", "[scan]\nrl = [0.1, -0.03]\n", "every value must be a finite number > 0"),
    ("", "[scan]\nrl = [0.1, 0]\n", "every value must be a finite number > 0"),
    ("", "[scan]\nrl = [0.1, 0.03, 0.1]\n", "0.1 appears twice"),
    ("", "[scan]\nrl = [0.1, 0.1000000001]\n", "give the same rigidity rl_0.1"),
    ("", "[scan]\nenergy_tev = [1.0, 10.0]\n", "energy_tev needs [particles] b0_microgauss and lc_pc"),
    ("b0_microgauss = 3.0\n", "[scan]\nenergy_tev = [1.0]\n", "energy_tev needs [particles] lc_pc"),
    ("", "[scan]\nrl = [0.1, 0.03]\nt_max = [20]\n", "t_max has 1 values for 2 rigidities"),
    ("", "[scan]\nrl = [0.1]\nrigidity = [1]\n", "[scan] unknown key 'rigidity'; allowed: rl, energy_tev, t_max"),
    ("", "[scan]\nrl = [0.1]\nenergy_tev = [1.0]\n", "give exactly one of rl"),
    ("", "[scan]\nrl = 0.1\n", "[scan] rl must be a list"),
    ("rl = 0.1\n", "[scan]\nrl = [0.03]\n", "[particles] rl is set"),
    ("", "[scan]\nrl = [0.1, 1000.0]\n", "[scan] rl = 1000: "),  # a rigidity's own config error, named
    ("", "", "no [scan] table"),
]


def _run_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "crsky.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("particles,scan,fragment", BAD)
def test_bad_scan_input_exit_2_one_line_nothing_written(tmp_path, particles, scan, fragment):
    config = _write(tmp_path, BASE.replace("[particles]\n", "[particles]\n" + particles) + scan)
    out = tmp_path / "out"
    proc = _run_cli(["scan", str(config), "--out", str(out)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_sub_run_of_another_configuration_stops_the_scan_before_any_work(tmp_path):
    """The conflict is at the second rigidity: the first is not computed either."""
    config = _write(tmp_path, SCAN)
    other = BASE.replace("nside = 2", "nside = 2\nrl = 0.03").replace("dt = 0.1", "dt = 0.1\nt_max = 31")
    other = _write(tmp_path, other, "other.toml")
    out = tmp_path / "out"
    assert main(["run", str(other), "--out", str(out / "rl_0.03"), "--quiet"]) == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    proc = _run_cli(["scan", str(config), "--out", str(out)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "rl_0.03" in lines[0] and "different configuration" in lines[0], proc.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # rl_0.1 not made


def test_crsky_run_refuses_a_scan_config_with_a_pointer(tmp_path):
    config = _write(tmp_path, SCAN)
    proc = _run_cli(["run", str(config), "--out", str(tmp_path / "run")], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "crsky scan" in lines[0] and "[scan]" in lines[0]
    assert not (tmp_path / "run").exists()


def test_energy_scan_resolves_each_energy_like_a_physical_run(tmp_path):
    config = _write(tmp_path, BASE.replace("[particles]\n", "[particles]\nb0_microgauss = 3.0\nlc_pc = 1.0\n")
                    + "[scan]\nenergy_tev = [300.0, 1000.0]\n")
    plan = read_scan(config)
    single = resolve_config({"turbulence": {"lambda_min": "auto", "n_modes": 16},
                             "particles": {"nside": 2, "energy_tev": 1000.0, "b0_microgauss": 3.0, "lc_pc": 1.0},
                             "integration": {"n_snapshots": 5, "dt": 0.1}, "ensemble": {"realisations": 3}})
    assert plan.variable == "energy_tev" and plan.points[1].config.digest() == single.digest()
    assert [p.name for p in plan.points] == [f"rl_{p.config.particles.rl:g}" for p in plan.points]
    assert plan.points[0].config.particles.rl < plan.points[1].config.particles.rl
