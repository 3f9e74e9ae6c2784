"""How the tracing cost scales with modes, particles and steps.

For each precision of the CPU backend, times ``cpu.trace`` (8 log-spaced snapshots,
``r_L = 0.1``, the default ``Omega dt``, particles starting ~10 L_c out) while varying one
of: the number of modes, the number of particles, the number of steps. The cases run
in ``--repeats`` interleaved rounds (every case once per round, so that a slow spell
of the shared host hits all cases alike) and each point is the best of its rounds;
the 1-minute load average is recorded next to it.
Fits ``seconds per particle-step = a + b * n_modes`` and reports the deviation of
``seconds / (particles * steps)`` from constant.

    python benchmarks/kernel_scaling.py [--precisions mixed float64] [--repeats 5]
                                        [--threads N] [--out scaling.json]
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


def prepare(precision, n_modes, n_particles, n_steps):
    modes = make_modes(TurbulenceConfig(n_modes=n_modes), seed=0, realisation=0)
    pos, vel = start_state(n_particles)
    get_backend("cpu", precision).trace(pos[:4], vel[:4], modes, sign=-1.0, dt=DEFAULT_DT, rl=0.1,
                                        snapshot_steps=np.array([1, 2]))
    return {"precision": precision, "n_modes": n_modes, "n_particles": n_particles, "n_steps": n_steps,
            "seconds": np.inf, "_args": (pos, vel, modes, snapshot_steps(n_steps))}


def run_once(row):
    pos, vel, modes, steps = row["_args"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    get_backend("cpu", row["precision"]).trace(pos, vel, modes, sign=-1.0, dt=DEFAULT_DT, rl=0.1,
                                               snapshot_steps=steps)
    wall = time.perf_counter() - t0
    if wall < row["seconds"]:
        n = row["n_particles"] * row["n_steps"]
        row.update(seconds=wall, mode_evals_per_s=n * row["n_modes"] / wall, particle_steps_per_s=n / wall,
                   load_before=load)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", nargs="+", default=["mixed", "float64"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the work of every case")
    ap.add_argument("--out", default="kernel_scaling.json")
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    out = {"machine": machine_info(), "threads": numba.get_num_threads(), "cases": {}}
    for precision in args.precisions:
        work = args.scale * (4e9 if precision == "mixed" else 1.5e8)  # mode evaluations per point
        rows = {"modes": [], "particles": [], "steps": []}
        for n_modes in (64, 128, 256, 512, 1024):
            rows["modes"].append(prepare(precision, n_modes, 3072, max(2, int(work / (3072 * n_modes)))))
        for n_particles in (768, 1536, 3072, 6144, 12288, 24576):
            rows["particles"].append(prepare(precision, 256, n_particles, max(2, int(work / (256 * n_particles)))))
        base = max(2, int(work / (256 * 3072)))
        for factor in (0.25, 0.5, 1, 2, 4):
            rows["steps"].append(prepare(precision, 256, 3072, max(2, int(base * factor))))
        for _ in range(args.repeats):
            for key in rows:
                for row in rows[key]:
                    run_once(row)
        for key in rows:
            for row in rows[key]:
                del row["_args"]
                print(f"  {precision:7s} modes {row['n_modes']:5d} particles {row['n_particles']:6d} steps "
                      f"{row['n_steps']:6d}: {row['seconds']:8.3f} s  {row['mode_evals_per_s']:.3e} mode evals/s"
                      f"  (load {row['load_before']:.1f})", flush=True)
        # cost per particle-step against modes: a + b * n_modes
        n = np.array([r["n_modes"] for r in rows["modes"]], float)
        t = np.array([r["seconds"] / (r["n_particles"] * r["n_steps"]) for r in rows["modes"]])
        b, a = np.polyfit(n, t, 1)
        fit = {"a_s": a, "b_s_per_mode": b, "max_rel_residual": float(np.max(np.abs(a + b * n - t) / t))}
        for key in ("particles", "steps"):
            per = np.array([r["seconds"] / (r["n_particles"] * r["n_steps"]) for r in rows[key]])
            fit[f"{key}_per_particle_step_spread"] = float(per.max() / per.min() - 1)
        print(f"{precision}: s/particle-step = {a:.3e} + {b:.3e} * n_modes (max rel. residual "
              f"{fit['max_rel_residual']:.1%}); spread of s/(particle step) over particle counts "
              f"{fit['particles_per_particle_step_spread']:.1%}, over step counts {fit['steps_per_particle_step_spread']:.1%}")
        out["cases"][precision] = {"rows": rows, "fit": fit}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
