"""Executors: a process pool and a Dask cluster give the same bits as a serial run;
``--workers`` is capped; scheduler addresses are checked and connected with a timeout."""

import http.server
import os
import socket
import threading
import time

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


def test_too_many_workers_reduced_with_one_line(tmp_path, capsys):
    """``--workers 10000`` is reduced to the cores (one line says so) and to the
    realisations pending: with one left, it runs in this process. (The process pool's
    bits equal a serial run's: tests/test_simulate.py.)"""
    from crsky.cli import main
    from crsky.ensemble import local_worker_count
    from crsky.store import RunStore

    cfg = resolve_config({**TINY, "ensemble": {"realisations": 1, "seed": 3}})
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    code = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu",
                 "--quiet", "--workers", "10000"])
    _, err = capsys.readouterr()
    assert code == 0
    lines = [line for line in err.strip().splitlines() if not line.startswith("crsky run: warning:")]
    assert lines == [f"crsky run: {local_worker_count(10000, 1)[1]}"]  # besides the physics warnings
    session = RunStore.existing(tmp_path / "run").manifest()["sessions"][-1]
    assert session["executor"] == "serial" and session["workers"] == 1


def test_local_worker_count():
    from crsky.ensemble import local_worker_count

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert local_worker_count(1, 5) == (1, None)
    assert local_worker_count(cores, 1) == (1, None)  # never more processes than pending realisations
    assert local_worker_count(cores, 0)[0] == 0
    workers, notice = local_worker_count(cores + 1, 10 * cores)
    assert workers == cores
    assert f"--workers {cores + 1} reduced to {cores}" in notice and "MB" in notice


BAD_SCHEDULERS = [
    ("", "empty"),
    ("   ", "empty"),
    ("garbage", "needs a port"),
    ("tcp://host", "needs a port"),
    ("host:0", "needs a port"),
    ("host:99999", "needs a port"),
    ("host:http", "needs a port"),
    ("tcp://:8786", "not an address"),
    ("tcp://host:8786/path", "not an address"),
    ("http://host:8787", "unknown protocol 'http'"),
]


@pytest.mark.parametrize("address, message", BAD_SCHEDULERS)
def test_malformed_scheduler_address_is_bad_input(tmp_path, capsys, address, message):
    from crsky.cli import main

    code = main(["run", "--out", str(tmp_path / "run"), "--scheduler", address])
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("args, message", [
    (["--connect-timeout", "5"], "applies only with --scheduler"),
    (["--scheduler", "tcp://127.0.0.1:8786", "--connect-timeout", "0"], "positive"),
    (["--scheduler", "tcp://127.0.0.1:8786", "--connect-timeout", "nan"], "positive"),
    (["--scheduler", "tcp://127.0.0.1:8786", "--connect-timeout", "inf"], "positive"),
    (["--scheduler", "tcp://127.0.0.1:8786", "--connect-timeout", "soon"], "not a number"),
])
def test_bad_connect_timeout_is_bad_input(tmp_path, capsys, args, message):
    from crsky.cli import main

    code = main(["run", "--out", str(tmp_path / "run"), *args])
    _, err = capsys.readouterr()
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def _run_against(address, tmp_path, capsys, timeout="1"):
    from crsky.cli import main

    start = time.monotonic()
    code = main(["run", "--out", str(tmp_path / "run"), "--scheduler", address, "--connect-timeout", timeout])
    elapsed = time.monotonic() - start
    _, err = capsys.readouterr()
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    return elapsed, err


def test_scheduler_nothing_listening_fails_fast(tmp_path, capsys):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address in ("tcp://127.0.0.1:1", f"127.0.0.1:{port}"):
        # a refused connection is known at once; 30 s (the default timeout) would be a retry loop
        elapsed, err = _run_against(address, tmp_path, capsys, timeout="30")
        assert elapsed < 5 and "cannot connect" in err


def test_scheduler_port_that_is_not_dask_fails_after_the_timeout(tmp_path, capsys):
    """An HTTP server (a dashboard's port) and a port that accepts and says nothing."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the connections; nobody ever answers
    try:
        for port in (server.server_address[1], silent.getsockname()[1]):
            elapsed, err = _run_against(f"tcp://127.0.0.1:{port}", tmp_path, capsys, timeout="1")
            assert 1 <= elapsed < 6, elapsed  # the timeout, plus start-up
            assert "no Dask handshake" in err and "dashboard" in err
    finally:
        server.shutdown()
        server.server_close()
        silent.close()
