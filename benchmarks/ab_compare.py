"""Interleaved A/B throughput of the CPU backend on a noisy shared machine.

A single timed run on the 2-vCPU development VM varies by +-30 % from one second to
the next (host load, clocks), so two variants timed one after the other tell little.
This script starts one persistent worker process per variant (each compiles once),
then alternates short timed runs of ``cpu.trace`` (ABBA order) and reports the median
of the per-round ratios B/A, which cancels the slow drifts; over 12-25 rounds it is
good to a few per cent.

A variant is a source tree (``--a-src``/``--b-src``, e.g. a ``git archive`` of an
older commit) and environment settings (``--a-env``/``--b-env KEY=VALUE``). Each
worker calls ``crsky.backends.configure_cpu_vectors()`` before numba loads, as the
``crsky`` command does, so ``CRSKY_VECTOR_BITS=256`` / ``512`` selects the vector
width. Example (512- against 256-bit vectors, the paper's parameters)::

    python benchmarks/ab_compare.py --a-env CRSKY_VECTOR_BITS=256 --b-env CRSKY_VECTOR_BITS=512 \\
        --threads 2 --particles 3072 --modes 256 --dt 0.1 --rounds 16

``--what field`` times the mode loop alone (``cpu._field_mixed``, one thread) instead
of full traces: the part of the cost that a change of the cosine or of the sums moves.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from crsky.backends import configure_cpu_vectors
configure_cpu_vectors()
import time
import numba
import numpy as np
from crsky import bench
from crsky.config import TurbulenceConfig
from crsky.turbulence import make_modes

threads, n_part, n_modes, seconds, dt, refresh, what = (int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                                        float(sys.argv[5]), float(sys.argv[6]), sys.argv[7],
                                                        sys.argv[8])
refresh = None if refresh == "default" else int(refresh)
numba.set_num_threads(threads)
modes = make_modes(TurbulenceConfig(n_modes=n_modes), seed=0, realisation=0)
try:  # the Backend interface
    from crsky.backends import cpu_mixed, get_backend

    tracer = get_backend("cpu", "mixed", refresh=refresh)

    def trace(pos, vel, steps):
        tracer.trace(pos, vel, modes, sign=-1.0, dt=dt, rl=0.1, snapshot_steps=steps)

    field, lanes, block = cpu_mixed.field_lanes, cpu_mixed.LANES, cpu_mixed.MODE_BLOCK
    m32 = cpu_mixed.mode_arrays_soa(modes)[1]
    start_state, snapshot_steps = bench.start_state, bench.snapshot_steps
except ImportError:  # older trees: module functions of crsky.backends.cpu
    from crsky import kernels
    from crsky.backends import cpu

    def trace(pos, vel, steps):
        cpu.trace(pos, vel, modes, -1.0, dt, 0.1, steps, precision="mixed", refresh=refresh)

    field, lanes, block = getattr(cpu, "_field_mixed", None), getattr(cpu, "LANES", 0), getattr(cpu, "MODE_BLOCK", 0)
    m32 = kernels.mixed_mode_arrays(modes)[1]
    start_state, snapshot_steps = bench._start_state, bench._snapshots
pos, vel = start_state(n_part)
trace(pos[:4], vel[:4], np.array([1, 2]))
steps = snapshot_steps(max(2, int(seconds * 1.5e9 * threads / (n_modes * n_part))))
if what == "field":
    # The mode loop alone: the lanes field sum (LANES particles, every block) over and
    # over on one thread, an offset nudged each time so that nothing is hoisted.
    @numba.njit
    def field_loop(m32, phases, d, b, acc, reps):
        total = 0.0
        for _ in range(reps):
            d[0, 0, 0] += np.float32(1e-7)
            field(m32, phases, d, b, acc)
            total += b[0, 0]
        return total

    rng = np.random.default_rng(0)
    phases = rng.uniform(-0.5, 0.5, (n_modes, lanes)).astype(np.float32)
    d = (0.1 * rng.normal(size=((n_modes + block - 1) // block, 3, lanes))).astype(np.float32)
    b = np.empty((3, lanes))
    acc = np.empty((3, lanes), np.float32)
    field_loop(m32, phases, d, b, acc, 1)
    reps = max(1, int(seconds * 1.5e9 / (lanes * n_modes)))
print("ready", numba.config.CPU_FEATURES is not None and "-prefer-256-bit" in numba.config.CPU_FEATURES, flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    c = time.process_time()
    if what == "field":
        field_loop(m32, phases, d, b, acc, reps)
        work, used = lanes * n_modes * reps, 1
    else:
        trace(pos, vel, steps)
        work, used = n_modes * n_part * int(steps[-1]), threads
    wall = time.perf_counter() - t
    print(work / wall, (time.process_time() - c) / wall / used, flush=True)
"""


def _env(pairs: list[str]) -> dict:
    env = dict(os.environ)
    for pair in pairs:
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def main() -> None:
    here = str(Path(__file__).resolve().parents[1] / "src")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a-src", default=here, help="source tree (the folder holding crsky/) of variant A")
    ap.add_argument("--b-src", default=here)
    ap.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--a-refresh", default="default", help="refresh interval of A (default: the backend's own)")
    ap.add_argument("--b-refresh", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--particles", type=int, default=3072)
    ap.add_argument("--modes", type=int, default=256)
    ap.add_argument("--dt", type=float, default=0.1)
    ap.add_argument("--seconds", type=float, default=0.3, help="length of one timed run")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--what", choices=("trace", "field"), default="trace",
                    help="time full traces of the mixed CPU path (default), or its mode loop alone "
                         "(the lanes field sum on LANES particles, one thread; trees without one lack it)")
    args = ap.parse_args()

    common = [str(args.threads), str(args.particles), str(args.modes), str(args.seconds), str(args.dt)]
    workers = {}
    for name, src, env, refresh in (("A", args.a_src, args.a_env, args.a_refresh),
                                    ("B", args.b_src, args.b_env, args.b_refresh)):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, src, *common, refresh, args.what], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=_env(env))
        ready = proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise SystemExit(f"worker {name} failed to start")
        workers[name] = proc
        print(f"{name}: {src} {' '.join(env)} refresh={refresh} (512-bit vectors: {ready[1]})", flush=True)

    def run(name):
        proc = workers[name]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        rate, share = proc.stdout.readline().split()
        return float(rate), float(share)

    rates = {"A": [], "B": []}
    for k in range(args.rounds):
        order = ("A", "B") if k % 2 == 0 else ("B", "A")
        got = {name: run(name) for name in order}
        for name in rates:
            rates[name].append(got[name][0])
        print(f"round {k:2d}: A {got['A'][0]:.3e} /s (cpu share {got['A'][1]:.2f})  "
              f"B {got['B'][0]:.3e} /s ({got['B'][1]:.2f})  B/A {got['B'][0] / got['A'][0]:.3f}", flush=True)
    a, b = np.array(rates["A"]), np.array(rates["B"])
    print(f"mode evaluations/s: A median {np.median(a):.3e} best {a.max():.3e}; "
          f"B median {np.median(b):.3e} best {b.max():.3e}; median of B/A over {args.rounds} rounds: "
          f"{np.median(b / a):.3f}")
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()


if __name__ == "__main__":
    main()
