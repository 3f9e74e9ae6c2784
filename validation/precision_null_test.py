"""Does the mixed-precision path change the physics?  A paired null test.

Three runs of the same configuration (same seed, so the same field realisations and
directions): a float64 reference, a candidate (e.g. ``precision = "mixed"``), and a
control that differs from the reference by a rounding-level change known not to
matter (e.g. ``dt * (1 + 1e-9)``).  Orbits are chaotic: any perturbation, 1e-16 or
1e-7, separates each orbit from its reference twin completely by ``t Omega ~ 150``
(docs/performance.md).  After that, candidate and control are both *independent
re-samplings of the trajectories in the same fields*, and the candidate passes if its
differences from the reference are distributed like the control's.

For each late snapshot (``t Omega >= --t-min``), each gradient and each multipole, the
paired difference ``C_l(run) - C_l(reference)`` is averaged over realisations and
divided by its standard error over realisations (the same for ``K_par``, ``K_perp``):
``z``.  Under the null both sets of ``z`` follow the same (roughly Student-t)
distribution.  Reported: rms and maximum ``|z|``, the fraction beyond 2 and 3, and a
two-sample Kolmogorov-Smirnov test between the candidate's and the control's ``|z|``
(the ``z`` of neighbouring snapshots are correlated, so its p-value is indicative).

Usage::

    python validation/precision_null_test.py REF_RUN CANDIDATE_RUN CONTROL_RUN [--t-min 150] [--time-rtol 1e-6]

Each of the three may be a comma-separated list of runs (re-samplings: the same
configuration with ``dt`` changed by a different ~1e-9): the realisation-wise mean
over the list is compared, which shrinks the re-sampling noise of a single run and so
tests for smaller biases. Use different runs in the reference and control lists.

The same test serves for a step size (candidate at ``Omega dt = 0.1``, reference and
control at 0.05: ``--time-rtol 1e-3``, since snapshot times snap to each run's steps).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import stats

from crsky.analysis import angular_power, diffusion_tensor, relative_intensity, resolve_gradients
from crsky.store import RunStore


def per_realisation(run_dir, t_min: float, indices=None):
    """``K`` (n_real, n_t, 3, 3) and ``C_l`` {gradient: (n_real, n_t, lmax+1)} at
    ``t Omega >= t_min``, with ``K`` of the reference form ``<x x>/2T`` per realisation
    and the map's ``-3 K p`` term using the realisation's own running ``K``."""
    store = RunStore.existing(run_dir)
    config = store.config()
    grads = resolve_gradients()
    Ks, cls = [], {name: [] for name in grads}
    for index in store.completed() if indices is None else indices:
        ds = store.read_realisation(index)
        t = ds["t_omega"].values
        keep = t >= t_min
        x = ds["x"].values[keep]
        p = ds["p"].values[keep]
        T = t[keep] * config.particles.rl
        K = diffusion_tensor(x, T)
        Ks.append(K)
        for name, g in grads.items():
            maps = relative_intensity(x, p, g, K)
            cls[name].append(np.array([angular_power(m) for m in maps]))
    return t[keep], np.array(Ks), {k: np.array(v) for k, v in cls.items()}


def pooled(run_dirs: str, t_min: float, indices, rtol: float):
    """:func:`per_realisation` averaged over the comma-separated ``run_dirs``, whose
    snapshot times must agree to ``rtol``."""
    parts = [per_realisation(r, t_min, indices) for r in run_dirs.split(",")]
    t = parts[0][0]
    if any(len(p[0]) != len(t) or not np.allclose(p[0], t, rtol=rtol) for p in parts):
        raise SystemExit(f"the runs {run_dirs} have different snapshot times")
    K = np.mean([p[1] for p in parts], axis=0)
    cls = {name: np.mean([p[2][name] for p in parts], axis=0) for name in parts[0][2]}
    return t, K, cls


def paired_z(a, b):
    d = a - b
    return d.mean(axis=0) / (d.std(axis=0, ddof=1) / np.sqrt(d.shape[0]))


def k_par_perp(K):
    """``K_par`` and ``K_perp`` (n_real, n_t) from the tensors ``K`` (n_real, n_t, 3, 3)."""
    return {"K_par": K[:, :, 2, 2], "K_perp": (K[:, :, 0, 0] + K[:, :, 1, 1]) / 2}


def z_values(ref, run):
    _, K0, C0 = ref
    _, K1, C1 = run
    k0, k1 = k_par_perp(K0), k_par_perp(K1)
    zK = np.concatenate([paired_z(k1[name], k0[name]).ravel() for name in k0])
    zC = np.concatenate([paired_z(C1[name], C0[name]).ravel() for name in C0])
    return zK, zC[np.isfinite(zC)]


def last_snapshot_shift(ref, run) -> dict:
    """Relative difference of ``K_par`` and ``K_perp`` at the last snapshot, run minus
    reference, realisation-paired, with its standard error."""
    out = {}
    k0, k1 = k_par_perp(ref[1]), k_par_perp(run[1])
    for name in k0:
        d = k1[name][:, -1] - k0[name][:, -1]
        scale = k0[name][:, -1].mean()
        out[name] = {"rel": float(d.mean() / scale), "rel_err": float(d.std(ddof=1) / np.sqrt(len(d)) / scale)}
    return out


def describe(z) -> dict:
    a = np.abs(z)
    return {"n": int(a.size), "rms": float(np.sqrt(np.mean(a**2))), "max": float(a.max()),
            "frac_gt_2": float(np.mean(a > 2)), "frac_gt_3": float(np.mean(a > 3)),
            "median": float(np.median(a))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="run directory, or several separated by commas")
    parser.add_argument("candidate", help="run directory, or several separated by commas")
    parser.add_argument("control", help="run directory, or several separated by commas")
    parser.add_argument("--t-min", type=float, default=150.0, help="earliest t Omega compared (default 150)")
    parser.add_argument("--time-rtol", type=float, default=1e-6,
                        help="relative tolerance of matching snapshot times (runs with different dt snap to "
                             "different step grids: 1e-3 pairs t = 194.45 with 194.5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # Pair by realisation index: only those complete in all three runs.
    runs = [r for arg in (args.reference, args.candidate, args.control) for r in arg.split(",")]
    common = sorted(set.intersection(*(set(RunStore.existing(r).completed()) for r in runs)))
    if len(common) < 3:
        raise SystemExit(f"only {len(common)} realisations are complete in all three runs")
    rtol = args.time_rtol
    ref = pooled(args.reference, args.t_min, common, rtol)
    cand = pooled(args.candidate, args.t_min, common, rtol)
    ctrl = pooled(args.control, args.t_min, common, rtol)
    if not (np.allclose(ref[0], cand[0], rtol=rtol) and np.allclose(ref[0], ctrl[0], rtol=rtol)):
        raise SystemExit("the three runs have different snapshot times")
    zK_c, zC_c = z_values(ref, cand)
    zK_0, zC_0 = z_values(ref, ctrl)
    out = {
        "t_omega": ref[0].tolist(),
        "realisations": int(ref[1].shape[0]),
        "candidate": {"K": describe(zK_c), "C_l": describe(zC_c)},
        "control": {"K": describe(zK_0), "C_l": describe(zC_0)},
        "last_snapshot": {"candidate": last_snapshot_shift(ref, cand), "control": last_snapshot_shift(ref, ctrl)},
        "ks_C_l_abs_z": {"statistic": float(stats.ks_2samp(np.abs(zC_c), np.abs(zC_0)).statistic),
                         "pvalue": float(stats.ks_2samp(np.abs(zC_c), np.abs(zC_0)).pvalue)},
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"runs: reference {len(args.reference.split(','))}, candidate {len(args.candidate.split(','))}, "
          f"control {len(args.control.split(','))}")
    print(f"snapshots t Omega = {', '.join(f'{t:g}' for t in out['t_omega'])}; {out['realisations']} realisations")
    print(f"{'':10s} {'':4s} {'n':>5s} {'median|z|':>9s} {'rms z':>7s} {'max|z|':>7s} {'>2':>6s} {'>3':>6s}")
    for who in ("candidate", "control"):
        for what in ("K", "C_l"):
            d = out[who][what]
            print(f"{who:10s} {what:4s} {d['n']:5d} {d['median']:9.2f} {d['rms']:7.2f} {d['max']:7.2f} "
                  f"{d['frac_gt_2']:6.3f} {d['frac_gt_3']:6.3f}")
    for who, shifts in out["last_snapshot"].items():
        print(f"{who} - reference at t Omega = {out['t_omega'][-1]:g}: " + ", ".join(
            f"{k} {100 * v['rel']:+.2f} +- {100 * v['rel_err']:.2f} %" for k, v in shifts.items()))
    ks = out["ks_C_l_abs_z"]
    print(f"KS test candidate vs control |z| of C_l: D = {ks['statistic']:.3f}, p = {ks['pvalue']:.3f}")


if __name__ == "__main__":
    main()
