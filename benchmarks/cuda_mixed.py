"""The CUDA backend's mixed path on a real GPU: throughput, launch shape
and accuracy. Needs a GPU; ``--smoke`` runs tiny sizes (also in numba's simulator,
``NUMBA_ENABLE_CUDASIM=1``, to check the script itself; its timings mean nothing).

1. Throughput of ``precision="mixed"`` with one and with two particles per thread
   (``crsky.backends.cuda.MIXED_PAIRS``) and of ``float64``, at 64 / 256 / 1024
   modes and 2^17 - 2^20 particles from ~10 L_c out (as ``crsky bench``): the kernel
   alone (CUDA events) and the wall time with the host-device copies, best of
   ``--repeats``; with the registers per thread, the resident blocks on the device
   (driver occupancy) and the waves of resident blocks a launch needs (a last,
   partly filled wave costs a whole wave's time: all particles take equally long).
2. Accuracy on the GPU (FMA contraction, the GPU's own float32 and float64 units):
   short trajectories of the mixed path from |x| <= 500 L_c against the CPU float64
   path with the bound of ``tests/test_cuda.py`` (|dv| <= m dtau 1e-6 after m steps),
   |v| - 1, and one against two particles per thread (expected bitwise equal).

    python benchmarks/cuda_mixed.py [--out cuda_mixed.json] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from numba import cuda

from crsky.backends import get_backend, resolve_backend
from crsky.backends import cuda as cb
from crsky.bench import device_name, snapshot_steps, start_state
from crsky.config import TurbulenceConfig
from crsky.turbulence import make_modes

DTAU, RL = 0.05, 0.1


def launch_shape(precision: str, n_modes: int, n_particles: int) -> dict:
    """Registers per thread, resident blocks and waves of the kernel just run."""
    kernel = cb.trace_kernel(precision, n_modes)
    info = {}
    try:
        overload = next(iter(kernel.overloads.values()))
        info["regs_per_thread"] = overload.regs_per_thread
        resident = overload.max_cooperative_grid_blocks(cb.THREADS_PER_BLOCK)
        blocks = math.ceil(n_particles / cb.THREADS_PER_BLOCK)
        info.update(resident_blocks=resident, blocks=blocks, waves=blocks / resident)
    except Exception as exc:  # the simulator has no occupancy API
        info["launch_info_error"] = f"{type(exc).__name__}: {exc}"
    return info


def throughput(mode_counts, particle_counts, work, repeats) -> list[dict]:
    rows = []
    for n_modes in mode_counts:
        modes = make_modes(TurbulenceConfig(n_modes=n_modes), seed=0, realisation=0)
        for n_particles in particle_counts:
            pos, vel = start_state(n_particles)
            for precision in ("mixed", "float64"):
                tracer = get_backend("cuda", precision)
                budget = work[precision]
                n_steps = max(2, int(budget / (n_modes * n_particles)))
                steps = snapshot_steps(n_steps)
                start = time.perf_counter()
                tracer.trace(pos[:2], vel[:2], modes, sign=-1.0, dt=DTAU, rl=RL, snapshot_steps=np.array([1]))
                first = time.perf_counter() - start
                best_wall, best_kernel = math.inf, math.inf
                for _ in range(repeats):
                    start = time.perf_counter()
                    tracer.trace(pos, vel, modes, sign=-1.0, dt=DTAU, rl=RL, snapshot_steps=steps)
                    best_wall = min(best_wall, time.perf_counter() - start)
                    if tracer.last_kernel_seconds:
                        best_kernel = min(best_kernel, tracer.last_kernel_seconds)
                evals = n_particles * n_steps * n_modes
                row = {
                    "precision": precision, "n_modes": n_modes, "n_particles": n_particles,
                    "n_steps": n_steps, "first_call_s": first, "wall_s": best_wall,
                    "mode_evals_per_s_wall": evals / best_wall,
                    "kernel_s": best_kernel if best_kernel < math.inf else None,
                    "mode_evals_per_s_kernel": evals / best_kernel if best_kernel < math.inf else None,
                    **launch_shape(precision, n_modes, n_particles),
                }
                print(f"  {precision:7s} {n_modes:5d} modes {n_particles:8d} particles "
                      f"{n_steps:6d} steps: kernel {row['mode_evals_per_s_kernel'] or float('nan'):.3e}/s, "
                      f"wall {row['mode_evals_per_s_wall']:.3e}/s, waves {row.get('waves', float('nan')):.2f}, "
                      f"regs {row.get('regs_per_thread')}", flush=True)
                rows.append(row)
    return rows


def accuracy(n_particles: int, n_modes: int) -> dict:
    """GPU mixed against CPU float64 after 1, 10, 40 steps; |v| - 1."""
    rng = np.random.default_rng(11)
    steps = np.array([1, 10, 40])
    modes = make_modes(TurbulenceConfig(n_modes=n_modes), 5, 0)
    pos = rng.normal(size=(n_particles, 3))
    pos *= (500 * rng.uniform(0.2, 1, n_particles) / np.linalg.norm(pos, axis=1))[:, None]
    vel = rng.normal(size=(n_particles, 3))
    vel /= np.linalg.norm(vel, axis=1)[:, None]
    gp, gv = get_backend("cuda", "mixed").trace(pos, vel, modes, sign=-1.0, dt=DTAU, rl=RL, snapshot_steps=steps)
    cp, cv = get_backend("cpu").trace(pos, vel, modes, sign=-1.0, dt=DTAU, rl=RL, snapshot_steps=steps)
    m = steps.astype(float)
    out = {
        "n_particles": n_particles, "n_modes": n_modes, "steps": steps.tolist(),
        "dx_max": np.abs(gp - cp).max(axis=(1, 2)).tolist(),
        "dv_max": np.abs(gv - cv).max(axis=(1, 2)).tolist(),
        "dv_bound": (m * DTAU * 1e-6).tolist(),
        "dx_bound": (RL * DTAU**2 * 1e-6 * m * (m + 1) / 2).tolist(),
        "speed_err_max": float(np.abs(np.linalg.norm(gv, axis=-1) - 1).max()),
    }
    out["within_bounds"] = bool(np.all(np.array(out["dv_max"]) <= out["dv_bound"])
                                and np.all(np.array(out["dx_max"]) <= out["dx_bound"]))
    print(f"  accuracy: |dv| {out['dv_max']} (bound {out['dv_bound']}), |dx| {out['dx_max']}, "
          f"||v|-1| {out['speed_err_max']:.1e}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cuda_mixed.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, not the GPU")
    args = parser.parse_args()
    resolve_backend("cuda")  # a clear error without a GPU
    if args.smoke:
        mode_counts, particle_counts, work, repeats = (8,), (6,), {"mixed": 3000, "float64": 3000}, 1
        acc_particles, acc_modes = 5, 20
    else:
        mode_counts, particle_counts = (64, 256, 1024), (1 << 17, 1 << 18, 1 << 20)
        work, repeats = {"mixed": 1e12, "float64": 3e10}, args.repeats
        acc_particles, acc_modes = 1 << 16, 256
    result = {"device": device_name("cuda"), "cuda_version": None, "throughput": None, "accuracy": None}
    try:
        result["cuda_version"] = ".".join(map(str, cuda.runtime.get_version()))
    except Exception:  # the simulator
        pass
    print(f"device: {result['device']}", flush=True)
    result["accuracy"] = accuracy(acc_particles, acc_modes)
    result["throughput"] = throughput(mode_counts, particle_counts, work, repeats)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
