"""Gyrotropy and the observatory's view of analysed runs: the tables of docs/observatories.md.

For each run directory (analysed with the current crsky), prints and stores (``--out``,
JSON):

- the angle between the local field ``B(0)`` and ``B0`` over the realisations;
- per gradient and axis (``B0``, local ``B(0)``) the gyrotropic fraction
  ``<C_l^gyro> / <C_l>`` of ``l = 1..4`` with its standard error at the snapshots nearest
  ``--times`` (``analysis.nc``), and the noise-subtracted fraction
  ``(<C_l^gyro> - N / (2l+1)) / (<C_l> - N)``: the shot noise is white, so its share in
  the ``m = 0`` mode about any axis is ``1 / (2l+1)`` (no error is given for it);
- per gradient (along ``B0``, and perpendicular to it towards the Galactic centre) and
  band the ratio of the observatory's estimate to the full-sky ``C_hat_l`` at the last
  snapshot (paired errors, ``crsky.analysis.observatory``), ``B0`` at the centre of the
  IBEX ribbon (galactic ``l, b = 34.7, 56.6`` deg), ``m = 0`` removed.

Nothing is written into the run directories.

    python validation/observatory_table.py rigidity_scan/rl_0.1 rigidity_scan/rl_0.003 \\
        --out observatory_table.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from crsky.analysis.dataset import load_current_analysis
from crsky.analysis.observatory import observatory_dataset, observe_run

#: Centre of the IBEX ribbon, galactic (l, b) in degrees (Funsten et al. 2013, ApJ 776, 30).
B0_GALACTIC = (34.7, 56.6)
ELLS = (1, 2, 3, 4)


def perpendicular_towards_galactic_centre(b0_lb) -> tuple[float, float, float]:
    """Unit vector (galactic cartesian) perpendicular to ``B0``, towards the Galactic centre."""
    lon, lat = np.radians(b0_lb)
    b = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    gc = np.array([1.0, 0.0, 0.0])
    g = gc - (gc @ b) * b
    return tuple(float(v) for v in g / np.linalg.norm(g))


def gyrotropy_rows(ds, times) -> list[dict]:
    rows = []
    t_all = ds["t_omega"].values
    for t in times:
        k = int(np.argmin(np.abs(np.log(t_all / t))))
        for gradient in ds["gradient"].values:
            noise = float(ds["noise"].sel(gradient=gradient).values[k])
            cl = ds["cl"].sel(gradient=gradient).values[k]
            for axis in ds["axis"].values:
                sel = dict(axis=axis, gradient=gradient)
                frac = ds["gyro_fraction"].sel(**sel).values[k]
                err = ds["gyro_fraction_err"].sel(**sel).values[k]
                gyro = ds["cl_gyro"].sel(**sel).values[k]
                rows.append({
                    "t_omega": float(t_all[k]), "gradient": str(gradient), "axis": str(axis),
                    "fraction": {l: float(frac[l]) for l in ELLS},
                    "fraction_err": {l: float(err[l]) for l in ELLS},
                    "fraction_noise_subtracted": {
                        l: float((gyro[l] - noise / (2 * l + 1)) / (cl[l] - noise)) for l in ELLS},
                    "cl_hat_over_noise": {l: float((cl[l] - noise) / noise) for l in ELLS},
                })
    return rows


def observatory_rows(run_dir, ds, bands) -> list[dict]:
    rows = []
    for name, gradient in (("along B0", B0_GALACTIC), ("perpendicular", perpendicular_towards_galactic_centre(
            B0_GALACTIC))):
        for band in bands:
            obs = observe_run(run_dir, B0_GALACTIC, gradient, band, ds=ds)
            d = observatory_dataset(obs, ds, b0=B0_GALACTIC, gradient=gradient, frame="galactic")
            rows.append({"gradient": name, "band": band, "f_sky": float(d.attrs["f_sky"]),
                         "ratio": {l: float(d["ratio"].values[l]) for l in range(1, 6)},
                         "ratio_err": {l: float(d["ratio_err"].values[l]) for l in range(1, 6)}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="analysed run directories")
    ap.add_argument("--times", type=float, nargs="+", default=[10.0, 1e9],
                    help="t Omega of the gyrotropy rows (nearest snapshot; 1e9: the last)")
    ap.add_argument("--bands", nargs="+", default=["icecube", "hawc"])
    ap.add_argument("--out", default="observatory_table.json")
    args = ap.parse_args()
    result = {}
    for run in args.runs:
        ds = load_current_analysis(run)
        b = ds["local_field_direction"].values
        angle = np.degrees(np.arccos(np.clip(np.abs(b[:, 2]), -1, 1)))
        entry = {"rl": float(ds.attrs["config_particles_rl"]),
                 "angle_local_B0_deg": {"median": float(np.median(angle)), "min": float(angle.min()),
                                        "max": float(angle.max())},
                 "gyrotropy": gyrotropy_rows(ds, args.times),
                 "observatory": observatory_rows(run, ds, args.bands)}
        result[str(run)] = entry
        print(f"== {run}: angle(B(0), B0) median {entry['angle_local_B0_deg']['median']:.0f} deg "
              f"({entry['angle_local_B0_deg']['min']:.0f}-{entry['angle_local_B0_deg']['max']:.0f})")
        for r in entry["gyrotropy"]:
            cells = " | ".join(f"{r['fraction'][l]:.2f} +- {r['fraction_err'][l]:.2f} "
                               f"({r['fraction_noise_subtracted'][l]:.2f})" for l in ELLS)
            print(f"| {r['t_omega']:.3g} | {r['gradient']} | {r['axis']} | {cells} |")
        for r in entry["observatory"]:
            cells = " | ".join(f"{r['ratio'][l]:.2f} +- {r['ratio_err'][l]:.2f}" for l in range(1, 6))
            print(f"| {r['gradient']} | {r['band']} | {r['f_sky']:.2f} | {cells} |")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
