"""Many realisations over an executor: in-process, local processes, or a Dask cluster.

Realisations are independent and each is fixed by ``(config, seed, index)``, so the
results do not depend on the executor, the number of workers or interruptions. Each
worker writes its realisation file atomically (:meth:`RunStore.write_realisation`)
and returns the file's record; the driver alone records completion in the manifest.

One loop drives every executor (:func:`run_ensemble`); the executors differ only in
where a task runs:

``serial``
    :class:`SerialExecutor`, in this process with all numba threads; on the CUDA
    backend a task is a batch of realisations that share one kernel launch.
``processes``
    :class:`concurrent.futures.ProcessPoolExecutor` with ``spawn``; one realisation
    per task.
``dask``
    ``dask.distributed.Client.get_executor()``; one realisation per task.

Extending. :func:`extend_run` continues a complete run to a later ``t_max`` with the
same loop and executors; each task (:func:`extend_realisations`) reads a realisation,
continues it from its last snapshot and writes the whole extended file into
``extending/``; the run switches to the extended files only when all are there
(docs/rundir.md, Extending a run).

Stopping. SIGINT and SIGTERM raise :class:`RunInterrupted` in the driver: queued
tasks are cancelled, the local worker processes are terminated (each removes the
temporary file it was writing; one that does not exit within
:data:`WORKER_GRACE_S` is killed), every finished task is recorded, and the
exception carries the signal and the count of completed realisations. Local workers
also watch the driver: if it dies (SIGKILL included) they exit within
:data:`PARENT_POLL_S` + :data:`WORKER_GRACE_S` seconds without recording anything.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import functools
import logging
import os
import platform
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numba
import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .backends import resolve_backend
from .config import RunConfig, check_resources, config_from_toml_text
from .errors import InputError
from .scheduler import CONNECT_TIMEOUT_S, check_scheduler_address, connect_scheduler
from .simulate import batch_size, continue_realisations, extend_config, simulate_realisations
from .store import EXTENDING, RunDirError, RunStore, config_difference, realisation_dataset

__all__ = [
    "compute_realisations",
    "extend_realisations",
    "run_ensemble",
    "extend_run",
    "check_extension",
    "RunInterrupted",
    "SerialExecutor",
    "local_worker_count",
    "WORKER_MEMORY_MB",
]

#: Resident memory of one local worker process in MB (interpreter, numba, xarray and
#: HDF5; 345 MB measured with the quick preset, more for larger ``nside``): the
#: reason ``--workers`` is capped at the number of cores rather than left open.
WORKER_MEMORY_MB = 350
#: Seconds a terminated local worker gets to remove its temporary file and exit
#: before it is killed.
WORKER_GRACE_S = 3.0
#: Seconds between a local worker's checks that the driver process still lives.
PARENT_POLL_S = 0.5

class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM; what completed is recorded.

    Attributes
    ----------
    signum : int
        The signal received.
    completed, total : int or None
        Realisations complete in the run directory, and in the ensemble (set once
        the run directory was open).
    run_dir : str or None
        The run directory.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.completed: int | None = None
        self.total: int | None = None
        self.run_dir: str | None = None

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


# -- the task ------------------------------------------------------------------
def compute_realisations(run_dir: str, config_toml: str, indices: list[int], backend: str) -> dict[int, dict]:
    """Simulate realisations ``indices``, write each into ``run_dir``; return their records.

    A plain function of picklable arguments, so that any executor (process pool,
    Dask worker) can run it. On the CUDA backend the realisations share one launch.
    """
    config = config_from_toml_text(config_toml)
    store = RunStore(run_dir)
    records = {}
    for result in simulate_realisations(config, indices, backend):
        ds = realisation_dataset(
            config, result.index, result.t_omega, result.x, result.p,
            attrs={"backend": result.backend, "seconds": result.seconds},
        )
        record = store.write_realisation(ds, result.index)
        record.update(seconds=result.seconds, backend=result.backend)
        records[result.index] = record
    return records


def extend_realisations(run_dir: str, config_toml: str, indices: list[int], backend: str) -> dict[int, dict]:
    """Extend realisations ``indices`` of the run in ``run_dir`` to the extended
    configuration ``config_toml``; write each into ``extending/``; return their records.

    Each realisation is read back verified (its manifest record, the run's current
    configuration), continued from its last snapshot (float64 ``x``, ``p``) through
    the configuration's last stage (:func:`crsky.simulate.continue_realisations`),
    and written whole: every stored snapshot, bit for bit, then the new ones. A plain
    function of picklable arguments, like :func:`compute_realisations`.
    """
    config = config_from_toml_text(config_toml)
    store = RunStore(run_dir)
    stored = [store.read_realisation(j) for j in indices]
    last_t = config.integration.extended_from[-1]["t_max"]
    for j, ds in zip(indices, stored):
        if ds["x"].dtype != np.float64 or ds["p"].dtype != np.float64:
            raise RunDirError(f"realisation {j} stores {ds['x'].dtype} positions; extending needs float64")
        if not np.isclose(ds["t_omega"].values[-1], last_t, rtol=1e-12, atol=0.0):
            raise RunDirError(f"realisation {j} ends at t Omega = {ds['t_omega'].values[-1]:g}, not at the "
                              f"run's t_max = {last_t:g}")
    results = continue_realisations(config, indices, np.stack([ds["x"].values[-1] for ds in stored]),
                                    np.stack([ds["p"].values[-1] for ds in stored]), backend)
    records = {}
    for ds, result in zip(stored, results):
        seconds = float(ds.attrs.get("seconds", 0.0)) + result.seconds
        extended = realisation_dataset(
            config, result.index, np.concatenate([ds["t_omega"].values, result.t_omega]),
            np.concatenate([ds["x"].values, result.x]), np.concatenate([ds["p"].values, result.p]),
            attrs={"backend": result.backend, "seconds": seconds},
        )
        record = store.write_realisation(extended, result.index, extension=True)
        record.update(seconds=seconds, backend=result.backend)
        records[result.index] = record
    return records


# -- executors -----------------------------------------------------------------
class SerialExecutor(Executor):
    """Runs each task in this process when it is submitted.

    ``submit`` returns a finished :class:`~concurrent.futures.Future`. An
    ``Exception`` of the task is stored in it, like in any executor; a
    ``BaseException`` (:class:`RunInterrupted`, ``SystemExit``) propagates at once.
    """

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


_worker_in_task = False
_worker_stopping = False


class _WorkerStop(BaseException):
    """Raised in a local worker by SIGTERM, so that the task's clean-up runs."""


def _worker_sigterm(signum, frame):
    global _worker_stopping
    _worker_stopping = True
    if not _worker_in_task:  # idle: nothing to clean up
        os._exit(128 + signum)
    raise _WorkerStop


def _watch_parent(parent_pid: int) -> None:
    """Exit this worker soon after the driver dies (it is then re-parented)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # the task's own clean-up first (temporary file)
    time.sleep(WORKER_GRACE_S)
    os._exit(1)  # the main thread is inside a long kernel call: go anyway


def _init_worker(threads: int, parent_pid: int) -> None:
    """Initialiser of a local worker process.

    Ctrl-C in a terminal signals the whole process group; workers ignore SIGINT and
    leave the decision to the driver, which terminates them (SIGTERM). A daemon
    thread polls ``os.getppid()``: portable (Linux, macOS), and unlike Linux's
    ``PR_SET_PDEATHSIG`` it does not depend on which of the driver's threads
    started the worker.
    """
    numba.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    _redeliver_from_finalisers(_WorkerStop, lambda exc: signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="crsky-parent-watch", daemon=True).start()


def _worker_task(task, run_dir: str, config_toml: str, indices: list[int], backend: str) -> dict[int, dict]:
    """``task`` (:func:`compute_realisations`, :func:`extend_realisations`) in a local
    worker: SIGTERM ends the process once the task has cleaned up after itself, never
    returning a partial result."""
    global _worker_in_task
    _worker_in_task = True
    try:
        return task(run_dir, config_toml, indices, backend)
    except _WorkerStop:
        os._exit(128 + signal.SIGTERM)
    finally:
        _worker_in_task = False
        if _worker_stopping:  # SIGTERM as the task ended: exit rather than take the next
            os._exit(128 + signal.SIGTERM)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued tasks and end every worker process now (no draining)."""
    # ``_processes`` is private but stable (3.8-3.13); 3.14 adds ``terminate_workers``.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    deadline = time.monotonic() + WORKER_GRACE_S
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            if process.is_alive():
                process.kill()
                process.join()


@contextlib.contextmanager
def _process_pool(workers: int):
    import multiprocessing as mp

    threads = max(1, _cores() // workers)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads, os.getpid()))
    # When the workers are terminated, the pool's own shutdown may still write its
    # stop sentinels to them; the broken pipe is expected then, and without this
    # switch of multiprocessing's queue (read when its feeder thread starts, at the
    # first task) the feeder thread prints a BrokenPipeError traceback.
    call_queue = getattr(pool, "_call_queue", None)
    if call_queue is not None and hasattr(call_queue, "_ignore_epipe"):
        call_queue._ignore_epipe = True
    try:
        yield pool
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _dask_executor(client):
    executor = client.get_executor(pure=False)
    try:
        yield executor
    except BaseException:
        # The run is stopping on purpose (a signal or an error that is reported once): the
        # cancelled futures' own accounts (distributed's "Couldn't gather" and tornado's
        # FutureCancelledError traceback of the executor's callbacks) would only bury it.
        for name in ("distributed", "tornado.application"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        executor.shutdown(wait=False)  # cancels what the scheduler has not finished
        raise
    executor.shutdown(wait=True)


# -- local worker count --------------------------------------------------------
def _cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_worker_count(requested: int, pending: int) -> tuple[int, str | None]:
    """Local worker processes to start for ``requested`` workers and ``pending`` realisations.

    At most one per pending realisation and one per CPU core (each worker holds about
    :data:`WORKER_MEMORY_MB` MB; more processes than cores only add memory).

    Returns
    -------
    workers : int
        Processes to start (0 if nothing is pending).
    notice : str or None
        One line saying that ``requested`` was reduced to the number of cores.
    """
    cores = _cores()
    notice = None
    if requested > cores:
        notice = (f"--workers {requested} reduced to {cores}, the number of CPU cores available "
                  f"(each worker process holds ~{WORKER_MEMORY_MB} MB)")
    return min(requested, cores, pending), notice


# -- signals -------------------------------------------------------------------
def _kill_later(pid: int, signum: int) -> None:
    time.sleep(0.05)
    os.kill(pid, signum)


def _redeliver_from_finalisers(exc_type: type[BaseException], signum_of) -> None:
    """Install a ``sys.unraisablehook`` that sends the signal again when its exception
    was raised inside a finaliser.

    A signal handler's exception that lands in a ``__del__`` or a weakref callback is
    dropped by Python with an "Exception ignored" traceback, and the signal would be
    lost. Sending the signal again runs the handler once more, at a bytecode
    boundary after the finaliser. It is sent from a new low-level thread that the
    hook does not wait for: ``os.kill`` to this process from this thread, or
    ``threading.Thread.start`` (which waits), would run the handler inside the hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, exc_type):
            signum = signum_of(unraisable.exc_value)
            _thread.start_new_thread(_kill_later, (os.getpid(), signum))
            return
        previous(unraisable)

    sys.unraisablehook = hook


@contextlib.contextmanager
def _signals_raise_interrupted():
    """SIGINT and SIGTERM raise :class:`RunInterrupted` (once) in the main thread.

    A second signal while the run stops is ignored: stopping is bounded (workers get
    :data:`WORKER_GRACE_S`) and must not be cut short. Elsewhere than in the main
    thread (Python delivers signals only there) nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise RunInterrupted(signum)

    def signum_of(exc: RunInterrupted) -> int:
        raised.clear()  # it was dropped: the next delivery raises again
        return exc.signum

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook
    _redeliver_from_finalisers(RunInterrupted, signum_of)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, action in previous.items():
            signal.signal(signum, action)


# -- the driver ----------------------------------------------------------------
def run_ensemble(
    config: RunConfig,
    run_dir,
    backend: str = "auto",
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> RunStore:
    """Run (or resume) every realisation of ``config`` into ``run_dir``.

    Parameters
    ----------
    config : RunConfig
        Validated configuration.
    run_dir : path
        Run directory; created, or resumed if it holds the same configuration.
    backend : {"auto", "cpu", "cuda"}
        Kernel backend.
    workers : int
        Local worker processes (1: in this process, with all numba threads; N > 1:
        N processes sharing the cores, capped by :func:`local_worker_count`).
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler; overrides ``workers``.
    force : bool
        Delete an existing run of another configuration and start over.
    progress : bool
        Show a progress bar over realisations.
    connect_timeout : float
        Seconds to wait for the scheduler (:func:`connect_scheduler`).

    Returns
    -------
    RunStore
        The completed run directory.

    Raises
    ------
    RunInterrupted
        On SIGINT or SIGTERM (in the main thread), after the completed realisations
        were recorded and the local workers ended.
    SchedulerError
        The scheduler cannot be reached.
    """
    if workers < 1:
        raise InputError(f"workers = {workers}: must be >= 1")
    if scheduler is not None:
        check_scheduler_address(scheduler)  # bad input before any side effect
    backend = resolve_backend(backend)
    store = None
    with _signals_raise_interrupted(), contextlib.ExitStack() as stack:
        try:
            client = None
            if scheduler is not None:
                client = connect_scheduler(scheduler, connect_timeout)
                stack.callback(client.close)
            store = RunStore.open(run_dir, config, force=force)
            job = _Job(compute_realisations, store.pending(config.ensemble.realisations), store.record,
                       lambda: len(store.completed()))
            _run_pending(store, config, backend, workers, client, scheduler, progress, job)
        except RunInterrupted as exc:
            if store is not None:
                exc.completed = len(store.completed())
                exc.total = config.ensemble.realisations
                exc.run_dir = str(store.path)
            raise
    return store


def check_extension(run_dir, t_max: float, given: RunConfig | None = None) -> tuple[RunStore, RunConfig, RunConfig]:
    """Check that the run in ``run_dir`` can be extended to ``t_max``; change nothing.

    Parameters
    ----------
    run_dir : path
        A complete crsky run with float64 output.
    t_max : float
        The new last snapshot, ``Omega T``: later than the run's ``t_max``, a whole
        number of steps.
    given : RunConfig, optional
        A configuration given on the command line: it must be the run's except for
        ``[integration] t_max``, ``n_snapshots`` and ``extended_from``.

    Returns
    -------
    store, stored, extended
        The run directory, its configuration and the extended configuration.

    Raises
    ------
    RunDirError, ConfigError
        (:class:`~crsky.errors.InputError`) naming what is wrong.
    """
    store = RunStore(run_dir)
    if store.path.is_dir() and (store.path / "manifest.json").is_file():
        extension = store.manifest().get("extension")  # an interrupted commit: finish it first
        if extension is not None and extension.get("committing") and extension["t_max"] == t_max:
            return store, None, config_from_toml_text(extension["config"])
    store = RunStore.existing(run_dir)  # not a run, damaged, an interrupted commit to another t_max
    stored = store.config()
    if given is not None:
        i = stored.integration
        given = dataclasses.replace(given, integration=dataclasses.replace(
            given.integration, t_max=i.t_max, n_snapshots=i.n_snapshots, extended_from=i.extended_from))
        if given.digest() != stored.digest():
            raise RunDirError(f"run directory {store.path} holds a run of a different configuration "
                              f"({config_difference(stored, given)}); --extend continues the run as it is: "
                              "give no CONFIG or the run's own")
    if stored.output.precision != "float64":
        raise RunDirError(f"run {store.path} stores [output] precision = {stored.output.precision!r}; --extend "
                          "continues each particle from its stored state, which needs 'float64' (rerun with "
                          "precision = 'float64' to extend later)")
    extension = store.extension()
    if extension is not None:
        if extension["t_max"] != t_max:
            raise store.extension_in_progress_error(extension)
        return store, stored, config_from_toml_text(extension["config"])  # resume it
    done, total = len(store.completed()), stored.ensemble.realisations
    if done < total:
        raise RunDirError(f"run {store.path} is incomplete ({done}/{total} realisations); finish it first "
                          f"(`crsky run {store.path / 'config.toml'} --out {store.path}`), then extend it")
    return store, stored, extend_config(stored, t_max)


def extend_run(
    run_dir,
    t_max: float,
    given: RunConfig | None = None,
    backend: str = "auto",
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> RunStore:
    """Extend (or resume extending) the complete run in ``run_dir`` to ``t_max``.

    Every realisation is continued from its last snapshot to ``t_max``, and the
    snapshots of :func:`crsky.simulate.extension_snapshot_count` are added
    (docs/rundir.md, Extending a run). The extended files are written into
    ``extending/`` and recorded in the manifest; the run stays as it was until all
    are there, then the extension is committed (:meth:`RunStore.commit_extension`).
    Deterministic, resumable (a stopped extension continues where it stopped, the
    same command) and executor-independent, like :func:`run_ensemble`.

    Parameters
    ----------
    run_dir : path
        A complete run with float64 output.
    t_max : float
        New last snapshot ``Omega T``; a whole number of steps after the run's.
    given : RunConfig, optional
        See :func:`check_extension`.
    backend, workers, scheduler, progress, connect_timeout
        As in :func:`run_ensemble`.

    Returns
    -------
    RunStore
        The extended run directory.

    Raises
    ------
    RunDirError, ConfigError
        Bad input (:func:`check_extension`); nothing was changed.
    RunInterrupted
        On SIGINT or SIGTERM, after the extended realisations were recorded.
    """
    if workers < 1:
        raise InputError(f"workers = {workers}: must be >= 1")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    # Bad input before the lock file is touched; the extended files are written next to
    # the old ones until the commit, so their whole size must fit on the disk.
    _, _, extended = check_extension(run_dir, t_max, given)
    local = 1 if scheduler is not None else max(1, local_worker_count(workers, extended.ensemble.realisations)[0])
    check_resources(extended, Path(run_dir) / EXTENDING, workers=local)
    backend = resolve_backend(backend)
    store = RunStore(run_dir)
    with _signals_raise_interrupted(), contextlib.ExitStack() as stack:
        stack.enter_context(store.lock(exclusive=True, clean=True))
        store, stored, config = check_extension(run_dir, t_max, given)  # again, alone now
        try:
            extension = store.extension()
            if extension is None or not extension.get("committing"):
                pending = store.begin_extension(config)
                client = None
                if scheduler is not None and pending:
                    client = connect_scheduler(scheduler, connect_timeout)
                    stack.callback(client.close)
                job = _Job(extend_realisations, pending, store.record_extended,
                           lambda: len(store.extension()["realisations"]),
                           {"extend": {"from_t_max": stored.integration.t_max, "t_max": t_max}})
                _run_pending(store, config, backend, workers, client, scheduler, progress, job)
            store.commit_extension()
        except RunInterrupted as exc:
            extension = store.extension()
            exc.completed = len(extension["realisations"]) if extension else config.ensemble.realisations
            exc.total = config.ensemble.realisations
            exc.run_dir = str(store.path)
            raise
    return store


@dataclass
class _Job:
    """What :func:`_run_pending` computes and how it records it.

    Attributes
    ----------
    task : callable
        Module-level ``task(run_dir, config_toml, indices, backend) -> {index: record}``.
    pending : list of int
        Realisations to compute.
    record : callable
        ``record(index, record)`` into the manifest (driver only).
    completed : callable
        Count of recorded realisations, for the session record.
    session : dict
        Extra keys of the session record.
    """

    task: Callable
    pending: list
    record: Callable
    completed: Callable
    session: dict = field(default_factory=dict)


def _open_executor(kind: str, workers: int | None, client, stack: contextlib.ExitStack, task):
    """The executor of ``kind``, entered into ``stack``, and what it runs for ``task``."""
    if kind == "serial":
        return SerialExecutor(), task
    if kind == "processes":
        return stack.enter_context(_process_pool(workers)), functools.partial(_worker_task, task)
    return stack.enter_context(_dask_executor(client)), task


def _run_pending(store: RunStore, config: RunConfig, backend: str, workers: int, client, scheduler,
                 progress: bool, job: _Job) -> None:
    """Compute ``job``'s pending realisations on the chosen executor and record each
    as it completes; record the session (also when stopped)."""
    total = config.ensemble.realisations
    pending = job.pending
    if client is not None:
        kind, workers = "dask", None
    else:
        workers, notice = local_worker_count(workers, len(pending))
        if notice:
            print(f"crsky run: {notice}", file=sys.stderr)
        kind = "processes" if workers > 1 else "serial"
    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backend": backend, "executor": kind,
        "workers": workers, "scheduler": scheduler, "host": platform.node(),
        "crsky_version": __version__, "numba_version": numba.__version__,
        "python": sys.version.split()[0], "resumed_with_done": total - len(pending),
        "pending": len(pending), **job.session,
    }
    start = time.perf_counter()
    bar = tqdm(total=total, initial=total - len(pending), unit="realisation",
               desc="crsky run --extend" if "extend" in job.session else "crsky run", disable=not progress,
               file=sys.stderr)
    recorded: set[Future] = set()

    def record_finished(futures) -> None:
        for future in futures:
            if future in recorded or not future.done() or future.cancelled():
                continue
            recorded.add(future)
            if future.exception() is not None:
                raise future.exception()
            for index, record in future.result().items():
                job.record(index, record)
            bar.update(len(future.result()))

    futures: list[Future] = []
    try:
        # Leaving this block ends the executor; on an exception (a signal included)
        # without draining its queue, so nothing runs while the manifest is updated.
        with contextlib.ExitStack() as stack:
            executor, task = _open_executor(kind, workers, client, stack, job.task)
            size = batch_size(config, backend) if kind == "serial" else 1
            args = (str(store.path), config.to_toml())
            for first in range(0, len(pending), size):
                batch = pending[first:first + size]
                options = {"key": f"crsky-{config.digest()[:12]}-{batch[0]}"} if kind == "dask" else {}
                futures.append(executor.submit(task, *args, batch, backend, **options))
                record_finished(futures[-1:])  # serial: the task has just run
            waiting = set(futures) - recorded
            while waiting:
                done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                record_finished(done)
    except BaseException as exc:
        session["stopped"] = (signal.Signals(exc.signum).name if isinstance(exc, RunInterrupted)
                              else type(exc).__name__)
        with contextlib.suppress(Exception):  # what finished before the executor ended
            record_finished([f for f in futures if f.done() and not f.cancelled() and f.exception() is None])
        raise
    finally:
        bar.close()
        session["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        session["seconds"] = time.perf_counter() - start
        session["completed"] = job.completed()
        store.record_session(session)
