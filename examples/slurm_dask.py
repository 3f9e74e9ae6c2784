"""Run a crsky ensemble on a SLURM cluster with dask-jobqueue.

    pip install crsky dask-jobqueue
    python examples/slurm_dask.py paper.toml /scratch/$USER/crsky-paper

Each SLURM job is one Dask worker process with all the cores of its allocation (numba
parallelises over particles inside a realisation); each task is one realisation,
written by the worker straight into the run directory (which must be on a shared
file system) and recorded in the manifest by this driver. Kill this script, or lose
workers, at any time: running it again resumes. For PBS use ``PBSCluster`` with the
same arguments.
"""

import sys

from dask.distributed import Client
from dask_jobqueue import SLURMCluster

from crsky.config import load_config
from crsky.ensemble import run_ensemble

config_file, run_dir = sys.argv[1], sys.argv[2]
config = load_config(config_file, preset="paper")

cluster = SLURMCluster(
    cores=16,                 # cores per job = numba threads per worker
    processes=1,              # one worker process per job
    memory="16GB",
    walltime="02:00:00",
    job_extra_directives=["--exclusive"],
    # queue="compute", account="myproject",
)
cluster.scale(jobs=8)          # or cluster.adapt(minimum_jobs=0, maximum_jobs=32)

with Client(cluster) as client:
    run_ensemble(config, run_dir, backend="cpu", scheduler=client.scheduler.address)
