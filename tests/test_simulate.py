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


def test_snapshot_schedule_never_passes_t_max():
    """t_max is the last snapshot and t_min the first, also where the snapshots fill
    every step between them; more snapshots than steps are refused, never pushed past
    t_max (t_min = 0.5, t_max = 1, dt = 0.1 and 10 snapshots used to end at 1.4)."""
    for t_min, t_max, n, dt in [(0.1, 1.0, 9, 0.1), (0.5, 1.0, 6, 0.1), (0.1, 2.0, 20, 0.1),
                                (0.05, 3.0, 60, 0.05), (0.1, 2000.0, 40, 0.1)]:
        steps, times = snapshot_schedule(t_min, t_max, n, dt)
        assert len(steps) == n and np.all(np.diff(steps) > 0)
        assert steps[-1] == round(t_max / dt) and times[-1] == pytest.approx(t_max, rel=1e-12)
        assert steps[0] == max(1, round(t_min / dt))
    assert list(snapshot_schedule(0.5, 1.0, 6, 0.1)[0]) == [5, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="10 snapshots do not fit"):
        snapshot_schedule(0.5, 1.0, 10, 0.1)


def test_non_finite_trajectories_stop_the_realisation():
    """An overflow (here r_L = 1e306 L_c drives x past float64 in a few steps) raises
    NonFiniteError naming the realisation instead of returning NaN positions."""
    from crsky.errors import NonFiniteError
    from crsky.simulate import simulate_realisations

    cfg = resolve_config({**TINY, "particles": {"nside": 1, "rl": 1e306}, "turbulence": {"allow_unresolved": True},
                          "integration": {"t_max": 2.0, "n_snapshots": 3, "dt": 0.1, "precision": "float64"}})
    with pytest.raises(NonFiniteError, match=r"realisation 2: \d+ of 12 particles have non-finite positions"):
        simulate_realisations(cfg, [2], "cpu")


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


def test_non_finite_field_modes_stop_before_the_integration():
    """Wavelengths out of the range of float64 (here lambda_min = 1e-320 L_c, a
    denormal, with lambda_max = 1e300 L_c) give non-finite modes: refused, named."""
    from crsky.errors import NonFiniteError
    from crsky.simulate import simulate_realisations

    cfg = resolve_config({**TINY, "turbulence": {"n_modes": 8, "lambda_min": 1e-320, "lambda_max": 1e300}})
    with np.errstate(all="ignore"), pytest.raises(NonFiniteError, match=r"realisation 1: the field modes are not finite"):
        simulate_realisations(cfg, [1], "cpu")
