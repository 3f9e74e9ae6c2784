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
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import StorageError
from ..store import atomic_write_bytes
from .dataset import ANALYSIS_FILE, analyze_run, load_analysis, write_analysis

__all__ = ["SUMMARY_FILE", "summary_dict", "format_summary", "write_summary", "read_summary", "analyze"]

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


def summary_dict(ds: xr.Dataset) -> dict:
    """The ``summary.json`` object of an analysis (JSON-native types, NaN as null).

    Returns
    -------
    dict
        ``"analysis_id"`` (that of ``analysis.nc``), ``"n_realisations_used"``,
        ``"n_realisations_expected"``, ``"complete"`` (false for an ensemble analysed
        with ``--partial``);
        ``{"t_omega", "K_par", "K_perp", "K_par_err", "K_perp_err"}`` per snapshot
        (``L_c c``) and ``"gradients": {name: {"cl", "cl_err"`` ([snapshot][ell], the
        ensemble mean ``<C_l>`` and its standard error), ``"noise"`` (eq. 3.1, per
        snapshot), ``"dipole_standard"`` (``C_1`` of ``<dI>``), ``"sum_rule"`` (eq. 2.5
        LHS / RHS with the LHS summed over all ``l``), ``"p_fit", "p_err"`` (BGK fit at
        the last snapshot)}}``. Everything else (``cl_coherent``, ``cl_relative``,
        ``p_fit_relative``, ...) is in ``analysis.nc``.
    """
    out = {
        "analysis_id": str(ds.attrs["analysis_id"]),
        "n_realisations_used": int(ds.attrs["n_realisations_used"]),
        "n_realisations_expected": int(ds.attrs["n_realisations_expected"]),
        "complete": bool(ds.attrs["complete"]),
        "t_omega": _json_list(ds["t_omega"].values),
        "K_par": _json_list(ds["K_par"].values),
        "K_perp": _json_list(ds["K_perp"].values),
        "K_par_err": _json_list(ds["K_par_err"].values),
        "K_perp_err": _json_list(ds["K_perp_err"].values),
        "gradients": {},
    }
    for name in ds["gradient"].values:
        d = ds.sel(gradient=name)
        out["gradients"][str(name)] = {
            "cl": _json_list(d["cl"].values),
            "cl_err": _json_list(d["cl_err"].values),
            "noise": _json_list(d["noise"].values),
            "dipole_standard": _json_list(d["dipole_standard"].values),
            "sum_rule": _json_list(d["sum_rule"].values),
            "p_fit": _json_float(d["p_fit"].values),
            "p_err": _json_float(d["p_err"].values),
        }
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


def format_summary(summary: dict) -> str:
    """A readable table of a :func:`summary_dict` for the terminal.

    The first line states the size of the ensemble; a partial one is flagged loudly.
    """
    lines = [_ensemble_line(summary), ""]
    t = summary["t_omega"]
    lines.append("Diffusion tensor (running K^s = <x x>/2T, units L_c c; +- standard error over realisations)")
    lines.append(f"{'t_Omega':>10} {'K_par':>10} {'+-':>10} {'K_perp':>10} {'+-':>10}")
    for k in range(len(t)):
        lines.append(f"{t[k]:>10.4g} {_fmt(summary['K_par'][k])} {_fmt(summary['K_par_err'][k])} "
                     f"{_fmt(summary['K_perp'][k])} {_fmt(summary['K_perp_err'][k])}")
    for name, g in summary["gradients"].items():
        lines.append("")
        lines.append(f"Gradient {name}: <C_l> (power of dI), shot noise N (eq. 3.1), standard dipole C_1(<dI>), "
                     "sum rule 2.5 LHS/RHS")
        lines.append(f"{'t_Omega':>10} {'C_0':>10} {'C_1':>10} {'C_2':>10} {'C_3':>10} {'N':>10} "
                     f"{'dipole_std':>10} {'sum_rule':>8}")
        for k in range(len(t)):
            cl = g["cl"][k]
            cols = [_fmt(cl[m] if m < len(cl) else None) for m in range(4)]
            sr = g["sum_rule"][k]
            lines.append(f"{t[k]:>10.4g} {' '.join(cols)} {_fmt(g['noise'][k])} {_fmt(g['dipole_standard'][k])} "
                         f"{(f'{sr:8.4f}' if sr is not None else '       -')}")
        if g["p_fit"] is not None:
            lines.append(f"BGK fit at t_Omega = {t[-1]:.4g}: p = {g['p_fit']:.3f} +- "
                         f"{g['p_err']:.3f}" if g["p_err"] is not None else f"BGK fit: p = {g['p_fit']:.3f}")
        else:
            lines.append("BGK fit: none (see the dataset attribute fit_status)")
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
