"""Executors: a Dask cluster gives the same bits as a serial run."""

import numpy as np
import pytest

from crsky.config import resolve_config
from crsky.ensemble import run_ensemble

TINY = {
    "turbulence": {"n_modes": 8},
    "particles": {"nside": 1},
    "integration": {"t_max": 2.0, "n_snapshots": 3, "dt": 0.05},
    "ensemble": {"realisations": 4, "seed": 3},
}


def test_dask_local_cluster_equals_serial(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    cfg = resolve_config(TINY)
    serial = run_ensemble(cfg, tmp_path / "serial", backend="cpu", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        dasked = run_ensemble(cfg, tmp_path / "dask", backend="cpu", scheduler=cluster.scheduler_address,
                              progress=False)
    assert dasked.completed() == [0, 1, 2, 3]
    assert dasked.manifest()["sessions"][-1]["executor"] == "dask"
    for j in range(4):
        a, b = serial.read_realisation(j), dasked.read_realisation(j)
        np.testing.assert_array_equal(a["x"].values, b["x"].values)
        np.testing.assert_array_equal(a["p"].values, b["p"].values)
