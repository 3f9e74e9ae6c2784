"""Resolution policy (``lambda_min = "auto"``, ``n_modes = "auto"``) and the cost model
of a run (docs/design.md, Resolution policy and Cost of a run)."""

import json
import math
import os
import subprocess
import sys
import tomllib

import pytest

from crsky import bench
from crsky.cli import main
from crsky.config import (
    DEFAULT_MODES_PER_DECADE,
    DEFAULT_RESONANCE_FACTOR,
    RESONANCE_RESOLUTION,
    ConfigError,
    check_resonance,
    config_from_toml_text,
    estimate_cost,
    estimate_resources,
    resolve_config,
)

from test_config import PAPER_DIGEST

AUTO = {"lambda_min": "auto", "n_modes": "auto"}


def auto(rl, preset="quick", **turbulence):
    return resolve_config({"turbulence": {**AUTO, **turbulence}, "particles": {"rl": rl}}, preset=preset)


# -- the policy ----------------------------------------------------------------------
def test_defaults_are_the_papers_ratios():
    # 2 pi r_L / lambda_min = 2 pi 0.1 / 0.01 and 256 modes over 4 decades
    assert DEFAULT_RESONANCE_FACTOR == pytest.approx(2 * math.pi * 0.1 / 0.01, rel=1e-15)
    assert DEFAULT_MODES_PER_DECADE == 256 / 4


def test_auto_values_in_closed_form():
    cfg = auto(0.03)
    # lambda_min = 2 pi 0.03 / (20 pi) = 0.003 L_c; log10(100 / 0.003) = 4.5229 decades,
    # 64 x 4.5229 = 289.47 -> 290 modes
    assert cfg.turbulence.lambda_min == pytest.approx(0.003, rel=1e-15)
    assert cfg.turbulence.n_modes == 290
    assert cfg.turbulence.resonance_factor == DEFAULT_RESONANCE_FACTOR
    assert cfg.turbulence.modes_per_decade == 64.0
    # a factor of 100 and 10 modes per decade at r_L = 1e-3: 2 pi 1e-5 L_c, 6.2 decades -> 63
    cfg = auto(1e-3, resonance_factor=100, modes_per_decade=10)
    assert cfg.turbulence.lambda_min == pytest.approx(2 * math.pi * 1e-5, rel=1e-15)
    assert cfg.turbulence.n_modes == math.ceil(10 * math.log10(100 / (2 * math.pi * 1e-5))) == 63


def test_auto_at_the_papers_rigidity_is_the_paper_preset_with_its_digest():
    cfg = auto(0.1, preset="paper")
    paper = resolve_config(preset="paper")
    assert cfg.turbulence.lambda_min == paper.turbulence.lambda_min == 0.01
    assert cfg.turbulence.n_modes == paper.turbulence.n_modes == 256
    # the policy record is out of the digest: same physics, same identity
    assert cfg.digest() == paper.digest() == PAPER_DIGEST
    assert "resonance_factor" in cfg.to_toml() and "resonance_factor" not in paper.to_toml()


def test_explicit_values_win():
    cfg = resolve_config({"turbulence": {"lambda_min": 1e-3, "n_modes": "auto"}, "particles": {"rl": 0.03}})
    assert cfg.turbulence.lambda_min == 1e-3 and cfg.turbulence.resonance_factor is None
    assert cfg.turbulence.n_modes == 320  # 64 x 5 decades
    cfg = resolve_config({"turbulence": {"lambda_min": "auto", "n_modes": 100}, "particles": {"rl": 0.03}})
    assert cfg.turbulence.n_modes == 100 and cfg.turbulence.modes_per_decade is None
    assert cfg.turbulence.lambda_min == pytest.approx(0.003, rel=1e-15)


@pytest.mark.parametrize("rl", [1.0, 0.1, 0.03, 1e-3, 1e-4, 1e-6])
@pytest.mark.parametrize("factor", [RESONANCE_RESOLUTION, DEFAULT_RESONANCE_FACTOR, 1000.0])
def test_auto_always_passes_the_resonance_check(rl, factor):
    cfg = auto(rl, resonance_factor=factor)
    check_resonance(cfg)  # the one implementation; resolve_config ran it too
    assert 2 * math.pi * rl / cfg.turbulence.lambda_min == pytest.approx(factor, rel=1e-12)


def test_auto_passes_at_rl_1e_3_where_the_papers_lambda_min_is_refused():
    assert auto(1e-3).turbulence.lambda_min == pytest.approx(1e-4, rel=1e-15)
    with pytest.raises(ConfigError, match=r"lambda_min = 0.01 is larger than the gyration scale"):
        resolve_config({"particles": {"rl": 1e-3}}, preset="paper")


def test_resolved_config_reads_back_and_reruns_with_its_digest():
    cfg = auto(0.03)
    assert config_from_toml_text(cfg.to_toml()) == cfg
    again = resolve_config(tomllib.loads(cfg.to_toml()))  # a run's config.toml as input
    assert again == cfg and again.digest() == cfg.digest()


def test_auto_with_physical_inputs():
    # 10 TeV protons, 3 microgauss, L_c = 10 pc: r_L / L_c = 3.6e-4
    physical = {"energy_tev": 10.0, "charge": 1, "b0_microgauss": 3.0, "lc_pc": 10.0}
    cfg = resolve_config({"turbulence": AUTO, "particles": physical})
    rl = cfg.particles.rl
    assert 3e-4 < rl < 4e-4
    assert cfg.turbulence.lambda_min == pytest.approx(rl / 10, rel=1e-14)
    assert config_from_toml_text(cfg.to_toml()).digest() == cfg.digest()


@pytest.mark.parametrize("turbulence, particles, message", [
    ({"lambda_min": "fine"}, {}, r"\[turbulence\] lambda_min = 'fine': must be a number \(in L_c\) or 'auto'"),
    ({"n_modes": "many"}, {}, r"\[turbulence\] n_modes = 'many': must be an integer or 'auto'"),
    ({"n_modes": 2.5}, {}, r"\[turbulence\] n_modes = 2.5: must be an integer"),
    ({**AUTO, "resonance_factor": 5}, {}, r"\[turbulence\] resonance_factor = 5.0: must be >= 10"),
    ({**AUTO, "resonance_factor": "big"}, {}, r"\[turbulence\] resonance_factor = 'big': must be a number"),
    ({**AUTO, "resonance_factor": True}, {}, r"\[turbulence\] resonance_factor = True: must be a number"),
    ({**AUTO, "resonance_factor": math.inf}, {}, r"resonance_factor = inf: must be a finite number"),
    ({**AUTO, "modes_per_decade": 0}, {}, r"\[turbulence\] modes_per_decade = 0.0: must be > 0"),
    ({**AUTO, "modes_per_decade": -3}, {}, r"\[turbulence\] modes_per_decade = -3.0: must be > 0"),
    ({"lambda_min": 0.005, "resonance_factor": 63}, {},
     r"resonance_factor = 63.0 applies to lambda_min = 'auto' .* not to lambda_min = 0.005"),
    ({"n_modes": 100, "modes_per_decade": 64}, {}, r"modes_per_decade = 64.0 applies to n_modes = 'auto'"),
    ({**AUTO, "allow_unresolved": True}, {"rl": 1000.0}, r"lambda_min = 'auto' = 2 pi r_L / resonance_factor = 100 "
                                                          r"L_c .* is not below lambda_max = 100.0"),
    ({**AUTO, "modes_per_decade": 1e300}, {}, r"n_modes = 'auto' gives .* modes: must be < 2\^63"),
    ({**AUTO, "resonance_factor": 1e308}, {"rl": 1e-10}, r"n_modes = 'auto' gives .* = inf modes: must be < 2\^63"),
    ({"lambda_min": "auto", "resonance_factor": 1e308}, {"rl": 1e-20},
     r"resonance_factor = 1e\+308: gives lambda_min = 2 pi r_L / resonance_factor = 0.0 L_c"),
    (AUTO, {"rl": -1.0}, r"\[particles\] rl = -1.0: must be > 0"),
    (AUTO, {"energy_tev": -1.0, "b0_microgauss": 3.0, "lc_pc": 10.0}, r"\[particles\] energy_tev = -1.0"),
])
def test_bad_values_are_refused_in_one_line(turbulence, particles, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_config({"turbulence": turbulence, "particles": particles})
    assert "\n" not in str(info.value)


def test_bad_value_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('[turbulence]\nlambda_min = "auto"\nresonance_factor = 3\n')
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "resonance_factor = 3.0: must be >= 10" in err
    assert not (tmp_path / "run").exists()


# -- the cost model --------------------------------------------------------------------
def small_config():
    return resolve_config({"particles": {"nside": 2, "rl": 0.1}, "turbulence": {"n_modes": 32},
                           "integration": {"t_max": 50.0, "n_snapshots": 4, "dt": 0.1},
                           "ensemble": {"realisations": 3}})


def test_cost_counts_mode_evaluations_by_hand():
    cost = estimate_cost(small_config(), throughput=1e6)
    # 3 realisations x 48 particles x 500 steps x 32 modes
    assert cost.mode_evaluations == 3 * 48 * 500 * 32 == 2_304_000
    assert cost.seconds == pytest.approx(2.304) and cost.throughput_source == "given"
    assert cost.disk_total == estimate_resources(small_config()).disk_total


def test_uncalibrated_cost_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cost = estimate_cost(small_config(), backend="cpu")
    assert cost.throughput_source == "uncalibrated default"
    assert cost.throughput == bench.DEFAULT_CPU_THROUGHPUT_PER_CORE["mixed"] * bench._threads("cpu")
    assert "uncalibrated default" in cost.describe()
    # no GPU rate has ever been measured to default to
    unknown = estimate_cost(small_config(), backend="cuda")
    assert unknown.seconds is None and "wall time unknown" in unknown.describe("cuda")


def test_bench_results_are_cached_and_read_by_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # a toy measurement (8 modes, 4 particles) is dominated by overheads: never cached
    toy = bench.run_benchmarks(quick=True, progress=False, precisions=("mixed",), mode_counts=(8,),
                               particle_counts=(4,), work={"mixed": 2e5})
    assert bench.record_throughput(toy) is None
    assert not (tmp_path / "cache").exists()
    # a short measurement of the path the small config runs (mixed), standard sizes: ~2e6 mode evaluations per case
    results = bench.run_benchmarks(quick=True, progress=False, precisions=("mixed",), mode_counts=(64, 256),
                                   particle_counts=(768,), work={"mixed": 2e6})
    path = bench.record_throughput(results)
    assert path == tmp_path / "cache" / "crsky" / "throughput.json"
    entries = json.loads(path.read_text())["entries"]
    (entry,) = entries.values()
    rates = sorted(r["mode_evals_per_s"] for r in results)
    assert entry["mode_evals_per_s"] == pytest.approx((rates[0] + rates[1]) / 2)  # the median of two cases
    assert entry["precision"] == "mixed" and entry["backend"] == "cpu"
    cost = estimate_cost(small_config())
    assert cost.throughput_source == "calibrated" and cost.throughput == entry["mode_evals_per_s"]

    (tmp_path / "c.toml").write_text(
        '[particles]\nnside = 1\n[turbulence]\nn_modes = 16\n[integration]\nt_max = 2.0\nn_snapshots = 2\n'
        '[ensemble]\nrealisations = 1\n')
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu",
                 "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "estimated cost" not in err  # stderr stays for warnings and the one line of a failure
    lines = [line for line in out.splitlines() if "estimated cost" in line]
    # 1 realisation x 12 particles x 20 steps x 16 modes
    (line,) = lines
    rate = entry["mode_evals_per_s"]
    assert line.startswith(f"crsky run: estimated cost: {12 * 20 * 16:.3g} mode evaluations, about "
                           f"{12 * 20 * 16 / rate:.2g} s on this machine (cpu) at {rate:.2g} mode evaluations/s "
                           "(measured by crsky bench on this machine); ")
    assert line.endswith(" on disk")


def test_a_corrupt_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "crsky").mkdir()
    bench.throughput_cache_path().write_text("{not json")
    assert bench.cached_throughput("cpu", "mixed") is None
    assert estimate_cost(small_config()).throughput_source == "uncalibrated default"


def test_crsky_bench_writes_the_cache(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "crsky.cli", "bench", "--quick", "--json"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    entries = json.loads((tmp_path / "crsky" / "throughput.json").read_text())["entries"]
    assert {e["precision"] for e in entries.values()} == {"float64", "mixed"}
    assert "cached in" in done.stderr


def test_readme_example_configuration_is_valid_and_is_the_paper_preset():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = resolve_config(tomllib.loads(block), preset="paper")
    # the policy keys it shows are those the paper's explicit numbers record
    assert cfg.turbulence.resonance_factor == DEFAULT_RESONANCE_FACTOR and cfg.digest() == PAPER_DIGEST
