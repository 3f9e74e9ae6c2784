"""The report of an analysis: ``summary.json`` and the terminal table, both made from the Dataset.

``analysis.nc`` (the Dataset, :mod:`crsky.analysis.dataset`) is the record; the report
is a view of it. :func:`analyze` writes ``analysis.nc`` first and ``summary.json``
second, both carrying the same ``analysis_id``; a reader that finds the pair broken (a
kill between the two renames, a summary of an older analysis, no summary) regenerates
the summary from ``analysis.nc`` (:func:`read_summary`), so ``summary.json`` never shows
the numbers of another ensemble for long and the report never does.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import StorageError
from ..store import atomic_write_bytes
from .dataset import ANALYSIS_FILE, analyze_run, load_analysis, write_analysis
from .estimators import p_interval_text

__all__ = ["SUMMARY_FILE", "SUMMARY_SCHEMA", "SUMMARY_SCHEMA_VERSION", "SUMMARY_UNITS", "summary_dict", "format_summary", "write_summary", "read_summary", "analyze"]

SUMMARY_FILE = "summary.json"


def _json_list(a) -> list:
    """Nested lists of floats with NaN/inf replaced by None."""
    arr = np.asarray(a, dtype=np.float64)
    obj = np.where(np.isfinite(arr), arr, np.nan).astype(object)
    obj[~np.isfinite(arr)] = None
    return obj.tolist()


def _json_float(v):
    v = float(v)
    return v if math.isfinite(v) else None


#: Version of the layout of ``summary.json`` (src/crsky/schemas/summary.schema.json).
SUMMARY_SCHEMA_VERSION = 2
#: The JSON Schema of ``summary.json``, shipped with the package.
SUMMARY_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "summary.schema.json"

#: Unit of every quantity of ``summary.json`` by key (the same key has the same unit
#: wherever it appears), in crsky code units (docs/conventions.md): ``L_c`` the
#: turbulence bend-over scale, ``c`` the speed of light, ``Omega = c / r_L``.
SUMMARY_UNITS = {
    "t_omega": "1 (Omega T)",
    "T": "L_c/c",
    "ell": "1",
    "K_par": "L_c c", "K_perp": "L_c c", "K_par_err": "L_c c", "K_perp_err": "L_c c",
    "K_map": "L_c c",
    "gradient_vector": "1/L_c",
    "cl": "1", "cl_err": "1", "cl_hat": "1", "noise": "1", "dipole_standard": "1",
    "sum_rule": "1", "sum_rule_err": "1", "sum_rule_expected": "1",
    "p_fit": "1", "p_err": "1", "p_fit_relative": "1", "p_err_relative": "1",
    "p": "1", "p_lo": "1", "p_hi": "1", "chi2_dof": "1", "norm": "1", "lmin": "1", "lmax": "1",
    "gyro_fraction": "1", "gyro_fraction_err": "1",
    "max_sigma": "1", "t_early": "1 (Omega T)", "t_late": "1 (Omega T)",
    "onset_t_omega": "1 (Omega T)", "onset_T": "L_c/c", "onset_dipole_t_omega": "1 (Omega T)",
    "onset_shape_t_omega": "1 (Omega T)",
    "nside": "1", "npix": "1", "n_realisations_used": "1", "n_realisations_expected": "1",
    "suggested_dt": "1 (Omega dt)",
    # physical inputs and the values derived from them (crsky.config.physical_record)
    "energy_tev": "TeV", "b0_microgauss": "microgauss", "lc_pc": "pc", "charge": "e", "rl": "L_c",
    "r_l_pc": "pc", "lc_over_c_yr": "yr", "gyro_period_lc_over_c": "L_c/c", "gyro_period_yr": "yr",
    "t_max_lc_over_c": "L_c/c", "t_max_yr": "yr",
}
_UNIT_DEFINITIONS = {
    "L_c": "turbulence bend-over scale (the length unit of the configuration; [particles] lc_pc in pc if given)",
    "c": "speed of light",
    "Omega": "gyrofrequency c / r_L in B0",
    "1": "dimensionless; every power (cl, noise, dipole_standard) is that of the relative intensity dI for "
         "|grad n / n| = 1 / L_c and scales as |grad n / n|^2 L_c^2",
}


def _opt_list(ds, name):
    return _json_list(ds[name].values) if name in ds.variables else None


def _opt_float(d, name):
    return _json_float(d[name].values) if name in d.variables else None


def _opt_int(d, name):
    return int(d[name].values) if name in d.variables else None


def _status_of(ds, attr: str, name: str):
    """The part ``name: ...`` of a ``"; "``-joined status attribute (None if absent)."""
    for part in str(ds.attrs.get(attr, "")).split("; "):
        if part.startswith(f"{name}: "):
            return part[len(name) + 2:]
    return None


def _fit_record(d, ds, name: str, suffix: str, status_attr: str) -> dict:
    """One BGK fit of one gradient: best p, its interval and whether it is clipped, the range, chi2/dof."""
    def var(base):
        return f"{base}{suffix}"

    flag = _opt_int(d, var("p_clipped"))
    p = _opt_float(d, "p_fit" + suffix)
    lmin, lmax = _opt_int(d, var("fit_lmin")), _opt_int(d, var("fit_lmax"))
    return {
        "p": p,
        "p_lo": _opt_float(d, var("p_lo")),
        "p_hi": _opt_float(d, var("p_hi")),
        "clipped_at": None if flag is None else [b for b, bit in ((0, 1), (1, 2)) if flag & bit],
        "lmin": None if lmin is None or lmin < 0 else lmin,
        "lmax": None if lmax is None or lmax < 0 else lmax,
        "chi2_dof": _opt_float(d, var("fit_chi2_dof")),
        "norm": _opt_float(d, "fit_norm") if not suffix else (1.0 if p is not None else None),
        "status": _status_of(ds, status_attr, name) or ("fitted" if p is not None else "no fit (reason not recorded)"),
    }


def _run_config(config: dict):
    """The :class:`crsky.config.RunConfig` of a stored configuration (the checks it passed
    when written), or None if it cannot be rebuilt (a file of another crsky)."""
    import tomli_w

    from ..config import config_from_toml_text
    from ..errors import InputError

    try:
        clean = {s: {k: v for k, v in d.items() if v is not None} for s, d in config.items() if isinstance(d, dict)}
        return config_from_toml_text(tomli_w.dumps(clean))
    except (InputError, ValueError, TypeError):
        return None


def _physical_inputs(config: dict, run_config):
    """The physical inputs and what follows from them (``crsky.config.physical_record``),
    or None for a run given in code units."""
    from ..config import physical_record

    particles = config.get("particles", {})
    if particles.get("energy_tev") is None:
        return None
    inputs = {k: particles.get(k) for k in ("energy_tev", "b0_microgauss", "lc_pc", "charge")}
    derived = physical_record(run_config) if run_config is not None else None
    return inputs | (derived or {"rl": particles.get("rl")})


def _physics_warnings(run_config):
    """``crsky.config.physics_warnings`` of the run's configuration (None if unknown)."""
    from ..config import physics_warnings

    return None if run_config is None else [w.to_dict() for w in physics_warnings(run_config)]


def summary_dict(ds: xr.Dataset) -> dict:
    """The ``summary.json`` object of an analysis (JSON-native types, NaN as null).

    The layout is fixed by the JSON Schema ``src/crsky/schemas/summary.schema.json``
    (:data:`SUMMARY_SCHEMA`) and documented in docs/analysis.md. Every numeric key has
    its unit in ``"units"`` (code units, defined in ``"unit_definitions"``).

    Returns
    -------
    dict
        ``"analysis_id"`` (that of ``analysis.nc``), ``"n_realisations_used"``,
        ``"n_realisations_expected"``, ``"complete"`` (false for an ensemble analysed
        with ``--partial``); ``"crsky_version"``, ``"config"`` (the resolved
        configuration), ``"physical_inputs"`` (null unless the run was given in
        physical units; with the derived ``r_L``, gyro period and ``t_max`` in years and
        ``L_c / c``), ``"warnings"`` (the physics warnings of the configuration, e.g. a
        ``t_max`` too short for the steady state: ``crsky.config.physics_warnings``), ``"nside"``, ``"npix"``, ``"lmax"``, ``"ell"``, ``"noise_model"``,
        ``"K_map"`` (the tensor in the ``-3 K p`` term and its source);
        ``{"t_omega", "T", "K_par", "K_perp", "K_par_err", "K_perp_err"}`` per snapshot
        and ``"gradients": {name: {"cl", "cl_err"`` ([snapshot][ell], the ensemble mean
        ``<C_l>`` and its standard error), ``"noise"`` (per snapshot), ``"dipole_standard"``
        (``C_1`` of ``<dI>``), ``"sum_rule"`` (eq. 2.5 LHS / RHS with the LHS summed over
        all ``l``) with ``"sum_rule_err"`` and ``"sum_rule_expected"``, ``"p_fit", "p_err"``,
        ``"p_fit_relative", "p_err_relative"``, ``"bgk_fit"``, ``"bgk_fit_relative"``
        (best ``p``, interval, clipping, range, chi2/dof, status), ``"steady_state"``,
        ``"gyrotropy"`` (``{"B0" | "local": {"gyro_fraction", "gyro_fraction_err"}}``: the
        ``m = 0`` share of ``<C_l>`` per ``l`` at the last snapshot)}}``.
    """
    try:
        config = json.loads(ds.attrs.get("config", "{}"))
    except (TypeError, ValueError):
        config = {}
    K_map = np.asarray(ds["K_map"].values, dtype=np.float64) if "K_map" in ds.variables else None
    run_config = _run_config(config)
    out = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "analysis_id": str(ds.attrs["analysis_id"]),
        "crsky_version": str(ds.attrs.get("crsky_version", "unknown")),
        "n_realisations_used": int(ds.attrs["n_realisations_used"]),
        "n_realisations_expected": int(ds.attrs["n_realisations_expected"]),
        "complete": bool(ds.attrs["complete"]),
        "config": config,
        "config_sha256": str(ds.attrs.get("config_sha256", "")),
        "physical_inputs": _physical_inputs(config, run_config),
        "warnings": _physics_warnings(run_config),
        "nside": int(ds.attrs["nside"]),
        "npix": int(ds.attrs["npix"]),
        "lmax": int(ds.attrs["lmax"]),
        "ell": [int(v) for v in ds["ell"].values],
        "noise_model": str(ds.attrs.get("noise_model", "eq3.1")),
        "K_map": {
            "source": str(ds.attrs.get("K_source", "")),
            "tensor_last": _json_list(K_map[-1]) if K_map is not None else None,
            "constant_in_time": bool(K_map is not None and np.all(K_map == K_map[-1])),
        },
        "t_omega": _json_list(ds["t_omega"].values),
        "T": _opt_list(ds, "T"),
        "K_par": _json_list(ds["K_par"].values),
        "K_perp": _json_list(ds["K_perp"].values),
        "K_par_err": _json_list(ds["K_par_err"].values),
        "K_perp_err": _json_list(ds["K_perp_err"].values),
        "gradients": {},
        "units": dict(SUMMARY_UNITS),
        "unit_definitions": dict(_UNIT_DEFINITIONS),
    }
    for name in ds["gradient"].values:
        name = str(name)
        d = ds.sel(gradient=name)
        expected = (_json_list(1.0 + d["sum_rule_correction"].values)
                    if "sum_rule_correction" in d.variables else None)
        steady = None
        if "steady_state" in d.variables:
            steady = {"steady": bool(int(d["steady_state"].values)),
                      "max_sigma": _opt_float(d, "steady_state_sigma"),
                      "status": _status_of(ds, "steady_state_status", name) or "",
                      "onset_t_omega": _opt_float(d, "steady_onset"),
                      "onset_T": _opt_float(d, "steady_onset_T"),
                      "onset_dipole_t_omega": _opt_float(d, "steady_onset_dipole"),
                      "onset_shape_t_omega": _opt_float(d, "steady_onset_shape")}
        out["gradients"][name] = {
            "gradient_vector": _opt_list(d, "gradient_vector"),
            "cl": _json_list(d["cl"].values),
            "cl_err": _json_list(d["cl_err"].values),
            "noise": _json_list(d["noise"].values),
            "dipole_standard": _json_list(d["dipole_standard"].values),
            "sum_rule": _json_list(d["sum_rule"].values),
            "sum_rule_err": _opt_list(d, "sum_rule_err"),
            "sum_rule_expected": expected,
            "p_fit": _json_float(d["p_fit"].values),
            "p_err": _json_float(d["p_err"].values),
            "p_fit_relative": _opt_float(d, "p_fit_relative"),
            "p_err_relative": _opt_float(d, "p_err_relative"),
            "bgk_fit": _fit_record(d, ds, name, "", "fit_status"),
            "bgk_fit_relative": _fit_record(d, ds, name, "_relative", "fit_status_relative"),
            "steady_state": steady,
        }
        if "gyro_fraction" in d.variables:
            out["gradients"][name]["gyrotropy"] = {
                str(axis): {"gyro_fraction": _json_list(d["gyro_fraction"].sel(axis=axis).values[-1]),
                            "gyro_fraction_err": _json_list(d["gyro_fraction_err"].sel(axis=axis).values[-1])}
                for axis in ds["axis"].values}
    return out


def _fmt(v, width=10, prec=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{'-':>{width}}"
    return f"{v:>{width}.{prec}e}"


def _ensemble_line(summary: dict) -> str:
    used, expected = summary.get("n_realisations_used"), summary.get("n_realisations_expected")
    if used is None or expected is None:
        return "Ensemble: size not recorded"
    if summary.get("complete"):
        return f"Ensemble: {used} of {expected} realisations (complete)"
    return (f"PARTIAL ENSEMBLE: {used} of {expected} realisations complete -- these numbers are not final "
            "(analysed with --partial)")


def _run_line(summary: dict) -> str | None:
    if "nside" not in summary:
        return None
    K = summary.get("K_map", {}).get("source", "?")
    return (f"crsky {summary.get('crsky_version', '?')}; nside {summary['nside']} ({summary['npix']} cosmic rays "
            f"per map), l <= {summary['lmax']}; shot noise {summary.get('noise_model', '?')}; K in the -3 K p "
            f"term of the map: {K}. Units: lengths L_c, times T in L_c/c (t_Omega = Omega T), K in L_c c; "
            "every power is that of dI for |grad n/n| = 1/L_c.")


def _fit_line(label: str, fit: dict | None, p: float | None, p_err: float | None, t_last: float) -> str:
    """One line of a BGK fit: best p, interval (clipped or not), range and chi2/dof; or why there is none."""
    if fit is None:  # a summary.json of an older crsky
        if p is None:
            return f"{label}: no fit (see the dataset attribute fit_status)"
        return f"{label}: p = {p:.3f}" + (f" +- {p_err:.3f}" if p_err is not None else "")
    if fit.get("p") is None:
        return f"{label}: {fit.get('status') or 'no fit'}"
    clipped = fit.get("clipped_at") or []
    text = p_interval_text(fit["p"], fit.get("p_lo"), fit.get("p_hi"), 0 in clipped, 1 in clipped)
    chi2 = fit.get("chi2_dof")
    chi2_text = f", chi2/dof = {chi2:.3g}" if chi2 is not None else ""
    return (f"{label}: {text}, 1 sigma, at t_Omega = {t_last:.4g}, l = {fit.get('lmin')}..{fit.get('lmax')}"
            f"{chi2_text}")


_SUM_RULE_NOTE = (
    "sum_rule: eq. 2.5 as LHS/RHS, LHS = <pixel mean of dI^2> (all l, Parseval), RHS = 2T K^s g g. The -3 K p\n"
    "term of the map adds 9|K g|^2 to the LHS, so the ratio tends to 'expected' = 1 + 9|K g|^2/(2T K^s g g),\n"
    "which is huge at early times (2T K^s -> 0 while 9|K g|^2 stays) and falls to 1 as 1/T. Compare sum_rule\n"
    "with 'expected', not with 1; '*' marks times where the correction exceeds 10 % (the rule tests nothing there).")


def format_summary(summary: dict) -> str:
    """A readable table of a :func:`summary_dict` for the terminal.

    The first line states the size of the ensemble; a partial one is flagged loudly.
    The sum-rule column is explained below each table (form and expected value).
    """
    lines = [_ensemble_line(summary)]
    for warning in summary.get("warnings") or []:
        lines.append(f"WARNING ({warning.get('code')}): {warning.get('message')}")
    run_line = _run_line(summary)
    if run_line:
        lines += textwrap.wrap(run_line, 110)
    lines.append("")
    t = summary["t_omega"]
    T = summary.get("T") or [None] * len(t)
    lines.append("Diffusion tensor (running K^s = <x x>/2T, units L_c c; +- standard error over realisations)")
    lines.append(f"{'t_Omega':>10} {'T[L_c/c]':>10} {'K_par':>10} {'+-':>10} {'K_perp':>10} {'+-':>10}")
    for k in range(len(t)):
        lines.append(f"{t[k]:>10.4g} {_fmt(T[k])} {_fmt(summary['K_par'][k])} {_fmt(summary['K_par_err'][k])} "
                     f"{_fmt(summary['K_perp'][k])} {_fmt(summary['K_perp_err'][k])}")
    for name, g in summary["gradients"].items():
        lines.append("")
        lines.append(f"Gradient {name}: <C_l> (power of dI), shot noise N, standard dipole C_1(<dI>), "
                     "sum rule eq. 2.5 (see below)")
        expected = g.get("sum_rule_expected")
        header = (f"{'t_Omega':>10} {'C_0':>10} {'C_1':>10} {'C_2':>10} {'C_3':>10} {'N':>10} "
                  f"{'dipole_std':>10} {'sum_rule':>9}")
        lines.append(header + (f" {'expected':>9}" if expected else ""))
        for k in range(len(t)):
            cl = g["cl"][k]
            cols = [_fmt(cl[m] if m < len(cl) else None) for m in range(4)]
            sr = g["sum_rule"][k]
            row = (f"{t[k]:>10.4g} {' '.join(cols)} {_fmt(g['noise'][k])} {_fmt(g['dipole_standard'][k])} "
                   f"{(f'{sr:9.4f}' if sr is not None else '        -')}")
            if expected:
                ex = expected[k]
                mark = "*" if ex is not None and ex > 1.1 else " "
                row += f" {(f'{ex:9.5g}' if ex is not None else '        -')}{mark}"
            lines.append(row)
        lines.append(_fit_line("BGK fit of C_hat_l/C_hat_1", g.get("bgk_fit"), g.get("p_fit"), g.get("p_err"), t[-1]))
        if g.get("bgk_fit_relative") is not None:
            lines.append(_fit_line("BGK fit of the relative part (cl_relative - N, C_1 fixed)",
                                   g["bgk_fit_relative"], g.get("p_fit_relative"), g.get("p_err_relative"), t[-1]))
        steady = g.get("steady_state")
        if steady is not None:
            lines.append(f"Steady state: {steady.get('status')}")
    if any(g.get("sum_rule_expected") for g in summary["gradients"].values()):
        lines += [""] + _SUM_RULE_NOTE.splitlines()
    return "\n".join(lines)


def write_summary(ds: xr.Dataset, run_dir) -> dict:
    """Write ``RUN_DIR/summary.json`` from the Dataset (atomically) and return it."""
    summary = summary_dict(ds)
    atomic_write_bytes(Path(run_dir) / SUMMARY_FILE, (json.dumps(summary, indent=1, allow_nan=False) + "\n").encode())
    return summary


def _stored_summary(path: Path) -> dict | None:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def read_summary(run_dir, ds: xr.Dataset | None = None, *, repair: bool = True) -> tuple[dict, bool]:
    """The summary of a run's analysis, guaranteed to be that of ``analysis.nc``.

    ``summary.json`` is used when it carries the ``analysis_id`` of ``analysis.nc``.
    When it is missing, unreadable or of another analysis, the summary is made from
    ``analysis.nc`` (``ds``, loaded if not given) and, with ``repair``, written back
    where the directory is writable.

    Returns
    -------
    summary : dict
        As :func:`summary_dict`.
    regenerated : bool
        Whether ``summary.json`` was not the pair of ``analysis.nc``.

    Raises
    ------
    FileNotFoundError
        No ``analysis.nc``.
    """
    run_dir = Path(run_dir)
    ds = load_analysis(run_dir / ANALYSIS_FILE) if ds is None else ds
    stored = _stored_summary(run_dir / SUMMARY_FILE)
    if stored is not None and stored.get("analysis_id") == ds.attrs.get("analysis_id"):
        return stored, False
    if repair:
        try:
            return write_summary(ds, run_dir), True
        except (OSError, StorageError):  # a read-only (archived) run: the summary is still made from analysis.nc
            pass
    return summary_dict(ds), True


def analyze(run_dir, gradients=None, K=None, lmax: int | None = None, progress: bool = False,
            out_dir=None, write: bool = True, **options):
    """Analyse a run; write ``analysis.nc``, then ``summary.json``, each atomically.

    Parameters are those of :func:`crsky.analysis.analyze_run` (``options``: ``noise``,
    ``fit_nsigma``, ``partial``, ``map_realisation``), and ``out_dir`` (default
    ``run_dir``), the directory the two files go to, and ``write`` (``False``: write
    nothing, e.g. for a read-only, archived run). The order of the writes makes a
    kill between them leave a new ``analysis.nc`` with an old ``summary.json`` of
    another ``analysis_id``, which :func:`read_summary` detects and repairs.

    Returns
    -------
    dataset : xarray.Dataset
        The analysis.
    summary : dict
        :func:`summary_dict` of it (what ``summary.json`` holds).
    """
    ds = analyze_run(run_dir, gradients=gradients, K=K, lmax=lmax, progress=progress, **options)
    if not write:
        return ds, summary_dict(ds)
    out_dir = Path(run_dir if out_dir is None else out_dir)
    write_analysis(ds, out_dir / ANALYSIS_FILE)
    return ds, write_summary(ds, out_dir)
