"""Accuracy of the mixed-precision path against float64 (results: docs/performance.md).

1. Field error of the hot path (``cpu._field_mixed``: float32 phases, polynomial
   cosine, float32 sums in each vector lane) and of the scalar kernel
   (``kernels.field_at_mixed``: float64 sums) against the float64 kernel, at points
   uniform in radius out to ``--radius`` L_c, with the reference point a random
   distance up to ``budget / k_max`` away, for several phase budgets.
2. Trajectories: mixed against float64 from the same start, and float64 against
   float64 with the initial velocity perturbed by 1e-12 (what any rounding change
   does to a chaotic orbit), median and max over particles against steps.
3. |v| after many steps.

    python validation/mixed_accuracy.py [--points 400000] [--out mixed_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from crsky.backends import cpu_mixed, get_backend
from crsky.config import TurbulenceConfig
from crsky.turbulence import make_modes

LANES = cpu_mixed.LANES


def field_errors(turbulence, n_points, radius, budgets, seed=0):
    n_points -= n_points % LANES  # whole groups of lanes
    modes = make_modes(turbulence, seed=seed, realisation=0)
    kmax = np.linalg.norm(modes[0:3], axis=0).max()
    rms = math.sqrt(turbulence.sigma2)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_points, 3))
    x *= (radius * rng.uniform(0, 1, n_points) / np.linalg.norm(x, axis=1))[:, None]
    exact = get_backend("cpu").field_at_points(modes, x)
    rows = []
    for budget in budgets:
        off = rng.normal(size=(n_points, 3))
        off *= (budget / kmax * rng.uniform(0, 1, n_points) / np.linalg.norm(off, axis=1))[:, None]
        hot = cpu_mixed.field_as_traced(modes, x, x - off)  # one reference point for all blocks
        err = np.linalg.norm(hot - exact, axis=1) / rms
        row = {"budget_rad": budget, "hot": {"max": float(err.max()), "rms": float(np.sqrt(np.mean(err**2))),
                                             "q0.9999": float(np.quantile(err, 0.9999))}}
        print(f"  budget {budget:7.2f} rad: hot path max {row['hot']['max']:.2e} rms {row['hot']['rms']:.2e}"
              "  (x rms field)", flush=True)
        rows.append(row)
    return rows


def trajectories(n_particles=256, seed=0):
    modes = make_modes(TurbulenceConfig(n_modes=256), seed=seed, realisation=0)
    rng = np.random.default_rng(seed)
    v0 = rng.normal(size=(n_particles, 3))
    v0 /= np.linalg.norm(v0, axis=1)[:, None]
    x0 = np.zeros_like(v0)
    steps = np.array([10, 30, 100, 300, 1000, 3000, 10000])
    f64, mixed = get_backend("cpu"), get_backend("cpu", "mixed")
    xd, vd = f64.trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
    xm, vm = mixed.trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
    vp = v0 + 1e-12 * rng.normal(size=v0.shape)
    vp /= np.linalg.norm(vp, axis=1)[:, None]
    xp, _ = f64.trace(x0, vp, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
    rows = []
    for j, s in enumerate(steps):
        dm = np.linalg.norm(xm[j] - xd[j], axis=1)
        dp = np.linalg.norm(xp[j] - xd[j], axis=1)
        spread = np.sqrt(np.mean(np.sum(xd[j] ** 2, axis=1)))
        rows.append({"steps": int(s), "t_omega": float(s * 0.05), "rms_distance": float(spread),
                     "mixed_median": float(np.median(dm)), "mixed_max": float(dm.max()),
                     "perturbed_median": float(np.median(dp)), "perturbed_max": float(dp.max())})
        print(f"  {s:6d} steps (t Omega {s * 0.05:6.1f}, rms |x| {spread:7.3f}): mixed - float64 median "
              f"{np.median(dm):.2e} max {dm.max():.2e}; float64 with dv0 = 1e-12: median {np.median(dp):.2e} "
              f"max {dp.max():.2e}", flush=True)
    return rows


def speed_drift(n_steps=10**6):
    modes = make_modes(TurbulenceConfig(n_modes=64), seed=1, realisation=0)
    v0 = np.array([[0.6, 0.0, 0.8], [-0.48, 0.6, 0.64], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    _, v = get_backend("cpu", "mixed").trace(np.zeros((4, 3)), v0, modes, sign=1.0, dt=0.05, rl=0.1,
                                             snapshot_steps=[n_steps])
    drift = float(np.abs(np.linalg.norm(v[-1], axis=1) - 1).max())
    print(f"  | |v| - 1 | after {n_steps} mixed steps: {drift:.1e}")
    return drift


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=400_000)
    ap.add_argument("--radius", type=float, default=1000.0)
    ap.add_argument("--out", default="mixed_accuracy.json")
    args = ap.parse_args()
    budgets = [0.0, math.pi, 4 * math.pi, cpu_mixed.PHASE_BUDGET, 16 * math.pi, 32 * math.pi, 64 * math.pi]
    out = {"points": args.points, "radius": args.radius, "phase_budget_default": cpu_mixed.PHASE_BUDGET}
    for name, turb in (("isotropic256", TurbulenceConfig(n_modes=256)),
                       ("isotropic1024", TurbulenceConfig(n_modes=1024)),
                       ("composite256", TurbulenceConfig(geometry="composite", n_modes=256))):
        print(f"field error, {name}, |x| <= {args.radius} L_c, {args.points} points:")
        out[f"field_{name}"] = field_errors(turb, args.points if name == "isotropic256" else args.points // 4,
                                            args.radius, budgets if name == "isotropic256" else [cpu_mixed.PHASE_BUDGET])
    print("trajectories (256 modes, r_L = 0.1, dt = 0.05, from the origin):")
    out["trajectories"] = trajectories()
    out["speed_drift_1e6_steps"] = speed_drift()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
