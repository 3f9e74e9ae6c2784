"""Extending a finished run (``crsky run --out RUN --extend T_MAX``): the schedule of the
added snapshots, identity with a run made straight to the later t_max, the extended
run's configuration and manifest, crash safety (a real process killed by a real
signal, an interrupted commit) and bad input (exit 2, nothing changed on disk).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from crsky.backends import get_backend
from crsky.cli import main
from crsky.config import ConfigError, config_from_toml_text, resolve_config
from crsky.ensemble import extend_run, run_ensemble
from crsky.simulate import (
    backtrack_many, extend_config, extension_schedule, extension_snapshot_count, pixel_directions, run_schedule,
    snapshot_schedule, snapshot_stages,
)
from crsky.store import EXTENDING, RunDirError, RunStore
from crsky.turbulence import make_modes

#: A tiny float64 run: 12 particles, 8 modes, 200 steps; the extension to 60 adds 400.
TINY = {
    "turbulence": {"n_modes": 8, "allow_unresolved": True},
    "particles": {"nside": 1},
    "integration": {"t_max": 20.0, "n_snapshots": 6, "precision": "float64"},
    "ensemble": {"realisations": 2, "seed": 5},
}
TINY_TOML = """
[turbulence]
n_modes = 8
allow_unresolved = true
[particles]
nside = 1
[integration]
t_max = 20.0
n_snapshots = 6
precision = "float64"
[ensemble]
realisations = 2
seed = 5
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A complete tiny float64 run (copy it before changing it)."""
    run = tmp_path_factory.mktemp("extend") / "run"
    run_ensemble(resolve_config(TINY), run, backend="cpu", progress=False)
    return run


@pytest.fixture(scope="module")
def tiny_extended(tiny_run, tmp_path_factory):
    """``tiny_run`` extended to t Omega = 60."""
    run = tmp_path_factory.mktemp("extend") / "extended"
    shutil.copytree(tiny_run, run)
    extend_run(run, 60.0, backend="cpu", progress=False)
    return run


def tree(path: Path) -> dict:
    """Every file under ``path`` (the lock file included): SHA-256 of its bytes and mtime."""
    return {str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in sorted(path.rglob("*")) if f.is_file()}


# -- the schedule ---------------------------------------------------------------
def test_extension_schedule_adds_whole_steps_after_the_old_t_max_and_ends_at_the_new_one():
    steps = extension_schedule(300.0, 1000.0, 3, 0.1)
    assert steps.dtype == np.int64 and len(steps) == 3
    assert steps[0] > 3000 and np.all(np.diff(steps) > 0) and steps[-1] == 10000
    # log-spaced: equal ratios between the old t_max and each snapshot, to rounding of a step
    np.testing.assert_allclose(np.diff(np.log(np.concatenate([[3000], steps]))), np.log(10 / 3) / 3, rtol=1e-3)
    # a crowded extension: one step per snapshot, never past t_max
    np.testing.assert_array_equal(extension_schedule(1.0, 1.3, 3, 0.1), [11, 12, 13])


def test_extension_keeps_the_snapshot_density_per_decade_of_the_first_stage():
    config = resolve_config({"integration": {"t_max": 300.0, "n_snapshots": 24}})
    # 23 intervals over log10(300 / 0.1) = 3.48 decades: 6.6 per decade
    per_decade = 23 / np.log10(3000)
    assert extension_snapshot_count(config.integration, 3000.0) == round(per_decade * 1)
    assert extension_snapshot_count(config.integration, 300.1) == 1  # at least the new t_max
    extended = extend_config(config, 3000.0)
    # an extended run's next extension keeps the first stage's density
    assert extension_snapshot_count(extended.integration, 30000.0) == round(per_decade * 1)
    stages = snapshot_stages(extended.integration)
    np.testing.assert_array_equal(stages[0], snapshot_schedule(0.1, 300.0, 24, 0.1)[0])
    assert len(stages[1]) == extended.integration.n_snapshots - 24 and stages[1][-1] == 30000
    steps, times = run_schedule(extended.integration)
    assert np.all(np.diff(steps) > 0) and times[-1] == 3000.0


def test_a_run_never_extended_keeps_its_schedule():
    for cfg in ({}, {"integration": {"t_max": 300.0, "n_snapshots": 24}}, TINY):
        integ = resolve_config(cfg).integration
        stages = snapshot_stages(integ)
        assert len(stages) == 1
        expected = snapshot_schedule(integ.t_min, integ.t_max, integ.n_snapshots, integ.dt)
        for got, want in zip(run_schedule(integ), expected):
            np.testing.assert_array_equal(got, want)


def test_extended_config_round_trips_and_a_run_never_extended_keeps_its_digest():
    config = resolve_config(TINY)
    extended = extend_config(config, 60.0)
    assert extended.integration.extended_from == ({"t_max": 20.0, "n_snapshots": 6},)
    assert extended.integration.t_max == 60.0 and extended.integration.n_snapshots == 7
    assert config_from_toml_text(extended.to_toml()) == extended
    assert extended.digest() != config.digest()
    assert "extended_from" not in config.to_toml()  # absent, so older runs keep their digest
    assert dataclasses.replace(extended, integration=config.integration).digest() == config.digest()


@pytest.mark.parametrize("stages, message", [
    ({"t_max": 4.0, "n_snapshots": 30, "extended_from": [{"t_max": 2.0, "n_snapshots": 3}]},
     "[integration] n_snapshots = 30: must be more than 3 (the stage before), at most 23"),
    ({"t_max": 4.0, "n_snapshots": 5, "extended_from": [{"t_max": 2.0, "n_snapshots": 25}]},
     "extended_from n_snapshots = 25: must be more than 0 (the stage before), at most 20"),
    ({"t_max": 4.0, "n_snapshots": 5, "extended_from": [{"t_max": 2.05, "n_snapshots": 3}]},
     "extended_from t_max = 2.05: must be a whole number of steps"),
    ({"t_max": 4.0, "n_snapshots": 5, "extended_from": [{"t_max": 4.0, "n_snapshots": 3}]},
     "[integration] t_max = 4.0: must be a whole number of steps dt = 0.1 after 4.0"),
    ({"t_max": 4.0, "n_snapshots": 5, "extended_from": [{"t_max": 2.0}]}, "must be a list of {t_max = ..."),
])
def test_config_refuses_inconsistent_stages(stages, message):
    with pytest.raises(ConfigError) as info:
        resolve_config({"integration": stages})
    assert message in str(info.value)


@pytest.mark.parametrize("t_max, message", [
    (20.0, "later than the run's t_max = 20"),
    (10.0, "later than the run's t_max = 20"),
    (float("nan"), "must be a finite t Omega"),
    (float("inf"), "must be a finite t Omega"),
    (20.05, "must be a whole number of steps dt = 0.1"),
])
def test_extend_config_refuses_bad_t_max(t_max, message):
    with pytest.raises(ConfigError, match=message):
        extend_config(resolve_config(TINY), t_max)


# -- identity with the straight run -----------------------------------------------
def test_float64_extension_is_bitwise_the_straight_run(tiny_run, tiny_extended):
    config = RunStore(tiny_extended).config()
    steps, times = run_schedule(config.integration)
    modes = np.stack([make_modes(config.turbulence, config.ensemble.seed, j) for j in range(2)])
    # One uninterrupted trace through every snapshot of the extended run.
    x, p = backtrack_many(pixel_directions(1), modes, config.particles.rl, config.integration.dt, steps,
                          backend=get_backend("cpu", "float64"))
    old, new = RunStore(tiny_run), RunStore(tiny_extended)
    for j in range(2):
        ds, before = new.read_realisation(j), old.read_realisation(j)
        np.testing.assert_array_equal(ds["t_omega"].values, times)
        assert ds["x"].values.tobytes() == x[j].tobytes() and ds["p"].values.tobytes() == p[j].tobytes()
        # every stored snapshot is kept, bit for bit
        m = before.sizes["time"]
        assert ds["x"].values[:m].tobytes() == before["x"].values.tobytes()
        assert ds["p"].values[:m].tobytes() == before["p"].values.tobytes()
        assert ds.attrs["config_sha256"] == config.digest()


def test_float64_extension_ends_where_a_run_made_straight_to_the_new_t_max_ends(tiny_extended, tmp_path):
    # Its own log-spaced schedule, same steps: identical bits at the shared last step.
    straight = {**TINY, "integration": {**TINY["integration"], "t_max": 60.0, "n_snapshots": 9}}
    run = run_ensemble(resolve_config(straight), tmp_path / "straight", backend="cpu", progress=False)
    for j in range(2):
        a, b = RunStore(tiny_extended).read_realisation(j), run.read_realisation(j)
        assert a["t_omega"].values[-1] == b["t_omega"].values[-1] == 60.0
        assert a["x"].values[-1].tobytes() == b["x"].values[-1].tobytes()
        assert a["p"].values[-1].tobytes() == b["p"].values[-1].tobytes()


def test_a_run_of_the_extended_config_recomputes_the_extended_run_bitwise(tiny_extended, tmp_path):
    """Stage by stage, as extended: what a resume recomputes for a damaged file."""
    run = run_ensemble(RunStore(tiny_extended).config(), tmp_path / "again", backend="cpu", progress=False)
    for j in range(2):
        a, b = RunStore(tiny_extended).read_realisation(j), run.read_realisation(j)
        assert a["x"].values.tobytes() == b["x"].values.tobytes()
        assert a["p"].values.tobytes() == b["p"].values.tobytes()


def test_mixed_precision_extension_agrees_with_the_straight_run(tmp_path):
    """Mixed precision: the continuation refreshes each particle's reference phases at
    the old t_max, which the straight trace does not, so the two differ from there on
    by the mixed field error (< 1e-6 of the rms turbulent field, sigma2 = 1, in each
    of the two traces) and, the orbits being chaotic, are unrelated particle by
    particle after a few scattering times. Two tests:

    - one short extension (10 steps, dtau = 1): the velocity error of a step is at most
      dtau |db|, so |delta p| <= 2e-6 * n dtau = 2e-6 (measured 1.5e-7); a wrong
      continuation (another state, the sign of p) is off by O(1);
    - the physics at the new t_max = 10 old t_max: the paired difference of the mean
      square displacement <|x|^2> over 192 particles is zero within 4 standard errors
      of the paired differences (fixed seed; a false alarm has probability 6e-5 under
      normality), and the displacement has grown diffusively meanwhile.
    """
    cfg = {"turbulence": {"n_modes": 64}, "particles": {"nside": 2},
           "integration": {"t_max": 100.0, "n_snapshots": 6, "precision": "mixed"},
           "ensemble": {"realisations": 4, "seed": 3}}
    run = run_ensemble(resolve_config(cfg), tmp_path / "run", backend="cpu", progress=False).path
    short = tmp_path / "short"
    shutil.copytree(run, short)
    extend_run(short, 101.0, backend="cpu", progress=False)
    extend_run(run, 1000.0, backend="cpu", progress=False)
    config = RunStore(run).config()
    modes = np.stack([make_modes(config.turbulence, config.ensemble.seed, j) for j in range(4)])
    x_straight, p_straight = backtrack_many(pixel_directions(2), modes, config.particles.rl, config.integration.dt,
                                            [1000, 1010, 10000], backend=get_backend("cpu", "mixed"))
    p_short = np.stack([RunStore(short).read_realisation(j)["p"].values[-1] for j in range(4)])
    n_dtau = 10 * config.integration.dt
    assert np.abs(p_short - p_straight[:, 1]).max() <= 2e-6 * n_dtau
    x_extended = np.stack([RunStore(run).read_realisation(j)["x"].values for j in range(4)])
    r2_extended = (x_extended[:, -1] ** 2).sum(axis=-1).ravel()
    r2_straight = (x_straight[:, 2] ** 2).sum(axis=-1).ravel()
    assert not np.array_equal(r2_extended, r2_straight)  # mixed: not bitwise, as stated
    diff = r2_extended - r2_straight
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(diff.size), (diff.mean(), diff.std())
    r2_old = (x_extended[:, 5] ** 2).sum(axis=-1).mean()  # at the old t_max
    assert r2_straight.mean() > 3 * r2_old


# -- what an extended run records ----------------------------------------------------
def test_extended_run_records_its_history_and_analyses_unchanged(tiny_run, tiny_extended, capsys):
    old, new = RunStore(tiny_run), RunStore.existing(tiny_extended)
    manifest = new.manifest()
    assert "extension" not in manifest and not (tiny_extended / EXTENDING).exists()
    (entry,) = manifest["extensions"]
    assert entry["from_config_sha256"] == old.config().digest() == old.manifest()["config_sha256"]
    assert entry["config_sha256"] == new.config().digest() == manifest["config_sha256"]
    assert (entry["from_t_max"], entry["t_max"], entry["snapshots_added"]) == (20.0, 60.0, 1)
    assert new.completed() == [0, 1] and new.config().integration.t_max == 60.0
    assert main(["analyze", str(tiny_extended), "--json"]) == 0
    json.loads(capsys.readouterr().out)
    with xr.open_dataset(tiny_extended / "analysis.nc", engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["t_omega"].values, run_schedule(new.config().integration)[1])


def test_an_extended_run_extends_again(tiny_extended, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_extended, run)
    capsys.readouterr()
    assert main(["run", "--out", str(run), "--extend", "100", "--backend", "cpu", "--quiet"]) == 0
    # the cost stated before the work is that of the added steps only: t Omega 60 -> 100 at dt 0.1,
    # 2 realisations x 12 particles x 8 modes
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "estimated cost" in line]
    assert line.startswith(f"crsky run: extension estimated cost: {2 * 12 * 400 * 8:.3g} mode evaluations")
    config = RunStore.existing(run).config()
    assert [s["t_max"] for s in config.integration.extended_from] == [20.0, 60.0]
    assert [e["t_max"] for e in RunStore(run).manifest()["extensions"]] == [60.0, 100.0]
    ds = RunStore(run).read_realisation(1)
    np.testing.assert_array_equal(ds["t_omega"].values, run_schedule(config.integration)[1])


# -- crash safety -----------------------------------------------------------------
#: About 0.35 s per realisation's extension (mixed field, float64 output, 48
#: particles x 64 modes x 158k steps): a SIGKILL sent once the first extended file is
#: written lands mid-extension.
KILL = {"turbulence": {"n_modes": 64}, "particles": {"nside": 2},
        "integration": {"t_max": 100.0, "n_snapshots": 4, "dt": 0.05}, "ensemble": {"realisations": 4, "seed": 11}}


def test_sigkilled_extension_leaves_the_old_run_valid_and_resumes_to_the_same_bits(tmp_path, same_build_env):
    run, reference = tmp_path / "run", tmp_path / "reference"
    run_ensemble(resolve_config(KILL), run, backend="cpu", progress=False)
    shutil.copytree(run, reference)
    extend_run(reference, 8000.0, backend="cpu", progress=False)  # uninterrupted, in this process
    before = RunStore(run).config()
    extend = [sys.executable, "-m", "crsky.cli", "run", "--out", str(run), "--extend", "8000", "--backend", "cpu",
              "--quiet"]
    proc = subprocess.Popen(extend, env=same_build_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((run / EXTENDING).glob("r*.nc")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the extension finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The run is the old run, whole and readable; the extension is recorded as in progress.
    store = RunStore.existing(run)
    assert store.config() == before
    extension = store.manifest()["extension"]
    assert not extension["committing"] and len(extension["realisations"]) < 4
    for j in range(4):
        assert store.read_realisation(j).sizes["time"] == 4
    # Another t_max while it is in progress: refused, nothing changed.
    snapshot = tree(run)
    assert main(["run", "--out", str(run), "--extend", "9000", "--quiet"]) == 2
    assert tree(run) == snapshot
    # The same command resumes and gives the bits of an uninterrupted extension.
    done = subprocess.run(extend, env=same_build_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = RunStore.existing(run), RunStore.existing(reference)
    assert a.config() == b.config() and a.config().integration.t_max == 8000.0
    assert not (run / EXTENDING).exists()
    for j in range(4):
        x, y = a.read_realisation(j), b.read_realisation(j)
        assert x["x"].values.tobytes() == y["x"].values.tobytes()
        assert x["p"].values.tobytes() == y["p"].values.tobytes()


def test_interrupted_commit_is_refused_by_readers_and_finished_by_the_same_command(tiny_run, tiny_extended,
                                                                                  tmp_path, capsys):
    """The state a commit killed after its first file replacement leaves behind."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    store = RunStore(run)
    config = extend_config(store.config(), 60.0)
    from crsky.ensemble import extend_realisations
    with store.lock():
        store.begin_extension(config)
        for index, record in extend_realisations(str(run), config.to_toml(), [0, 1], "cpu").items():
            store.record_extended(index, record)
        manifest = store.manifest()
        manifest["extension"]["committing"] = True
        store._write_manifest(manifest)
    os.replace(store.extension_path(0), store.realisation_path(0))
    for argv in (["analyze", str(run)], ["plot", str(run)], ["run", str(tmp_path / "c.toml"), "--out", str(run)]):
        (tmp_path / "c.toml").write_text(TINY_TOML)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the physics warnings of `run`
        assert err.startswith("crsky: error:") and "interrupted while being committed" in err, err
        assert "--extend 60" in err
    assert main(["run", "--out", str(run), "--extend", "60", "--backend", "cpu", "--quiet"]) == 0
    a, b = RunStore.existing(run), RunStore.existing(tiny_extended)
    assert a.config() == b.config()
    for j in range(2):
        assert a.read_realisation(j)["x"].values.tobytes() == b.read_realisation(j)["x"].values.tobytes()


# -- bad input: one line, exit 2, nothing changed ----------------------------------------
def _float32_run(tmp_path):
    cfg = {**TINY, "output": {"precision": "float32"}}
    return run_ensemble(resolve_config(cfg), tmp_path / "f32", backend="cpu", progress=False).path


def _incomplete_run(tmp_path, tiny_run):
    run = tmp_path / "incomplete"
    shutil.copytree(tiny_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["realisations"]["1"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _not_a_run(tmp_path, _):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    return tmp_path / "mine"


@pytest.mark.parametrize("case, extra, message", [
    ("run", ["--extend", "20"], "later than the run's t_max = 20"),
    ("run", ["--extend", "5"], "later than the run's t_max = 20"),
    ("run", ["--extend", "40.05"], "t_max = 40.05: must be a whole number of steps"),
    ("run", ["--extend", "nan"], "must be a positive, finite number (t Omega)"),
    ("run", ["--extend", "inf"], "must be a positive, finite number (t Omega)"),
    ("run", ["--extend", "1e12"], "must be <= 1e+09"),
    ("run", ["--extend", "40", "--force"], "--force cannot be combined with --extend"),
    ("other", ["--extend", "40"], "[ensemble] seed: stored 5, requested 6"),
    ("float32", ["--extend", "40"], "precision = 'float32'"),
    ("incomplete", ["--extend", "40"], "is incomplete (1/2 realisations); finish it first"),
    ("not_a_run", ["--extend", "40"], "is not a crsky run directory"),
    ("missing", ["--extend", "40"], "does not exist"),
])
def test_bad_extension_exits_2_with_one_line_and_changes_nothing(tmp_path, tiny_run, capsys, case, extra, message):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = ["run", "--out", str(run), "--backend", "cpu", "--quiet", *extra]
    if case == "other":
        (tmp_path / "other.toml").write_text(TINY_TOML.replace("seed = 5", "seed = 6"))
        argv.insert(1, str(tmp_path / "other.toml"))
    elif case == "float32":
        argv[2] = str(_float32_run(tmp_path))
    elif case == "incomplete":
        argv[2] = str(_incomplete_run(tmp_path, tiny_run))
    elif case == "not_a_run":
        argv[2] = str(_not_a_run(tmp_path, tiny_run))
    elif case == "missing":
        argv[2] = str(tmp_path / "missing")
    target = Path(argv[2])
    snapshot = tree(target) if target.exists() else None
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert message in err, err
    assert (tree(target) if target.exists() else None) == snapshot


def test_the_runs_own_config_may_be_given(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (tmp_path / "c.toml").write_text(TINY_TOML)
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(run), "--extend", "40", "--backend", "cpu",
                 "--quiet"]) == 0
    assert RunStore.existing(run).config().integration.t_max == 40.0
    with pytest.raises(RunDirError, match="different configuration"):
        extend_run(run, 80.0, resolve_config({**TINY, "particles": {"nside": 2}}), backend="cpu", progress=False)


def test_resume_adopts_sets_aside_and_cleans_staged_files_and_force_removes_them(tiny_run, tiny_extended,
                                                                                 tmp_path):
    """A resumed extension keeps what proves itself, recomputes the rest, and --force
    removes everything crsky wrote in extending/."""
    from crsky.ensemble import extend_realisations

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    store = RunStore(run)
    config = extend_config(store.config(), 60.0)
    with store.lock():
        store.begin_extension(config)
        records = extend_realisations(str(run), config.to_toml(), [0, 1], "cpu")
        store.record_extended(0, records[0])  # 1: written, not recorded (killed before the record)
    damaged = store.extension_path(0)
    damaged.write_bytes(damaged.read_bytes()[:-100])  # recorded but truncated
    (run / EXTENDING / "r000001.nc.x1y2z3.tmp").write_bytes(b"abandoned")
    extend_run(run, 60.0, backend="cpu", progress=False)
    a, b = RunStore.existing(run), RunStore.existing(tiny_extended)
    assert a.manifest()["realisations"]["1"].get("adopted") is True
    for j in range(2):
        assert a.read_realisation(j)["x"].values.tobytes() == b.read_realisation(j)["x"].values.tobytes()
    left = sorted(f.name for f in (run / EXTENDING).iterdir())  # only the set-aside file, kept for inspection
    assert len(left) == 1 and left[0].startswith("r000000.nc.bad-")
    (run / EXTENDING / "mine.txt").write_text("a user's file")
    (tmp_path / "c.toml").write_text(TINY_TOML)
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(run), "--force", "--backend", "cpu", "--quiet"]) == 0
    assert sorted(f.name for f in (run / EXTENDING).iterdir()) == ["mine.txt"]
    assert RunStore.existing(run).config() == resolve_config(TINY)
