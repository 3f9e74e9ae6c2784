"""Realisations, snapshots and the ensemble driver (realisation alone = in a run, for
every backend variant: tests/contract.py)."""

import numpy as np
import pytest

from crsky.config import resolve_config
from crsky.ensemble import run_ensemble
from crsky.simulate import pixel_directions, simulate_realisation, snapshot_schedule

TINY = {
    "turbulence": {"n_modes": 16},
    "particles": {"nside": 1},
    "integration": {"t_max": 5.0, "n_snapshots": 4, "dt": 0.05},
    "ensemble": {"realisations": 3, "seed": 42},
}


def test_pixel_directions_are_ring_ordered_unit_vectors():
    d = pixel_directions(2)
    assert d.shape == (48, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-15)
    assert np.all(np.diff(d[:, 2]) <= 1e-15)  # RING: z decreases from the north pole
    np.testing.assert_allclose(d.sum(axis=0), 0.0, atol=1e-13)


def test_snapshot_schedule_is_log_spaced_on_whole_steps():
    steps, times = snapshot_schedule(0.1, 1000.0, 20, 0.05)
    assert steps[0] == 2 and steps[-1] == 20000
    assert np.all(np.diff(steps) > 0)
    np.testing.assert_allclose(times, steps * 0.05)
    # Rounding can collide at the start; later snapshots move up instead of repeating.
    steps, _ = snapshot_schedule(0.1, 1.0, 10, 0.1)
    assert list(steps) == list(range(1, 11))
    assert list(snapshot_schedule(0.1, 7.0, 1, 0.5)[0]) == [14]


def test_momentum_directions_stay_unit_vectors(tmp_path):
    cfg = resolve_config(TINY)
    r = simulate_realisation(cfg, 0)
    np.testing.assert_allclose(np.linalg.norm(r.p, axis=-1), 1.0, atol=1e-13)
    assert r.x.shape == (4, 12, 3)


def test_float32_storage(tmp_path):
    cfg = resolve_config({**TINY, "output": {"precision": "float32"}})
    store = run_ensemble(cfg, tmp_path / "run32", backend="cpu", progress=False)
    ds = store.read_realisation(0)
    assert ds["x"].dtype == np.float32
    np.testing.assert_allclose(ds["x"].values, simulate_realisation(cfg, 0).x, rtol=1e-6, atol=1e-6)


def test_workers_give_identical_results(tmp_path):
    cfg = resolve_config(TINY)
    serial = run_ensemble(cfg, tmp_path / "serial", backend="cpu", progress=False)
    pooled = run_ensemble(cfg, tmp_path / "pooled", backend="cpu", workers=2, progress=False)
    for j in range(3):
        np.testing.assert_array_equal(serial.read_realisation(j)["x"].values, pooled.read_realisation(j)["x"].values)


def test_bad_worker_count(tmp_path):
    with pytest.raises(ValueError, match="workers = 0"):
        run_ensemble(resolve_config(TINY), tmp_path / "r", workers=0)
