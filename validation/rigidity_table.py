"""The tables of docs/validation.md, "Rigidity dependence", from a scan directory.

    python validation/rigidity_table.py SCAN_DIR [--times FILE]

Reads SCAN_DIR/scan.nc (written by `crsky scan`) and prints, as Markdown, per rigidity:
the resolution, the wall time, K_par and K_perp at the last snapshot with their
standard errors, K_par against the quasi-linear r_L^(1/3) scaling from the highest
rigidity (the ratio and the local slope between neighbouring rigidities, with errors
from the two standard errors), and per gradient the steady-state onset, C_hat_2/C_hat_1,
C_hat_3/C_hat_1, the coherent share of the dipole and the BGK exponents with their
intervals. --times: a file of lines `rl=<rl> rc=<rc> wall_s=<s>` (wall times measured
outside crsky) used in place of the manifests' session times.
"""

import argparse
import math
import re

import numpy as np
import xarray as xr


def _pm(v, e, digits=3):
    return f"{v:.{digits}g} ± {e:.2g}" if math.isfinite(v) else "–"


def _p(v, lo, hi):
    return f"{v:.2f} ({lo:.2f} .. {hi:.2f})" if math.isfinite(v) else "no fit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan_dir")
    parser.add_argument("--times", help="file with lines rl=<rl> rc=<rc> wall_s=<s>")
    args = parser.parse_args()
    ds = xr.load_dataset(f"{args.scan_dir}/scan.nc")
    rl = ds["rl"].values
    wall = dict(zip(rl, ds["wall_seconds"].values))
    if args.times:
        for line in open(args.times):
            m = re.match(r"rl=(\S+) rc=0 wall_s=(\d+)", line)
            if m:
                wall[float(m.group(1))] = float(m.group(2))
    top = int(np.argmax(rl))
    kp, kpe = ds["K_par"].values, ds["K_par_err"].values
    print("| r_L / L_c | n_modes | lambda_min (L_c) | t_max (t Omega) | T_max (L_c/c) | mode evaluations | wall time (s) "
          "| K_par (L_c c) | K_perp (L_c c) | K_par / K_par(top) | (r_L / r_top)^(1/3) | local slope |")
    print("|" + "---|" * 12)
    order = np.argsort(rl)[::-1]
    prev = None
    for k in order:
        ratio = kp[k] / kp[top]
        ratio_err = ratio * math.hypot(kpe[k] / kp[k], kpe[top] / kp[top]) if k != top else 0.0
        slope = "–"
        if prev is not None:
            s = math.log(kp[prev] / kp[k]) / math.log(rl[prev] / rl[k])
            se = math.hypot(kpe[prev] / kp[prev], kpe[k] / kp[k]) / abs(math.log(rl[prev] / rl[k]))
            slope = f"{s:.2f} ± {se:.2f}"
        print(f"| {rl[k]:g} | {int(ds['n_modes'].values[k])} | {float(ds['lambda_min'].values[k]):.3g} | "
              f"{float(ds['t_max'].values[k]):g} | {float(ds['T_max'].values[k]):.3g} | "
              f"{float(ds['mode_evaluations'].values[k]):.3g} | {wall[rl[k]]:.0f} | {_pm(kp[k], kpe[k])} | "
              f"{_pm(float(ds['K_perp'].values[k]), float(ds['K_perp_err'].values[k]))} | "
              f"{_pm(ratio, ratio_err)} | {(rl[k] / rl[top]) ** (1 / 3):.3f} | {slope} |")
        prev = k
    for name in ds["gradient"].values:
        d = ds.sel(gradient=name)
        print(f"\n{name} gradient:\n")
        print("| r_L / L_c | steady | onset (t Omega) | onset (T, L_c/c) | C_hat_2/C_hat_1 | C_hat_3/C_hat_1 "
              "| coherent share of <C_1> | dipole amplitude | p_fit | p_fit_relative |")
        print("|" + "---|" * 10)
        for k in order:
            onset = float(d["steady_onset"].values[k])
            onset_T = float(d["steady_onset_T"].values[k])
            r, e = d["shape_ratio"].values[k], d["shape_ratio_err"].values[k]
            print(f"| {rl[k]:g} | {'yes' if int(d['steady_state'].values[k]) else 'no'} | "
                  f"{f'{onset:.3g}' if math.isfinite(onset) else 'never'} | "
                  f"{f'{onset_T:.3g}' if math.isfinite(onset_T) else '–'} | {_pm(r[2], e[2])} | {_pm(r[3], e[3])} | "
                  f"{float(d['dipole_coherent_share'].values[k]):.2f} | "
                  f"{_pm(float(d['dipole_amplitude'].values[k]), float(d['dipole_amplitude_err'].values[k]))} | "
                  f"{_p(*(float(d[v].values[k]) for v in ('p_fit', 'p_lo', 'p_hi')))} | "
                  f"{_p(*(float(d[v].values[k]) for v in ('p_fit_relative', 'p_lo_relative', 'p_hi_relative')))} |")


if __name__ == "__main__":
    main()
