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


def test_bench_cli_json(monkeypatch, capsys, tmp_path):
    # The CLI entry point with the measured cases shrunk (the real ones take minutes);
    # their throughput goes to a cache of the test's own, not the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real = bench.run_benchmarks

    def small(backend="cpu", quick=False, progress=True):
        return real(backend=backend, quick=quick, progress=progress, mode_counts=(8,), particle_counts=(4,),
                    work={"float64": 2e5, "mixed": 2e5})

    monkeypatch.setattr(bench, "run_benchmarks", small)
    assert main(["bench", "--json", "--quick"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and len(out) == 2
    for case in out:
        assert set(case) >= {"n_modes", "mode_evals_per_s", "particle_steps_per_s", "backend", "dtype"}
    assert (tmp_path / "crsky" / "throughput.json").exists()


def test_machine_info():
    info = bench.machine_info()
    assert info["cpus"] >= 1
    assert info["simd"].split()[0] in ("avx512", "avx2", "sse/other", "unknown")
