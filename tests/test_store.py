"""The run directory: resume, refusal of other configs, corruption detection."""

import json

import numpy as np
import pytest

from crsky.config import resolve_config
from crsky.ensemble import run_ensemble
from crsky.store import RunDirError, RunStore

TINY = {
    "turbulence": {"n_modes": 8},
    "particles": {"nside": 1},
    "integration": {"t_max": 2.0, "n_snapshots": 3, "dt": 0.05},
    "ensemble": {"realisations": 4},
}


@pytest.fixture
def cfg():
    return resolve_config(TINY)


def test_resume_keeps_completed_realisations(tmp_path, cfg):
    run = tmp_path / "run"
    store = run_ensemble(cfg, run, backend="cpu", progress=False)
    before = {j: store.realisation_path(j).stat().st_mtime_ns for j in range(4)}
    manifest = store.manifest()
    del manifest["realisations"]["2"]  # as if killed before realisation 2 was recorded
    store._write_manifest(manifest)
    store.realisation_path(2).unlink()
    store = run_ensemble(cfg, run, backend="cpu", progress=False)
    assert store.completed() == [0, 1, 2, 3]
    for j in (0, 1, 3):  # never recomputed or rewritten
        assert store.realisation_path(j).stat().st_mtime_ns == before[j]
    sessions = store.manifest()["sessions"]
    assert [s["pending"] for s in sessions] == [4, 1]


def test_corrupted_file_is_detected_and_recomputed(tmp_path, cfg):
    run = tmp_path / "run"
    store = run_ensemble(cfg, run, backend="cpu", progress=False)
    reference = store.read_realisation(1)["x"].values.copy()
    path = store.realisation_path(1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    store.realisation_path(3).write_bytes(store.realisation_path(3).read_bytes()[:100])  # truncated
    store = run_ensemble(cfg, run, backend="cpu", progress=False)
    assert store.completed() == [0, 1, 2, 3]
    np.testing.assert_array_equal(store.read_realisation(1)["x"].values, reference)
    assert len(list((run / "realisations").glob("*.bad-*"))) == 2  # kept aside, never read


def test_complete_unrecorded_file_is_adopted(tmp_path, cfg):
    run = tmp_path / "run"
    store = run_ensemble(cfg, run, backend="cpu", progress=False)
    manifest = store.manifest()
    del manifest["realisations"]["0"]
    store._write_manifest(manifest)
    mtime = store.realisation_path(0).stat().st_mtime_ns
    store = RunStore.open(run, cfg)
    assert 0 in store.completed()
    assert store.realisation_path(0).stat().st_mtime_ns == mtime


def test_leftover_temporary_files_are_removed(tmp_path, cfg):
    run = tmp_path / "run"
    store = RunStore.open(run, cfg)
    (run / "realisations" / "r000000.nc.abc.tmp").write_bytes(b"half")
    RunStore.open(run, cfg)
    assert not list((run / "realisations").glob("*.tmp"))
    assert store.completed() == []


def test_other_config_is_refused_and_force_starts_over(tmp_path, cfg):
    run = tmp_path / "run"
    run_ensemble(cfg, run, backend="cpu", progress=False)
    other = resolve_config({**TINY, "ensemble": {"realisations": 4, "seed": 1}})
    with pytest.raises(RunDirError, match=r"different configuration \(\[ensemble\] seed: stored 0, requested 1\)"):
        RunStore.open(run, other)
    store = run_ensemble(other, run, backend="cpu", progress=False, force=True)
    assert store.config() == other and store.completed() == [0, 1, 2, 3]


def test_refuses_non_run_directory_and_never_overwrites(tmp_path, cfg):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="not a crsky run directory"):
        RunStore.open(tmp_path / "stuff", cfg)
    store = run_ensemble(cfg, tmp_path / "run", backend="cpu", progress=False)
    ds = store.read_realisation(0)
    mtime = store.realisation_path(0).stat().st_mtime_ns
    # A repeated task (a worker died before reporting) gets the existing file's record.
    assert store.write_realisation(ds, 0)["sha256"] == store.manifest()["realisations"]["0"]["sha256"]
    assert store.realisation_path(0).stat().st_mtime_ns == mtime
    # Something else under the final name is never overwritten.
    store.realisation_path(1).write_bytes(b"not a realisation")
    with pytest.raises(RunDirError, match="refusing to overwrite"):
        store.write_realisation(store.read_realisation(0).assign_attrs(realisation=1), 1)


def test_manifest_has_provenance(tmp_path, cfg):
    store = run_ensemble(cfg, tmp_path / "run", backend="cpu", progress=False)
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["config_sha256"] == cfg.digest()
    s = m["sessions"][0]
    for key in ("crsky_version", "numba_version", "backend", "seconds", "host", "executor"):
        assert key in s
    rec = m["realisations"]["0"]
    assert rec["backend"] == "cpu" and rec["seconds"] > 0 and len(rec["sha256"]) == 64
    assert store.read_realisation(0).attrs["seed"] == 0


def test_existing_requires_a_run(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        RunStore.existing(tmp_path / "missing")


def test_lock_is_reentrant_in_a_process_and_records_its_holder(tmp_path, cfg):
    import os

    store = RunStore.open(tmp_path / "run", cfg)
    with store.lock(exclusive=True):
        assert store.holds_lock(exclusive=True)
        with RunStore(tmp_path / "run").lock(exclusive=False):  # another object, same process
            assert store.completed() == []
        holder = json.loads((tmp_path / "run" / "crsky.lock").read_text().splitlines()[0])
        assert holder["pid"] == os.getpid() and holder["mode"] == "write"
    assert not store.holds_lock(exclusive=False)
    with store.lock(exclusive=False):
        with pytest.raises(RunDirError, match="open for reading in this process"):
            with store.lock(exclusive=True):
                pass


def test_atomic_netcdf_writer_round_trips_with_umask_permissions(tmp_path, cfg):
    import hashlib
    import os

    from crsky.store import atomic_write_netcdf, realisation_dataset

    x = np.random.default_rng(1).normal(size=(2, 12, 3))
    ds = realisation_dataset(cfg, 0, [1.0, 2.0], x, x)
    old = os.umask(0o027)
    try:
        record = atomic_write_netcdf(ds, tmp_path / "a.nc")
    finally:
        os.umask(old)
    data = (tmp_path / "a.nc").read_bytes()
    assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (tmp_path / "a.nc").stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["a.nc"]
    import xarray as xr

    with xr.open_dataset(tmp_path / "a.nc", engine="h5netcdf") as back:
        np.testing.assert_array_equal(back["x"].values, x)


def test_refused_start_leaves_no_directory_or_lock_behind(tmp_path, cfg):
    run = tmp_path / "run"
    run_ensemble(cfg, run, backend="cpu", progress=False)
    other = resolve_config({**TINY, "ensemble": {"realisations": 4, "seed": 1}})
    with pytest.raises(RunDirError):
        RunStore.open(run, other)
    assert (run / "crsky.lock").exists()  # a crsky run keeps its lock file
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a crsky run directory"):
        RunStore.open(user, cfg, force=True)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]


def test_realisation_file_says_what_a_pixel_is(tmp_path, cfg):
    # A user opening a realisation file cold learns the HEALPix ordering and nside, and
    # that pixel i is the momentum direction at T = 0 (arrival direction -p_i).
    import healpy as hp
    import xarray as xr

    store = run_ensemble(cfg, tmp_path / "run", backend="cpu", progress=False)
    with xr.open_dataset(store.realisation_path(0), engine="h5netcdf") as ds:
        for attrs in (ds.attrs, ds["pixel"].attrs):
            assert attrs["healpix_ordering"] == "RING"
            assert attrs["healpix_nside"] == cfg.particles.nside == hp.npix2nside(ds.sizes["pixel"])
            assert attrs["pixel_direction"] == "momentum"
            assert "-p_i" in attrs["pixel_convention"]
        np.testing.assert_array_equal(ds["pixel"].values, np.arange(hp.nside2npix(cfg.particles.nside)))
