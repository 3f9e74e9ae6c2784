"""Throughput measured only in quiet moments of a shared machine.

Other people's test runs share the cores. A timed run counts as *clean* when the
process got (almost) all the CPU time its threads could use:
``cpu_share = process CPU time / (wall time * threads) >= --min-share``. Before each
attempt the script waits (up to ``--wait`` s) until ``/proc/stat`` shows the machine
idle. Each case is repeated until ``--clean-runs`` clean runs or ``--max-attempts``;
the best clean rate is reported with the number of clean runs and their median.

    python benchmarks/clean_bench.py [--precisions mixed float64] [--modes 64 256 1024]
        [--particles 768 3072 12288] [--threads 2] [--seconds 0.7] [--out clean.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from crsky.backends import configure_cpu_vectors

configure_cpu_vectors()  # before numba loads, as the crsky command does (512-bit vectors on AVX-512)

import numba  # noqa: E402
import numpy as np  # noqa: E402

from crsky.backends import get_backend  # noqa: E402
from crsky.bench import machine_info, snapshot_steps, start_state  # noqa: E402
from crsky.config import DEFAULT_DT, TurbulenceConfig  # noqa: E402
from crsky.turbulence import make_modes  # noqa: E402

#: Rough rates (mode evaluations per second per thread) to size a case.
RATE = {"float64": 3.5e7, "mixed": 1.5e9}


def idle_fraction(interval: float = 0.3) -> float:
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total

    i0, t0 = read()
    time.sleep(interval)
    i1, t1 = read()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit: float, threshold: float = 0.9) -> float:
    deadline = time.time() + limit
    frac = idle_fraction()
    while frac < threshold and time.time() < deadline:
        frac = idle_fraction(1.0)
    return frac


def measure(precision, n_modes, n_particles, seconds, threads, args):
    modes = make_modes(TurbulenceConfig(n_modes=n_modes), seed=0, realisation=0)
    pos, vel = start_state(n_particles)
    n_steps = max(2, int(seconds * RATE[precision] * threads / (n_modes * n_particles)))
    steps = snapshot_steps(n_steps)
    t0 = time.perf_counter()
    get_backend("cpu", precision).trace(pos[:4], vel[:4], modes, sign=-1.0, dt=DEFAULT_DT, rl=0.1,
                                        snapshot_steps=np.array([1, 2]))
    first_call = time.perf_counter() - t0
    runs = []
    for _ in range(args.max_attempts):
        idle = wait_idle(args.wait)
        w0, c0 = time.perf_counter(), time.process_time()
        get_backend("cpu", precision).trace(pos, vel, modes, sign=-1.0, dt=DEFAULT_DT, rl=0.1,
                                            snapshot_steps=steps)
        wall = time.perf_counter() - w0
        share = (time.process_time() - c0) / (wall * threads)
        runs.append({"seconds": wall, "cpu_share": share, "idle_before": idle,
                     "mode_evals_per_s": n_particles * n_steps * n_modes / wall})
        if sum(r["cpu_share"] >= args.min_share for r in runs) >= args.clean_runs:
            break
    clean = [r for r in runs if r["cpu_share"] >= args.min_share]
    pick = clean or runs
    rates = [r["mode_evals_per_s"] for r in pick]
    best = max(pick, key=lambda r: r["mode_evals_per_s"])
    row = {
        "precision": precision, "dtype": precision, "backend": "cpu", "n_modes": n_modes,
        "n_particles": n_particles, "n_steps": n_steps, "threads": threads,
        "mode_evals_per_s": best["mode_evals_per_s"], "particle_steps_per_s": best["mode_evals_per_s"] / n_modes,
        "median_mode_evals_per_s": float(np.median(rates)), "clean_runs": len(clean), "attempts": len(runs),
        "cpu_share": best["cpu_share"], "first_call_s": first_call,
    }
    print(f"  {precision:7s} {n_modes:5d} modes {n_particles:6d} particles {n_steps:7d} steps: best "
          f"{row['mode_evals_per_s']:.3e} median {row['median_mode_evals_per_s']:.3e} mode evals/s "
          f"({len(clean)} clean of {len(runs)}, share {best['cpu_share']:.2f})", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", nargs="+", default=["mixed", "float64"])
    ap.add_argument("--modes", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--particles", nargs="+", type=int, default=[768, 3072, 12288])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=0.7, help="target length of one timed run")
    ap.add_argument("--min-share", type=float, default=0.97)
    ap.add_argument("--clean-runs", type=int, default=3)
    ap.add_argument("--max-attempts", type=int, default=15)
    ap.add_argument("--wait", type=float, default=20.0, help="seconds to wait for an idle machine per attempt")
    ap.add_argument("--out", default="clean_bench.json")
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    info = machine_info()
    print(f"{info['summary']}; {threads} threads; load {os.getloadavg()}")
    rows = [measure(p, m, n, args.seconds, threads, args)
            for p in args.precisions for m in args.modes for n in args.particles]
    out = {"machine": info, "threads": threads, "min_share": args.min_share,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cases": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
