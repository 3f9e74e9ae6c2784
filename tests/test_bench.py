"""`crsky bench`: structure of the results (timings are measured by scripts, never
asserted in tests)."""

import json

import pytest

from crsky import bench
from crsky.cli import main


def test_bench_case_fields_and_consistency():
    r = bench.bench_case(64, 8, 20, repeats=1, precision="mixed")
    for key in ("n_modes", "mode_evals_per_s", "particle_steps_per_s", "backend", "dtype",
                "first_call_s", "n_particles", "n_steps", "seconds", "machine", "threads"):
        assert key in r
    assert r["backend"] == "cpu" and r["dtype"] == "mixed"
    assert r["mode_evals_per_s"] == pytest.approx(r["particle_steps_per_s"] * 64)
    assert r["particle_steps_per_s"] == pytest.approx(8 * 20 / r["seconds"])
    assert r["n_snapshots"] >= 2


def test_run_benchmarks_covers_modes_and_precisions():
    results = bench.run_benchmarks(quick=True, progress=False, mode_counts=(16, 32), particle_counts=(4, 12),
                                   work={"float64": 2e5, "mixed": 2e5})
    combos = {(r["dtype"], r["n_modes"], r["n_particles"]) for r in results}
    assert combos == {(p, m, n) for p in ("float64", "mixed") for m in (16, 32) for n in (4, 12)}
    table = bench.format_table(results)
    assert "mixed" in table and "float64" in table


def _small_cases(monkeypatch):
    """The CLI entry point with the measured cases shrunk (the real ones take minutes):
    256 modes (the paper's, for the estimate line) and 8 modes, 4 particles."""
    real = bench.run_benchmarks

    def small(backend="cpu", quick=False, progress=None):
        return real(backend=backend, quick=quick, progress=progress, mode_counts=(8, 256), particle_counts=(4,),
                    work={"float64": 2e5, "mixed": 2e5})

    monkeypatch.setattr(bench, "run_benchmarks", small)


def test_bench_cli_json(monkeypatch, capsys, tmp_path):
    # the measured throughput goes to a cache of the test's own, not the user's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _small_cases(monkeypatch)
    assert main(["bench", "--json", "--quick"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert isinstance(out, list) and len(out) == 4
    for case in out:
        assert set(case) >= {"n_modes", "mode_evals_per_s", "particle_steps_per_s", "backend", "dtype"}
    # 4 particles is no standard size: the cost estimate of later runs is not taken from it
    assert "throughput not cached: no case of the standard sizes" in captured.err
    assert not (tmp_path / "crsky" / "throughput.json").exists()


def test_bench_cli_prints_each_case_once_and_the_paper_estimate(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _small_cases(monkeypatch)
    assert main(["bench", "--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if line.split()[:1] == ["cpu"]]
    cases = [tuple(line.split()[1:4]) for line in rows]  # dtype, modes, particles
    assert sorted(cases) == sorted((p, m, "4") for p in ("float64", "mixed") for m in ("8", "256"))
    assert sum(line.split()[:2] == ["backend", "dtype"] for line in lines) == 1  # one header
    assert lines[-1].startswith("paper preset on this machine: about ") and "estimate" in lines[-1]
    mixed_256 = next(line for line in rows if line.split()[1:3] == ["mixed", "256"])
    # the row prints 4 digits and the estimate 3: compare the numbers, not a re-rounded text
    # (2.2749e7 prints as 2.275e+07 in the row and 2.27e+07 in the estimate)
    estimate_rate = float(lines[-1].split(" mode evaluations / ")[1].split(" per s")[0])
    assert estimate_rate == pytest.approx(float(mixed_256.split()[5]), rel=5e-3)


def test_paper_estimate_is_the_paper_work_over_the_mixed_256_mode_rate():
    assert bench.paper_mode_evaluations() == 120 * 12288 * 20000 * 256  # 7.55e12
    case = {"precision": "mixed", "n_modes": 256, "backend": "cpu"}
    results = [dict(case, n_particles=768, mode_evals_per_s=1e9), dict(case, n_particles=12288, mode_evals_per_s=2e9),
               dict(case, precision="float64", n_particles=12288, mode_evals_per_s=5e7),
               dict(case, n_modes=64, n_particles=12288, mode_evals_per_s=3e9)]
    estimate = bench.paper_estimate(results)
    # the case of one paper realisation's particle count (12288)
    assert estimate["seconds"] == 120 * 12288 * 20000 * 256 / 2e9
    assert estimate["case"]["n_particles"] == 12288
    assert bench.paper_estimate(results[2:]) is None  # no mixed 256-mode case: no estimate


def test_machine_info():
    info = bench.machine_info()
    assert info["cpus"] >= 1
    assert info["simd"].split()[0] in ("avx512", "avx2", "sse/other", "unknown")
