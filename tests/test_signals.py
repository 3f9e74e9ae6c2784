"""Signals: SIGINT and SIGTERM stop ``crsky run`` within seconds on every executor,
end every worker process it started, record what completed, and the run resumes to
the same bits; a SIGKILLed driver leaves no worker running.

Real processes and real signals throughout. Worker processes are found as the
children of the ``crsky run`` process (``/proc/*/stat``), recorded before the signal.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crsky.config import resolve_config
from crsky.ensemble import PARENT_POLL_S, WORKER_GRACE_S, run_ensemble
from crsky.store import RunStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")

# About 0.35 s per realisation in one process on a quiet 2-core machine (mixed
# precision, 160k steps x 48 particles x 64 modes): a signal sent once the first file
# is written lands mid-run, and the resumed remainder is cheap.
CONFIG = {
    "turbulence": {"n_modes": 64},
    "particles": {"nside": 2},
    "integration": {"t_max": 8000.0, "n_snapshots": 4, "dt": 0.05},
    "ensemble": {"realisations": 4, "seed": 11},
}
TOML = """
[turbulence]
n_modes = 64
[particles]
nside = 2
[integration]
t_max = 8000.0
n_snapshots = 4
dt = 0.05
[ensemble]
realisations = 4
seed = 11
"""
#: Seconds from the signal to the driver's exit: terminated workers get WORKER_GRACE_S
#: to clean up, then are killed; the rest is margin for a loaded machine.
STOP_WITHIN_S = WORKER_GRACE_S + 7.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process."""
    return run_ensemble(resolve_config(CONFIG), tmp_path_factory.mktemp("signals") / "reference",
                        backend="cpu", progress=False)


def children_of(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (field 4 of /proc/PID/stat)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pids) -> set[int]:
    """The processes of ``pids`` that still exist and are not zombies."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_run(tmp_path, env, *extra, new_session=False):
    (tmp_path / "c.toml").write_text(TOML)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "crsky.cli", "run", str(tmp_path / "c.toml"), "--out", str(run),
           "--backend", "cpu", "--quiet", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=new_session)
    return proc, run


def first_file(run: Path):
    return list((run / "realisations").glob("r*.nc")) if (run / "realisations").is_dir() else []


def assert_recorded_files_complete(run: Path) -> RunStore:
    """Everything the manifest lists verifies; no temporary file is left behind."""
    store = RunStore(run)
    for key, record in store.manifest()["realisations"].items():
        assert store.verify(int(key), record), f"realisation {key} recorded but not complete"
    assert not list((run / "realisations").glob("*.tmp")), "a temporary file outlived its process"
    return store


def assert_same_as(reference: RunStore, store: RunStore) -> None:
    n = CONFIG["ensemble"]["realisations"]
    assert store.completed() == list(range(n))
    for j in range(n):
        a, b = reference.read_realisation(j), store.read_realisation(j)
        np.testing.assert_array_equal(a["x"].values, b["x"].values)
        np.testing.assert_array_equal(a["p"].values, b["p"].values)


@pytest.mark.parametrize(
    "workers, signum, to_group, resume",
    [
        (2, signal.SIGTERM, False, True),  # a batch system's SIGTERM to the driver only
        # Ctrl-C in a terminal reaches the whole process group; the workers ignore it
        # and are ended by the driver (slow: the SIGTERM case runs the same stop)
        pytest.param(2, signal.SIGINT, True, False, marks=pytest.mark.slow),
        (1, signal.SIGINT, True, True),  # serial: the realisation in progress is lost, nothing else
    ],
    ids=["workers-sigterm", "workers-ctrl-c", "serial-ctrl-c"],
)
def test_signal_stops_run_ends_workers_and_resumes_identically(
        tmp_path, same_build_env, reference, workers, signum, to_group, resume):
    if workers > 1 and len(os.sched_getaffinity(0)) < workers:
        pytest.skip("needs as many cores as workers (--workers is capped at the cores)")
    proc, run = start_run(tmp_path, same_build_env, "--workers", str(workers), new_session=to_group)
    try:
        # Signal once the run is under way: a realisation written, the next ones running.
        wait_until(lambda: first_file(run) or proc.poll() is not None, 120, "the first realisation")
        assert proc.poll() is None, "the run finished before it could be interrupted"
        workers_seen = children_of(proc.pid)
        if workers > 1:
            assert len(workers_seen) >= workers  # the workers (and multiprocessing's resource tracker)
        sent = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, stderr
    assert stopped_after < STOP_WITHIN_S
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], stderr
    assert signal.Signals(signum).name in lines[0]
    # every process the run started has ended (the resource tracker exits on its pipe's EOF)
    wait_until(lambda: not alive(workers_seen), 10, f"the run's processes {alive(workers_seen)} to end")
    store = assert_recorded_files_complete(run)
    assert len(store.completed()) < CONFIG["ensemble"]["realisations"]
    assert store.manifest()["sessions"][-1]["stopped"] == signal.Signals(signum).name
    assert f"{len(store.completed())}/4 realisations complete" in lines[0]
    if not resume:
        return
    resumed = run_ensemble(resolve_config(CONFIG), run, backend="cpu", progress=False)
    assert_same_as(reference, resumed)


def test_sigkill_of_the_driver_ends_its_workers(tmp_path, same_build_env):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores for 2 workers")
    proc, run = start_run(tmp_path, same_build_env, "--workers", "2")
    try:
        # Both workers started and at work (the first task runs as soon as a worker is up).
        workers_seen = wait_until(lambda: len(children_of(proc.pid)) >= 3 and children_of(proc.pid),
                                  120, "two workers")
        time.sleep(1.0)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Each worker notices within PARENT_POLL_S, cleans up for at most WORKER_GRACE_S.
    wait_until(lambda: not alive(workers_seen), PARENT_POLL_S + WORKER_GRACE_S + 5.0,
               "the orphaned workers to exit")
    # Whatever a worker completed is a whole file; the manifest holds only verified ones.
    store = RunStore.open(run, resolve_config(CONFIG))
    assert_recorded_files_complete(run)
    for index in store.completed():
        assert store.verify(index, store.manifest()["realisations"][str(index)])


def test_sigterm_with_dask_cancels_queued_tasks(tmp_path, same_build_env):
    distributed = pytest.importorskip("dask.distributed")
    def crsky_tasks(dask_scheduler):
        return [str(key) for key in dask_scheduler.tasks if str(key).startswith("crsky-")]

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        proc, run = start_run(tmp_path, same_build_env, "--scheduler", cluster.scheduler_address)
        try:
            wait_until(lambda: first_file(run) or proc.poll() is not None, 120, "the first realisation")
            assert proc.poll() is None, "the run finished before it could be interrupted"
            assert client.run_on_scheduler(crsky_tasks), "the run's tasks are not on the scheduler"
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
            stopped_after = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 143, stderr
        assert stopped_after < STOP_WITHIN_S
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr

        # The scheduler forgets the run's tasks: none is left queued.
        wait_until(lambda: not client.run_on_scheduler(crsky_tasks), 10, "the run's tasks to be cancelled")
    store = assert_recorded_files_complete(run)
    assert len(store.completed()) < CONFIG["ensemble"]["realisations"]


def test_signal_landing_in_a_finaliser_is_not_lost(tmp_path):
    """Python drops an exception raised inside ``__del__`` ("Exception ignored"); the
    run's handler then delivers the signal again instead of losing the stop."""
    script = tmp_path / "finaliser.py"
    script.write_text(
        "import gc, os, signal, sys\n"
        "from crsky.ensemble import RunInterrupted, _signals_raise_interrupted\n"
        "class SignalInFinaliser:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        sum(range(100000))  # bytecode: the handler runs in here\n"
        "try:\n"
        "    with _signals_raise_interrupted():\n"
        "        SignalInFinaliser()\n"
        "        gc.collect()\n"
        "        for _ in range(10 ** 8):\n"
        "            pass\n"
        "        print('signal lost')\n"
        "except RunInterrupted as exc:\n"
        "    print('stopped by', signal.Signals(exc.signum).name)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "stopped by SIGTERM", result.stdout + result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
