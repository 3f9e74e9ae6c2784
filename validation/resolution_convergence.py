"""Convergence of K and the C_l shape in the resolution policy's two parameters
(docs/design.md, Resolution policy).

With ``lambda_min = "auto"`` and ``n_modes = "auto"`` the spectrum is cut at
``lambda_min = 2 pi r_L / resonance_factor`` and sampled with ``modes_per_decade``
modes per decade. For each rigidity ``--rls`` this runs the real pipeline (``crsky
run`` and ``crsky analyze`` as library calls, one run directory per setting under
``--work``) at the defaults and with each parameter halved and doubled (``--grid
cross``, 5 settings per rigidity; ``--grid full``, all 9), and reports per setting
at the last snapshot:

- ``K_par``, ``K_perp`` (``L_c c``) with their standard errors over realisations;
- ``C_hat_2 / C_hat_1`` and ``C_hat_3 / C_hat_1`` (``C_hat_l = <C_l> - N``, eq. 3.1
  noise) of each gradient, with an error from the standard errors of ``<C_1>`` and
  ``<C_l>`` treated as independent (the noise is exact; their correlation is ignored);
- the BGK exponent of the relative part, ``p_fit_relative`` (the whole shape
  ``l = 2 .. l_fit`` in one number; error: half its ``delta chi^2 = 1`` interval);
- the difference from the default setting in units of the combined error (the runs
  of different settings have different fields, so their errors add in quadrature).

The policy is converged at the defaults if halving and doubling each parameter moves
nothing by more than its combined error allows (``|z|`` of order 1, none far above
2). Writes JSON (``--out``) and prints a table.

    python validation/resolution_convergence.py --rls 0.1 0.03 --nside 4 --realisations 32 \\
        --t-max 300 --out resolution_convergence.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from crsky.analysis import analyze
from crsky.config import DEFAULT_MODES_PER_DECADE, DEFAULT_RESONANCE_FACTOR, estimate_cost, resolve_config
from crsky.ensemble import run_ensemble


def settings(grid: str) -> list[tuple[float, float]]:
    """(resonance_factor, modes_per_decade) pairs: the default first."""
    factors = [DEFAULT_RESONANCE_FACTOR / 2, DEFAULT_RESONANCE_FACTOR, DEFAULT_RESONANCE_FACTOR * 2]
    densities = [DEFAULT_MODES_PER_DECADE / 2, DEFAULT_MODES_PER_DECADE, DEFAULT_MODES_PER_DECADE * 2]
    default = (DEFAULT_RESONANCE_FACTOR, DEFAULT_MODES_PER_DECADE)
    if grid == "full":
        pairs = [(f, m) for f in factors for m in densities]
    else:
        pairs = [(f, DEFAULT_MODES_PER_DECADE) for f in factors] + [(DEFAULT_RESONANCE_FACTOR, m) for m in densities]
    return [default] + sorted({p for p in pairs if p != default})


def measure(summary: dict) -> dict:
    """K and C_hat_2 / C_hat_1 per gradient at the last snapshot of a summary."""
    out = {"t_omega": summary["t_omega"][-1]}
    for name in ("K_par", "K_perp"):
        out[name], out[name + "_err"] = summary[name][-1], summary[name + "_err"][-1]
    out["ratio_2_1"], out["ratio_3_1"], out["p_relative"] = {}, {}, {}
    for gradient, g in summary["gradients"].items():
        cl, err, noise = g["cl"][-1], g["cl_err"][-1], g["noise"][-1]
        c1 = cl[1] - noise
        for ell, key in ((2, "ratio_2_1"), (3, "ratio_3_1")):
            cl_hat = cl[ell] - noise
            ratio = cl_hat / c1
            ratio_err = abs(ratio) * math.hypot(err[ell] / cl_hat, err[1] / c1)
            out[key][gradient] = {"value": ratio, "err": ratio_err, "p_fit": g["p_fit"], "p_err": g["p_err"]}
        fit = g["bgk_fit_relative"]
        half_width = None if fit["p"] is None else 0.5 * (fit["p_hi"] - fit["p_lo"])
        out["p_relative"][gradient] = {"value": fit["p"], "err": half_width, "clipped_at": fit["clipped_at"],
                                       "lmax": fit["lmax"]}
    return out


def z(a: float, ea: float, b: float, eb: float) -> float:
    return (a - b) / math.hypot(ea, eb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rls", type=float, nargs="+", default=[0.1, 0.03], help="r_L / L_c values")
    ap.add_argument("--nside", type=int, default=4)
    ap.add_argument("--realisations", type=int, default=32)
    ap.add_argument("--t-max", type=float, default=300.0, help="t Omega of the last snapshot")
    ap.add_argument("--n-snapshots", type=int, default=12)
    ap.add_argument("--grid", choices=["cross", "full"], default="cross")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="resolution_runs", help="directory of the run directories (resumable)")
    ap.add_argument("--out", default="resolution_convergence.json")
    args = ap.parse_args()

    rows = []
    for rl in args.rls:
        reference = None
        for factor, density in settings(args.grid):
            cfg = resolve_config({
                "turbulence": {"lambda_min": "auto", "n_modes": "auto", "resonance_factor": factor,
                               "modes_per_decade": density},
                "particles": {"rl": rl, "nside": args.nside},
                "integration": {"t_max": args.t_max, "n_snapshots": args.n_snapshots, "precision": "mixed"},
                "ensemble": {"realisations": args.realisations, "seed": args.seed},
            })
            run_dir = Path(args.work) / f"rl{rl:g}_f{factor:.4g}_m{density:g}"
            start = time.perf_counter()
            run_ensemble(cfg, run_dir, backend="cpu", progress=False)
            _, summary = analyze(run_dir, progress=False)
            seconds = time.perf_counter() - start
            row = {"rl": rl, "resonance_factor": factor, "modes_per_decade": density,
                   "lambda_min": cfg.turbulence.lambda_min, "n_modes": cfg.turbulence.n_modes,
                   "realisations": args.realisations, "nside": args.nside, "seconds": seconds,
                   "mode_evaluations": estimate_cost(cfg, throughput=1.0).mode_evaluations, **measure(summary)}
            if reference is None:
                reference = row
            else:
                row["z_vs_default"] = {
                    name: z(row[name], row[name + "_err"], reference[name], reference[name + "_err"])
                    for name in ("K_par", "K_perp")}
                for key in ("ratio_2_1", "ratio_3_1", "p_relative"):
                    for gradient, r in row[key].items():
                        ref = reference[key][gradient]
                        if r["value"] is not None and ref["value"] is not None:
                            row["z_vs_default"][f"{key}[{gradient}]"] = z(r["value"], r["err"], ref["value"],
                                                                          ref["err"])
            rows.append(row)
            ratios = "  ".join(f"C{k[6]}/C1[{g}] = {r['value']:.3f} +- {r['err']:.3f}"
                               for k in ("ratio_2_1", "ratio_3_1") for g, r in row[k].items())
            ratios += "  " + "  ".join(f"p_rel[{g}] = {r['value']:.3f} +- {r['err']:.3f}"
                                       for g, r in row["p_relative"].items() if r["value"] is not None)
            zs = "" if row is reference else "  z: " + " ".join(f"{v:+.2f}" for v in row["z_vs_default"].values())
            print(f"rl={rl:<6g} factor={factor:6.2f} per decade={density:5g} ({cfg.turbulence.n_modes} modes, "
                  f"lambda_min={cfg.turbulence.lambda_min:.3g}): K_par = {row['K_par']:.4f} +- {row['K_par_err']:.4f}  "
                  f"K_perp = {row['K_perp']:.5f} +- {row['K_perp_err']:.5f}  {ratios}{zs}  ({seconds:.0f} s)",
                  flush=True)
    Path(args.out).write_text(json.dumps({"t_max": args.t_max, "grid": args.grid, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
