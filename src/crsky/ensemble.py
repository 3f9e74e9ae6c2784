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
import os
import platform
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait

import numba
from tqdm.auto import tqdm

from . import __version__
from .backends import resolve_backend
from .config import RunConfig, config_from_toml_text
from .errors import InputError
from .scheduler import CONNECT_TIMEOUT_S, check_scheduler_address, connect_scheduler
from .simulate import batch_size, simulate_realisations
from .store import RunStore, realisation_dataset

__all__ = [
    "compute_realisations",
    "run_ensemble",
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


def _worker_task(run_dir: str, config_toml: str, indices: list[int], backend: str) -> dict[int, dict]:
    """:func:`compute_realisations` in a local worker: SIGTERM ends the process once
    the task has cleaned up after itself, never returning a partial result."""
    global _worker_in_task
    _worker_in_task = True
    try:
        return compute_realisations(run_dir, config_toml, indices, backend)
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
            _run_pending(store, config, backend, workers, client, scheduler, progress)
        except RunInterrupted as exc:
            if store is not None:
                exc.completed = len(store.completed())
                exc.total = config.ensemble.realisations
                exc.run_dir = str(store.path)
            raise
    return store


def _open_executor(kind: str, workers: int | None, client, stack: contextlib.ExitStack):
    """The executor of ``kind``, entered into ``stack``, and the task function it runs."""
    if kind == "serial":
        return SerialExecutor(), compute_realisations
    if kind == "processes":
        return stack.enter_context(_process_pool(workers)), _worker_task
    return stack.enter_context(_dask_executor(client)), compute_realisations


def _run_pending(store: RunStore, config: RunConfig, backend: str, workers: int, client, scheduler,
                 progress: bool) -> None:
    """Compute the pending realisations of ``store`` on the chosen executor and record
    each as it completes; record the session (also when stopped)."""
    total = config.ensemble.realisations
    pending = store.pending(total)
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
        "pending": len(pending),
    }
    start = time.perf_counter()
    bar = tqdm(total=total, initial=total - len(pending), unit="realisation",
               desc="crsky run", disable=not progress, file=sys.stderr)
    recorded: set[Future] = set()

    def record_finished(futures) -> None:
        for future in futures:
            if future in recorded or not future.done() or future.cancelled():
                continue
            recorded.add(future)
            if future.exception() is not None:
                raise future.exception()
            for index, record in future.result().items():
                store.record(index, record)
            bar.update(len(future.result()))

    futures: list[Future] = []
    try:
        # Leaving this block ends the executor; on an exception (a signal included)
        # without draining its queue, so nothing runs while the manifest is updated.
        with contextlib.ExitStack() as stack:
            executor, task = _open_executor(kind, workers, client, stack)
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
        session["completed"] = len(store.completed())
        store.record_session(session)
