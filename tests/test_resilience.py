"""No lost work: runs killed at random moments resume to identical results; a Dask
worker killed mid-run does not lose a realisation."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from crsky.config import resolve_config
from crsky.ensemble import run_ensemble
from crsky.store import RunStore

CONFIG = {
    "turbulence": {"n_modes": 64},
    "particles": {"nside": 2},
    "integration": {"t_max": 400.0, "n_snapshots": 4, "dt": 0.05},
    "ensemble": {"realisations": 8, "seed": 7},
}
TOML = """
[turbulence]
n_modes = 64
[particles]
nside = 2
[integration]
t_max = 400.0
n_snapshots = 4
dt = 0.05
[ensemble]
realisations = 8
seed = 7
"""


def assert_same_runs(a: RunStore, b: RunStore, n: int) -> None:
    for j in range(n):
        np.testing.assert_array_equal(a.read_realisation(j)["x"].values, b.read_realisation(j)["x"].values)
        np.testing.assert_array_equal(a.read_realisation(j)["p"].values, b.read_realisation(j)["p"].values)


def test_sigkill_at_random_moments_then_resume(tmp_path, same_build_env):
    cfg = resolve_config(CONFIG)
    reference = run_ensemble(cfg, tmp_path / "reference", backend="cpu", progress=False)
    (tmp_path / "c.toml").write_text(TOML)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "crsky.cli", "run", str(tmp_path / "c.toml"), "--out", str(run),
           "--backend", "cpu", "--quiet"]
    rng = np.random.default_rng(2024)  # fixed: the kill moments are reproducible
    kills = 0
    # Four attempts killed at random moments (start-up, mid-realisation, mid-write or
    # between a worker's rename and the manifest update), then one left to finish.
    for attempt in range(5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=same_build_env)
        try:
            # A whole run takes ~3 s of work plus ~1.5 s of start-up on a quiet 2-core machine.
            proc.wait(timeout=rng.uniform(0.5, 3.0) if attempt < 4 else 600)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        # After every kill: everything recorded as complete verifies, nothing else is read.
        store = RunStore.open(run, cfg)
        manifest = store.manifest()
        for key, record in manifest["realisations"].items():
            assert store.verify(int(key), record)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, "run never completed"
    assert kills >= 1, "the test never interrupted the run"
    store = RunStore.existing(run)
    assert store.completed() == list(range(8))
    assert_same_runs(reference, store, 8)


def test_dask_worker_killed_mid_run(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    cfg = resolve_config(CONFIG)
    reference = run_ensemble(cfg, tmp_path / "reference", backend="cpu", progress=False)
    run = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        result = {}

        def drive():
            result["store"] = run_ensemble(cfg, run, backend="cpu", scheduler=cluster.scheduler_address,
                                           progress=False)

        thread = threading.Thread(target=drive)
        thread.start()
        # Kill one worker once the first realisation has been written.
        deadline = time.time() + 300
        while time.time() < deadline and not list((run / "realisations").glob("r*.nc")):
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)
        thread.join(timeout=600)
    assert not thread.is_alive()
    store = result["store"]
    assert store.completed() == list(range(8))
    assert_same_runs(reference, store, 8)
