"""Many realisations over an executor: in-process, local processes, or a Dask cluster.

Realisations are independent and each is fixed by ``(config, seed, index)``, so the
results do not depend on the executor, the number of workers or interruptions. Each
worker writes its realisation file atomically (:meth:`RunStore.write_realisation`)
and returns the file's record; the driver alone records completion in the manifest.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numba
from tqdm.auto import tqdm

from . import __version__
from .backends import resolve_backend
from .config import RunConfig, config_from_toml_text
from .errors import InputError
from .simulate import batch_size, simulate_realisations
from .store import RunStore, realisation_dataset

__all__ = ["compute_realisations", "run_ensemble"]


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


def _init_worker(threads: int) -> None:
    numba.set_num_threads(threads)


def run_ensemble(
    config: RunConfig,
    run_dir,
    backend: str = "auto",
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
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
        N processes sharing the cores).
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler; overrides ``workers``.
    force : bool
        Delete an existing run of another configuration and start over.
    progress : bool
        Show a progress bar over realisations.

    Returns
    -------
    RunStore
        The completed run directory.
    """
    if workers < 1:
        raise InputError(f"workers = {workers}: must be >= 1")
    backend = resolve_backend(backend)
    store = RunStore.open(run_dir, config, force=force)
    pending = store.pending(config.ensemble.realisations)
    total = config.ensemble.realisations
    executor = "dask" if scheduler else ("serial" if workers == 1 else "processes")
    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backend": backend, "executor": executor,
        "workers": workers, "scheduler": scheduler, "host": platform.node(),
        "crsky_version": __version__, "numba_version": numba.__version__,
        "python": sys.version.split()[0], "resumed_with_done": total - len(pending),
        "pending": len(pending),
    }
    start = time.perf_counter()
    bar = tqdm(total=total, initial=total - len(pending), unit="realisation",
               desc="crsky run", disable=not progress, file=sys.stderr)
    args = (str(store.path), config.to_toml(), backend)
    try:
        if not pending:
            pass
        elif executor == "serial":
            size = batch_size(config, backend)
            for first in range(0, len(pending), size):
                records = compute_realisations(args[0], args[1], pending[first:first + size], args[2])
                for index, record in records.items():
                    store.record(index, record)
                bar.update(len(records))
        elif executor == "processes":
            import multiprocessing as mp

            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(threads,)) as pool:
                futures = [pool.submit(compute_realisations, args[0], args[1], [j], args[2]) for j in pending]
                for future in as_completed(futures):
                    for index, record in future.result().items():
                        store.record(index, record)
                    bar.update()
        else:
            from dask.distributed import Client, as_completed as dask_as_completed

            with Client(scheduler) as client:
                futures = [
                    client.submit(compute_realisations, args[0], args[1], [j], args[2],
                                  key=f"crsky-{config.digest()[:12]}-{j}", pure=False)
                    for j in pending
                ]
                for future in dask_as_completed(futures):
                    for index, record in future.result().items():
                        store.record(index, record)
                    bar.update()
    finally:
        bar.close()
        session["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        session["seconds"] = time.perf_counter() - start
        session["completed"] = len(store.completed())
        store.record_session(session)
    return store
