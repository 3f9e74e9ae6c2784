"""The shape of the steady-state spectrum, with bootstrap errors (docs/validation.md, section 5).

For a run directory and its snapshots at ``t Omega >= --t-min``, per gradient:

- ``<C_1>`` and the fraction of it in the *coherent* part, the ``C_1`` of the expected
  map ``E[dI]`` (the standard-diffusion dipole), estimated without the
  realisation-scatter bias as ``(R C_1(<dI>) - <C_1>) / (R - 1)``, next to eq. 1.1's
  ``4 pi |K g|^2``;
- ``C_hat_l / C_hat_1`` for ``l = 2, 3, 4`` of the total spectrum (``<C_l> - N``, eq.
  3.1 noise) and of the *relative* part (``<C_l> - coherent - N``, the spectrum of
  ``dI - E[dI]``);
- the curvature ``c`` of ``ln C_hat_l = a + b ln l + c (ln l)^2`` fitted over
  ``l = 1`` to the fit range below (``c < 0``: concave in log-log);
- the BGK exponent ``p`` fitted to the total spectrum with a free normalisation
  (``l >= 2`` shape only, as ``crsky analyze`` does) and to the relative part with the
  normalisation fixed at ``l = 1`` (the dipole included).

Errors: bootstrap over realisations (resampled with replacement, everything recomputed,
the mean map included), so they hold shot noise, cosmic variance and the scatter of the
coherent dipole, which the per-multipole errors of ``crsky analyze`` treat as
independent. The fit range (``l = 2`` up to the last multipole with ``C_hat_l`` above
``FIT_NSIGMA`` noise standard deviations in the full sample, as in ``crsky analyze``) is kept
fixed across resamples.

Usage::

    python validation/spectrum_shape.py RUN_DIR [RUN_DIR ...] [--t-min 100] [--boot 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from crsky.analysis import FIT_NSIGMA, angular_power, fit_range, noise_error, relative_intensity, resolve_gradients
from crsky.bgk import fit_p
from crsky.store import RunStore


def load(run_dir, t_min):
    store = RunStore.existing(run_dir)
    rl = store.config().particles.rl
    xs, ps = [], []
    for index in store.completed():
        ds = store.read_realisation(index)
        t = ds["t_omega"].values
        keep = t >= t_min
        xs.append(ds["x"].values[keep])
        ps.append(ds["p"].values[keep])
    return t[keep], t[keep] * rl, np.array(xs), np.array(ps)


def _fit(ells, ratio, err, free_norm):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = fit_p(ells, ratio, err, lmin=2, lmax=int(ells[-1]), free_norm=free_norm)
        return f.p
    except Exception:  # noqa: BLE001 - a failed resample fit counts as missing
        return np.nan


def loglog_curvature(ells, cl_hat, err):
    """``c`` of the weighted least-squares fit ``ln C_hat_l = a + b ln l + c (ln l)^2``
    over ``ells`` (``l = 1`` included): ``c < 0`` is concave in log-log, ``c > 0``
    convex."""
    ok = cl_hat[ells] > 0
    if ok.sum() < 4:
        return np.nan
    u = np.log(ells[ok])
    w = cl_hat[ells][ok] / err[ells][ok]  # 1 / sigma of ln C_hat_l
    A = np.stack([np.ones_like(u), u, u * u], axis=1) * w[:, None]
    return float(np.linalg.lstsq(A, np.log(cl_hat[ells][ok]) * w, rcond=None)[0][2])


def spectrum_parts(maps, spectra, T, Kgg, npix, idx):
    """``<C_l>``, its standard error, the unbiased coherent part and the eq. 3.1 noise of
    one (re)sample ``idx`` of realisations."""
    R = len(idx)
    cl = spectra[idx].mean(axis=0)
    cl_err = spectra[idx].std(axis=0, ddof=1) / np.sqrt(R)
    coherent = (R * angular_power(maps[idx].mean(axis=0)) - cl) / (R - 1)
    noise = 4.0 * np.pi / npix * 2.0 * T * Kgg[idx].mean()
    return cl, cl_err, coherent, noise


def shape(parts, ells):
    """Statistics of one (re)sample from its :func:`spectrum_parts`; fits over ``ells``
    (None: no fits)."""
    cl, cl_err, coherent, noise = parts
    total = cl - noise
    relative = cl - coherent - noise
    out = {
        "C1": cl[1],
        "coherent_fraction": coherent[1] / cl[1],
        "total_ratio": total[1:5] / total[1],
        "relative_ratio": relative[1:5] / relative[1],
        "p_total": np.nan, "p_relative": np.nan, "curvature_total": np.nan, "curvature_relative": np.nan,
    }
    if ells is not None:
        with_dipole = np.concatenate([[1], ells])
        out["curvature_total"] = loglog_curvature(with_dipole, total, cl_err)
        out["curvature_relative"] = loglog_curvature(with_dipole, relative, cl_err)
        out["p_total"] = _fit(ells, total[ells] / total[1], cl_err[ells] / total[1], True)
        out["p_relative"] = _fit(ells, relative[ells] / relative[1], cl_err[ells] / relative[1], False)
    return out


def analyse(run_dir, t_min, n_boot, seed=0, lmax_cap=None):
    t_omega, T, x, p = load(run_dir, t_min)
    R, _, npix, _ = x.shape
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, R, R) for _ in range(n_boot)]
    result = {"run": str(run_dir), "realisations": int(R), "npix": int(npix), "snapshots": []}
    for it, t in enumerate(t_omega):
        entry = {"t_omega": float(t), "gradients": {}}
        for name, g in resolve_gradients().items():
            axis = int(np.argmax(np.abs(g)))
            Kgg = (x[:, it, :, axis] ** 2).mean(axis=1) / (2.0 * T[it])  # per realisation
            # The -3 K p term with the ensemble running K (its effect at these times is
            # < 1 %, docs/analysis.md).
            K = np.zeros((3, 3))
            K[axis, axis] = Kgg.mean()
            maps = relative_intensity(x[:, it], p[:, it], g, K)
            spectra = np.array([angular_power(m) for m in maps])
            parts = spectrum_parts(maps, spectra, T[it], Kgg, npix, np.arange(R))
            cl, _, _, noise = parts
            sigma_noise = noise_error(np.array(noise), np.arange(spectra.shape[1]), R)
            lmax_fit = fit_range(cl - noise, sigma_noise, FIT_NSIGMA)
            if lmax_cap is not None:
                lmax_fit = min(lmax_fit, lmax_cap)
            ells = np.arange(2, lmax_fit + 1) if lmax_fit >= 4 else None
            full = shape(parts, ells)
            samples = [shape(spectrum_parts(maps, spectra, T[it], Kgg, npix, b), ells) for b in boots]
            stats = {"theory_fraction": float(4 * np.pi * Kgg.mean() ** 2 / full["C1"]), "lmax_fit": lmax_fit}
            for key, value in full.items():
                boot = np.array([s[key] for s in samples], dtype=float)
                stats[key] = np.asarray(value, dtype=float).tolist()
                stats[key + "_err"] = np.nanstd(boot, axis=0, ddof=1).tolist()
            entry["gradients"][name] = stats
        result["snapshots"].append(entry)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--t-min", type=float, default=100.0)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--lmax-fit", type=int, default=None,
                        help="cap on the fit range (the same l range at every time makes c comparable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [analyse(run, args.t_min, args.boot, lmax_cap=args.lmax_fit) for run in args.runs]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for res in results:
        print(f"== {res['run']}: {res['realisations']} realisations x {res['npix']} directions")
        for snap in res["snapshots"]:
            for name, s in snap["gradients"].items():
                tr = s["total_ratio"]; tre = s["total_ratio_err"]
                rr = s["relative_ratio"]; rre = s["relative_ratio_err"]
                print(f"t={snap['t_omega']:7.1f} {name[:4]} C1={s['C1']:.3g}+-{s['C1_err']:.2g} "
                      f"coh={s['coherent_fraction']:.2f}+-{s['coherent_fraction_err']:.2f} "
                      f"(4piK^2: {s['theory_fraction']:.2f}) "
                      f"tot C2/C1={tr[1]:.3f}+-{tre[1]:.3f} C3/C1={tr[2]:.3f}+-{tre[2]:.3f} "
                      f"p={s['p_total']:.2f}+-{s['p_total_err']:.2f} | "
                      f"rel C2/C1={rr[1]:.3f}+-{rre[1]:.3f} C3/C1={rr[2]:.3f}+-{rre[2]:.3f} "
                      f"p={s['p_relative']:.2f}+-{s['p_relative_err']:.2f} (l<={s['lmax_fit']}) "
                      f"curvature tot {s['curvature_total']:.2f}+-{s['curvature_total_err']:.2f} "
                      f"rel {s['curvature_relative']:.2f}+-{s['curvature_relative_err']:.2f}")


if __name__ == "__main__":
    main()
