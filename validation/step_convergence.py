"""Step-size convergence study of K_par and K_perp (results: docs/validation.md, section 3).

K_par and K_perp at t Omega = 1000 against Omega dt for r_L = 0.1 L_c, sigma2 = 1,
the paper's spectrum with 256 modes. The same realisations and particles are used at
every step size, so the *paired* change of K between two step sizes is measured far
more precisely than K itself; it is compared with the statistical error of K.

    python validation/step_convergence.py [--nside 2] [--realisations 32] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from crsky.config import resolve_config
from crsky.simulate import backtrack, pixel_directions, snapshot_schedule
from crsky.turbulence import make_modes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=2)
    ap.add_argument("--realisations", type=int, default=32)
    ap.add_argument("--t-max", type=float, default=1000.0)
    ap.add_argument("--dts", type=float, nargs="+", default=[0.4, 0.2, 0.1, 0.05, 0.025, 0.0125])
    ap.add_argument("--precision", choices=["float64", "mixed"], default="float64",
                    help="field evaluation (mixed: ~30x faster, same statistics, docs/performance.md)")
    ap.add_argument("--out", default="convergence.json")
    ap.add_argument("--raw", default=None, help="also save per-realisation K (npz) for later fits")
    args = ap.parse_args()

    cfg = resolve_config({"turbulence": {"n_modes": 256}, "particles": {"nside": args.nside, "rl": 0.1}})
    dirs = pixel_directions(args.nside)
    rl = cfg.particles.rl
    times = [100.0, 300.0, args.t_max]
    # per dt: per realisation K_par, K_perp at each time
    results = {}
    for dt in args.dts:
        steps = np.rint(np.array(times) / dt).astype(np.int64)
        k_par = np.empty((args.realisations, len(times)))
        k_perp = np.empty_like(k_par)
        start = time.perf_counter()
        for j in range(args.realisations):
            modes = make_modes(cfg.turbulence, 0, j)
            x, _ = backtrack(dirs, modes, rl, dt, steps, precision=args.precision)
            t_code = steps * dt * rl  # T in L_c / c
            k_par[j] = (x[:, :, 2] ** 2).mean(axis=1) / (2 * t_code)
            k_perp[j] = 0.5 * (x[:, :, 0] ** 2 + x[:, :, 1] ** 2).mean(axis=1) / (2 * t_code)
        seconds = time.perf_counter() - start
        results[dt] = (k_par, k_perp, seconds)
        print(f"dt={dt:<7} K_par(1000)={k_par[:, -1].mean():.4f}+-{k_par[:, -1].std(ddof=1)/np.sqrt(args.realisations):.4f} "
              f"K_perp(1000)={k_perp[:, -1].mean():.5f}+-{k_perp[:, -1].std(ddof=1)/np.sqrt(args.realisations):.5f} "
              f"({seconds:.0f} s)", flush=True)

    ref = min(args.dts)
    n = args.realisations
    table = []
    for dt in sorted(args.dts, reverse=True):
        k_par, k_perp, seconds = results[dt]
        row = {"dt": dt, "seconds": seconds, "t_omega": times}
        for name, k, kref in (("K_par", k_par, results[ref][0]), ("K_perp", k_perp, results[ref][1])):
            row[name] = k.mean(axis=0).tolist()
            row[name + "_err"] = (k.std(axis=0, ddof=1) / np.sqrt(n)).tolist()
            d = k - kref
            row[name + "_minus_ref"] = d.mean(axis=0).tolist()
            row[name + "_minus_ref_err"] = (d.std(axis=0, ddof=1) / np.sqrt(n)).tolist()
            half = dt / 2
            if half in results:
                dh = k - (results[half][0] if name == "K_par" else results[half][1])
                row[name + "_halving_change"] = dh.mean(axis=0).tolist()
                row[name + "_halving_change_err"] = (dh.std(axis=0, ddof=1) / np.sqrt(n)).tolist()
        table.append(row)
    meta = {"nside": args.nside, "realisations": n, "rl": rl, "sigma2": 1.0, "n_modes": 256, "precision": args.precision,
            "reference_dt": ref, "rows": table}
    if len(args.dts) >= 3:
        meta["dt2_fit"] = _dt2_fit(results, sorted(args.dts), times)
    with open(args.out, "w") as fh:
        json.dump(meta, fh, indent=1)
    if args.raw:
        np.savez(args.raw, dts=np.array(sorted(args.dts)), times=np.array(times),
                 k_par=np.array([results[dt][0] for dt in sorted(args.dts)]),
                 k_perp=np.array([results[dt][1] for dt in sorted(args.dts)]))
    print(f"\n{'dt':>8} {'K_par':>16} {'dK_par(halving)':>22} {'K_perp':>18} {'dK_perp(halving)':>22}")
    for row in table:
        hp_ = row.get("K_par_halving_change", [np.nan] * 3)[-1]
        hpe = row.get("K_par_halving_change_err", [np.nan] * 3)[-1]
        hq = row.get("K_perp_halving_change", [np.nan] * 3)[-1]
        hqe = row.get("K_perp_halving_change_err", [np.nan] * 3)[-1]
        print(f"{row['dt']:>8} {row['K_par'][-1]:>9.4f}+-{row['K_par_err'][-1]:.4f} {hp_:>+12.5f}+-{hpe:.5f} "
              f"{row['K_perp'][-1]:>10.5f}+-{row['K_perp_err'][-1]:.5f} {hq:>+12.6f}+-{hqe:.6f}")
    for name, fit in meta.get("dt2_fit", {}).items():
        print(f"{name}: K(dt) = K0 + a dt^2 over dt = {sorted(args.dts)}: K0 = {fit['K0'][-1]:.5f}+-{fit['K0_err'][-1]:.5f}, "
              f"a = {fit['a'][-1]:+.5f}+-{fit['a_err'][-1]:.5f}; halving change at each dt: "
              + ", ".join(f"{dt}: {c:+.3%}+-{e:.3%}" for dt, c, e in zip(fit["dt"], fit["halving_change_rel"], fit["halving_change_rel_err"])))


def _dt2_fit(results, dts, times):
    """Fit ``K(dt) = K0 + a dt^2`` (a second-order scheme's leading error) per realisation
    (least squares in ``dt^2``), then average over realisations: the paired scatter of
    the per-realisation ``a`` gives its error. Returns, per coefficient, ``K0``, ``a``
    and their errors at each time, and the predicted relative change of ``K`` at the
    last time when each ``dt`` is halved, ``0.75 a dt^2 / K0``."""
    x = np.array(dts) ** 2
    design = np.vstack([np.ones_like(x), x]).T
    pinv = np.linalg.pinv(design)  # (2, n_dt)
    out = {}
    for idx, name in ((0, "K_par"), (1, "K_perp")):
        k = np.array([results[dt][idx] for dt in dts])  # (n_dt, R, n_times)
        coef = np.einsum("cd,drt->crt", pinv, k)  # (2, R, n_times): per realisation
        n = coef.shape[1]
        mean = coef.mean(axis=1)
        err = coef.std(axis=1, ddof=1) / np.sqrt(n)
        change = 0.75 * mean[1, -1] * x / mean[0, -1]
        change_err = 0.75 * err[1, -1] * x / mean[0, -1]
        out[name] = {"K0": mean[0].tolist(), "K0_err": err[0].tolist(), "a": mean[1].tolist(), "a_err": err[1].tolist(),
                     "dt": list(dts), "halving_change_rel": change.tolist(), "halving_change_rel_err": change_err.tolist()}
    return out


if __name__ == "__main__":
    main()
