"""Rigidity scans: one ordinary run directory per rigidity, each analysed, and ``scan.nc``.

A scan is a configuration file with a ``[scan]`` table over a base configuration::

    [scan]
    rl = [0.1, 0.03, 0.01]          # r_L / L_c; or energy_tev = [...] with [particles]
    t_max = [1000, 1000, 1500]      # b0_microgauss, lc_pc (and charge); t_max optional

Each rigidity becomes the configuration of an ordinary run, the base configuration
with that ``[particles] rl`` (or ``energy_tev``) and ``[integration] t_max``, resolved
like ``crsky run`` resolves a file (``lambda_min = "auto"`` and ``n_modes = "auto"``
follow the rigidity). Its run directory is ``SCAN_DIR/rl_<rl:g>/`` (``rl_0.1``,
``rl_0.003``): made, resumed, adopted, locked and verified by :func:`crsky.ensemble.run_ensemble`
and :class:`crsky.store.RunStore` exactly as ``crsky run CONFIG --out SCAN_DIR/rl_<rl>``
would, so a directory holding the same resolved configuration is not recomputed; every
existing sub-run directory is checked before any rigidity runs. Each sub-run is analysed
(:func:`crsky.analysis.analyze`) unless its analysis is current; then ``SCAN_DIR/scan.nc``
(:func:`scan_dataset`, an ``rl`` dimension) and the figures in ``SCAN_DIR/figures/``
(:func:`write_scan_figures`) are written. Docs: docs/scan.md.

The kernels take ``rl`` as a runtime argument: the numba functions are compiled once per
process (and cached on disk), not once per rigidity.

Units: code units (docs/conventions.md): lengths in ``L_c``, times ``Omega T`` or ``T``
in ``L_c / c``, diffusion coefficients in ``L_c c``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import (SCAN_TABLE, ConfigError, RunConfig, check_resources, describe_physical, estimate_resources,
                     physics_warnings, read_config_tables, resolve_config)

__all__ = [
    "SCAN_FILE",
    "SCAN_KEYS",
    "ScanPoint",
    "ScanPlan",
    "plan_scan",
    "read_scan",
    "run_scan",
    "scan_dataset",
    "write_scan_figures",
    "plot_scan_diffusion",
    "plot_scan_shape",
    "plot_scan_fits",
    "SCAN_FIGURE_STEMS",
    "QUASILINEAR_SLOPE",
    "format_scan",
]

#: The scan's Dataset, written into the scan directory.
SCAN_FILE = "scan.nc"
#: Keys of the ``[scan]`` table: one list of rigidities (``rl`` in ``L_c``, or
#: ``energy_tev`` in TeV) and, optionally, ``t_max`` (``Omega T``) per rigidity.
SCAN_KEYS = ("rl", "energy_tev", "t_max")
#: ``d ln K_par / d ln r_L`` of quasi-linear theory in a Kolmogorov cascade (``gamma = 11/3``):
#: ``lambda_par ~ r_L^(2 - q) L_c^(q - 1)`` with ``q = 5/3`` (crsky.config.parallel_mean_free_path).
QUASILINEAR_SLOPE = 1.0 / 3.0
#: Figures of a scan (``SCAN_DIR/figures/<stem>.png`` and ``.pdf``).
SCAN_FIGURE_STEMS = ("scan_diffusion", "scan_spectrum_shape", "scan_fits")
#: Multipoles of the shape kept in ``scan.nc`` (``l = 0 .. SCAN_LMAX``, or the runs' lmax).
SCAN_LMAX = 16
_PHYSICAL = ("energy_tev", "b0_microgauss", "lc_pc")


def _run_name(rl: float) -> str:
    """The sub-run directory of a rigidity: ``rl_<rl:g>`` (``rl_0.1``, ``rl_0.003``)."""
    return f"rl_{rl:g}"


@dataclass(frozen=True)
class ScanPoint:
    """One rigidity of a scan: its resolved configuration and sub-run directory name."""

    rl: float
    name: str
    config: RunConfig
    label: str  # the [scan] entry, e.g. "rl = 0.03" or "energy_tev = 10"


@dataclass(frozen=True)
class ScanPlan:
    """A validated scan: the base tables, what is scanned, and one :class:`ScanPoint` per rigidity."""

    variable: str  # "rl" or "energy_tev"
    points: tuple
    table: dict  # the [scan] table as given
    preset: str

    def to_json(self) -> str:
        return json.dumps({"variable": self.variable, "preset": self.preset, "scan": self.table}, sort_keys=True)


def _number_list(key: str, value, what: str) -> list[float]:
    """A non-empty list of finite numbers > 0 (``[scan] key``), or ConfigError."""
    if not isinstance(value, list):
        raise ConfigError(f"[{SCAN_TABLE}] {key} must be a list of numbers ({what}), got {value!r}")
    if not value:
        raise ConfigError(f"[{SCAN_TABLE}] {key} is empty: give at least one value ({what})")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not v > 0:
            raise ConfigError(f"[{SCAN_TABLE}] {key} = {value!r}: every value must be a finite number > 0 ({what})")
        out.append(float(v))
    return out


def plan_scan(data: dict, preset: str = "quick", origin: str = "config") -> ScanPlan:
    """Validate a scan configuration and resolve the configuration of every rigidity.

    Parameters
    ----------
    data : dict
        The configuration's tables (as read from TOML), with the ``[scan]`` table.
    preset : {"quick", "paper"}
        The base the configuration applies to, as for ``crsky run``.
    origin : str
        Where ``data`` came from, for messages.

    Returns
    -------
    ScanPlan

    Raises
    ------
    ConfigError
        One line: a missing or empty list, a value not > 0, duplicate rigidities (also
        two that name the same ``rl_<rl:g>`` directory), energies without
        ``[particles] b0_microgauss`` and ``lc_pc``, a ``t_max`` list of another length,
        a key of ``[scan]`` not in :data:`SCAN_KEYS`, a scanned key also set in the base
        configuration, or any error of a rigidity's resolved configuration (prefixed with
        the rigidity).
    """
    table = data.get(SCAN_TABLE)
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: no [{SCAN_TABLE}] table (a scan needs [{SCAN_TABLE}] rl = [...] or "
                          f"energy_tev = [...]); for a single run use `crsky run`")
    unknown = sorted(set(table) - set(SCAN_KEYS))
    if unknown:
        raise ConfigError(f"[{SCAN_TABLE}] unknown key {unknown[0]!r}; allowed: {', '.join(SCAN_KEYS)}")
    scanned = [k for k in ("rl", "energy_tev") if k in table]
    if len(scanned) != 1:
        raise ConfigError(f"[{SCAN_TABLE}] give exactly one of rl = [...] (r_L / L_c) or energy_tev = [...] (TeV, "
                          f"with [particles] b0_microgauss and lc_pc), got {', '.join(scanned) or 'neither'}")
    variable = scanned[0]
    what = "r_L / L_c" if variable == "rl" else "TeV"
    values = _number_list(variable, table[variable], what)
    if len(set(values)) != len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise ConfigError(f"[{SCAN_TABLE}] {variable} = {table[variable]!r}: {dup:g} appears twice; each rigidity "
                          "once")
    base = {name: dict(t) if isinstance(t, dict) else t for name, t in data.items() if name != SCAN_TABLE}
    particles = base.get("particles", {})
    integration = base.get("integration", {})
    if not isinstance(particles, dict) or not isinstance(integration, dict):
        raise ConfigError(f"{origin}: [particles] and [integration] must be tables")
    if variable == "rl":
        clash = [k for k in ("rl", *_PHYSICAL) if k in particles]
        if clash:
            raise ConfigError(f"[particles] {clash[0]} is set, but [{SCAN_TABLE}] rl sets the rigidity of each run; "
                              f"remove [particles] {', '.join(clash)}")
    else:
        if "rl" in particles or "energy_tev" in particles:
            key = "rl" if "rl" in particles else "energy_tev"
            raise ConfigError(f"[particles] {key} is set, but [{SCAN_TABLE}] energy_tev sets the rigidity of each "
                              "run; remove it")
        missing = [k for k in ("b0_microgauss", "lc_pc") if k not in particles]
        if missing:
            raise ConfigError(f"[{SCAN_TABLE}] energy_tev needs [particles] {' and '.join(missing)} (microgauss, pc) "
                              "to give r_L / L_c")
    t_max = None
    if "t_max" in table:
        t_max = _number_list("t_max", table["t_max"], "t Omega")
        if len(t_max) != len(values):
            raise ConfigError(f"[{SCAN_TABLE}] t_max has {len(t_max)} values for {len(values)} rigidities "
                              f"({variable}): give one t_max per rigidity, or none (then [integration] t_max)")
        if "t_max" in integration:
            raise ConfigError(f"[integration] t_max is set and so is [{SCAN_TABLE}] t_max; remove one")
    points = []
    for k, value in enumerate(values):
        label = f"{variable} = {value:g}"
        tables = {name: (dict(t) if isinstance(t, dict) else t) for name, t in base.items()}
        tables.setdefault("particles", {})[variable] = value
        if t_max is not None:
            tables.setdefault("integration", {})["t_max"] = t_max[k]
            label += f", t_max = {t_max[k]:g}"
        try:
            config = resolve_config(tables, preset, origin=origin)
        except ConfigError as exc:
            raise ConfigError(f"[{SCAN_TABLE}] {label}: {exc}") from None
        points.append(ScanPoint(config.particles.rl, _run_name(config.particles.rl), config, label))
    names = [p.name for p in points]
    for name in names:
        if names.count(name) > 1:
            same = [p.label for p in points if p.name == name]
            raise ConfigError(f"[{SCAN_TABLE}] {' and '.join(same)} give the same rigidity {name} (to 6 digits); "
                              "each rigidity once")
    return ScanPlan(variable, tuple(points), dict(table), preset)


def read_scan(path, preset: str = "quick") -> ScanPlan:
    """Read and validate a scan configuration file (:func:`plan_scan`)."""
    return plan_scan(read_config_tables(path), preset, origin=str(path))


def _check_scan_resources(plan: ScanPlan, out: Path, workers: int) -> None:
    """Every sub-run fits this machine, and all of them together fit the disk of ``out``."""
    from .config import _bytes_under, _size

    need = 0
    for point in plan.points:
        try:
            check_resources(point.config, out / point.name, workers=workers)
        except ConfigError as exc:
            raise ConfigError(f"[{SCAN_TABLE}] {point.label}: {exc}") from None
        need += max(0, estimate_resources(point.config).disk_total - _bytes_under(out / point.name))
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ConfigError(f"scan too large for the disk: about {_size(need)} more needed in {out} for "
                          f"{len(plan.points)} runs, {_size(free)} free; scan fewer rigidities or choose another --out")


def _check_sub_runs(plan: ScanPlan, out: Path) -> None:
    """Every existing sub-run directory is the run of its rigidity (or empty): checked for
    all rigidities before any is computed, so that a conflict found late does not stop a
    scan half-way. The sub-runs' own checks (lock, manifest, files) still run when each starts."""
    from .store import CONFIG, RunDirError, RunStore, _entries, config_difference

    for point in plan.points:
        sub = out / point.name
        if not os.path.lexists(sub):
            continue
        if not sub.is_dir():
            raise RunDirError(f"[{SCAN_TABLE}] {point.label}: {sub} exists and is not a directory; move it aside")
        if not (sub / CONFIG).is_file():
            if _entries(sub):
                raise RunDirError(f"[{SCAN_TABLE}] {point.label}: {sub} is not empty and is not a crsky run "
                                  "directory (no config.toml); move it aside or choose another --out")
            continue
        stored = RunStore(sub).config()
        if stored.digest() != point.config.digest():
            raise RunDirError(f"[{SCAN_TABLE}] {point.label}: {sub} holds a run of a different configuration "
                              f"({config_difference(stored, point.config)}); choose another --out, or move that "
                              "run aside")


def _analyze_if_needed(sub: Path) -> None:
    """Analyse a sub-run unless its analysis is current (same configuration and realisations)."""
    from .analysis import analyze
    from .analysis.dataset import AnalysisNotCurrentError, load_current_analysis

    try:
        load_current_analysis(sub).close()
    except AnalysisNotCurrentError:
        analyze(sub, progress=False)


def run_scan(plan: ScanPlan | str | Path, out, *, preset: str = "quick", backend: str = "auto", workers: int = 1,
             scheduler: str | None = None, connect_timeout: float | None = None, progress: bool = True,
             figures: bool = True, log=None):
    """Run (or resume) every rigidity of a scan, analyse each, write ``scan.nc`` and the figures.

    Parameters
    ----------
    plan : ScanPlan or path
        A validated plan, or a scan configuration file (read over ``preset``).
    out : path
        The scan directory; sub-runs go to ``out/rl_<rl:g>/``.
    backend, workers, scheduler, connect_timeout
        As for :func:`crsky.ensemble.run_ensemble`, for every sub-run.
    progress : bool
        A progress bar over the rigidities (and each run's own).
    figures : bool
        Write the scan figures to ``out/figures/``.
    log : callable, optional
        Receives one-line notes (warnings, cost, physical units); default: stderr.

    Returns
    -------
    xarray.Dataset
        The scan Dataset, as written to ``out/scan.nc``.

    Raises
    ------
    ConfigError
        Bad scan input or a scan too large; raised before anything is written.
    """
    from tqdm.auto import tqdm

    from .backends import resolve_backend
    from .config import estimate_cost
    from .ensemble import run_ensemble
    from .scheduler import CONNECT_TIMEOUT_S
    from .store import RunStore, atomic_write_netcdf

    if not isinstance(plan, ScanPlan):
        plan = read_scan(plan, preset)
    log = log or (lambda line: print(line, file=sys.stderr))
    out = Path(out)
    _check_scan_resources(plan, out, 1 if scheduler else workers)  # nothing written before these pass
    _check_sub_runs(plan, out)
    timeout = CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
    bar = tqdm(plan.points, unit="rigidity", desc="crsky scan", disable=not progress, file=sys.stderr)
    for point in bar:
        bar.set_postfix_str(point.name)
        sub = out / point.name
        physical = describe_physical(point.config)
        if physical:
            log(f"crsky scan: {point.name}: {physical}")
        for warning in physics_warnings(point.config):
            log(f"crsky scan: {point.name}: warning: {warning.message}")
        with RunStore(sub).lock(exclusive=True, create_dir=True):
            resolved = resolve_backend(backend)
            log(f"crsky scan: {point.name}: {estimate_cost(point.config, backend=resolved).describe(resolved)}")
            run_ensemble(point.config, sub, backend=backend, workers=workers, scheduler=scheduler,
                         progress=progress, connect_timeout=timeout)
            _analyze_if_needed(sub)
    bar.close()
    ds = scan_dataset(out, plan)
    atomic_write_netcdf(ds, out / SCAN_FILE)
    if figures:
        write_scan_figures(ds, out / "figures")
    return ds


# ---------------------------------------------------------------------------------
# scan.nc
# ---------------------------------------------------------------------------------
def _sessions_seconds(manifest: dict) -> float:
    """Wall time of the sessions that computed realisations (``seconds`` of each), s."""
    total = 0.0
    for session in manifest.get("sessions", []):
        seconds = session.get("seconds")
        if isinstance(seconds, (int, float)) and session.get("pending", 1):
            total += float(seconds)
    return total


def _run_values(run_dir: Path, lmax_keep: int) -> dict:
    """The numbers of one analysed sub-run that go into ``scan.nc``."""
    from .analysis import load_analysis
    from .config import estimate_cost
    from .store import RunStore

    store = RunStore.existing(run_dir)
    config = store.config()
    manifest = json.loads((store.path / "manifest.json").read_text())
    ds = load_analysis(run_dir)
    last = ds.isel(t_omega=-1)
    names = [str(n) for n in ds["gradient"].values]
    L = lmax_keep + 1
    n_ell = min(L, ds.sizes["ell"])

    def per_gradient(var, default=math.nan):
        if var not in ds.variables:
            return np.full(len(names), default)
        return np.asarray(ds[var].values, dtype=np.float64)

    cl_hat = np.full((len(names), L), np.nan)
    cl_err = np.full((len(names), L), np.nan)
    cl_hat[:, :n_ell] = last["cl_hat"].values[:, :n_ell]
    cl_err[:, :n_ell] = last["cl_err"].values[:, :n_ell]
    c1 = cl_hat[:, 1:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(c1 > 0, cl_hat / c1, np.nan)
        ratio_err = np.where(c1 > 0, cl_err / c1, np.nan)
        c1 = c1[:, 0]
        amp = np.where(c1 > 0, 3.0 * np.sqrt(c1 / (4.0 * math.pi)), np.nan)
        amp_err = np.where(c1 > 0, 3.0 * cl_err[:, 1] / (2.0 * np.sqrt(4.0 * math.pi * c1)), np.nan)
        share = last["cl_coherent"].values[:, 1] / last["cl"].values[:, 1]
    return {
        "gradients": names, "config": config,
        "rl": config.particles.rl, "energy_tev": config.particles.energy_tev,
        "t_max": config.integration.t_max, "T_max": config.integration.t_max * config.particles.rl,
        "n_modes": config.turbulence.n_modes, "lambda_min": config.turbulence.lambda_min,
        "n_realisations": int(ds.attrs["n_realisations_used"]), "nside": config.particles.nside,
        "K_par": float(last["K_par"]), "K_par_err": float(last["K_par_err"]),
        "K_perp": float(last["K_perp"]), "K_perp_err": float(last["K_perp_err"]),
        "shape_ratio": ratio, "shape_ratio_err": ratio_err,
        "dipole_amplitude": amp, "dipole_amplitude_err": amp_err, "dipole_coherent_share": share,
        **{v: per_gradient(v) for v in ("p_fit", "p_lo", "p_hi", "p_fit_relative", "p_lo_relative",
                                         "p_hi_relative", "steady_onset", "steady_onset_T", "steady_state")},
        "wall_seconds": _sessions_seconds(manifest),
        "compute_seconds": float(sum(r.get("seconds", 0.0) for r in manifest.get("realisations", {}).values())),
        "mode_evaluations": float(estimate_cost(config, throughput=1.0).mode_evaluations),
        "config_sha256": config.digest(),
    }


def scan_dataset(out, plan: ScanPlan):
    """The scan Dataset: one entry per rigidity along the dimension ``rl``.

    Reads each sub-run's ``analysis.nc`` and manifest. Values at the last snapshot of
    each run; errors are standard errors over realisations (docs/analysis.md). The
    function is long because it is the file's declaration: one entry per variable with
    its CF attributes, read in one place.

    Returns
    -------
    xarray.Dataset
        Dimensions ``rl`` (in the order of the ``[scan]`` list), ``gradient``, ``ell``;
        CF attributes (``units = "1"`` with ``code_units`` where the code unit is not 1).
    """
    import xarray as xr

    from . import __version__

    out = Path(out)
    runs = [_run_values(out / p.name, SCAN_LMAX) for p in plan.points]
    names = runs[0]["gradients"]
    for p, r in zip(plan.points, runs):
        if r["gradients"] != names:
            raise ConfigError(f"{out / p.name}: gradients {r['gradients']} differ from {names}; analyse every "
                              "sub-run with the same gradients")
    lmax = min(SCAN_LMAX, 3 * max(r["nside"] for r in runs) - 1)
    stack = (lambda key: np.array([r[key] for r in runs], dtype=np.float64))
    stack_g = (lambda key: np.stack([np.asarray(r[key], dtype=np.float64) for r in runs]))
    rg, rgl = ("rl", "gradient"), ("rl", "gradient", "ell")
    lc_c = {"units": "1", "code_units": "L_c c", "comment": "diffusion coefficient in units of L_c c"}
    interval = "delta chi^2 = 1 interval, clipped at 0 and 1 (analysis.nc p_clipped)"
    variables = {
        "run": ("rl", np.array([p.name for p in plan.points], dtype=object),
                {"long_name": "sub-run directory, relative to the scan directory"}),
        "t_max": ("rl", stack("t_max"), {"long_name": "last snapshot Omega T", "units": "1"}),
        "T_max": ("rl", stack("T_max"), {"long_name": "last snapshot T", "units": "1", "code_units": "L_c/c"}),
        "n_modes": ("rl", np.array([r["n_modes"] for r in runs], dtype=np.int64),
                    {"long_name": "number of field modes", "units": "1"}),
        "lambda_min": ("rl", stack("lambda_min"), {"long_name": "smallest wavelength of the field",
                                                   "units": "1", "code_units": "L_c"}),
        "n_realisations": ("rl", np.array([r["n_realisations"] for r in runs], dtype=np.int64),
                           {"long_name": "realisations analysed", "units": "1"}),
        "K_par": ("rl", stack("K_par"), {"long_name": "running K_par = K^s_zz at the last snapshot", **lc_c}),
        "K_par_err": ("rl", stack("K_par_err"), {"long_name": "standard error of K_par", **lc_c}),
        "K_perp": ("rl", stack("K_perp"), {"long_name": "running K_perp = (K^s_xx + K^s_yy)/2 at the last snapshot",
                                           **lc_c}),
        "K_perp_err": ("rl", stack("K_perp_err"), {"long_name": "standard error of K_perp", **lc_c}),
        "shape_ratio": (rgl, stack_g("shape_ratio")[:, :, :lmax + 1], {
            "long_name": "C_hat_l / C_hat_1 at the last snapshot (the steady-state shape where steady_state = 1)",
            "units": "1"}),
        "shape_ratio_err": (rgl, stack_g("shape_ratio_err")[:, :, :lmax + 1], {
            "long_name": "cl_err_l / C_hat_1 (standard error of <C_l> over realisations, over C_hat_1)", "units": "1"}),
        "dipole_amplitude": (rg, stack_g("dipole_amplitude"), {
            "long_name": "rms dipole amplitude of one realisation's sky, 3 sqrt(C_hat_1 / 4 pi), at the last "
                         "snapshot", "units": "1",
            "comment": "for |grad n / n| = 1 / L_c; scales as |grad n / n| L_c"}),
        "dipole_amplitude_err": (rg, stack_g("dipole_amplitude_err"), {
            "long_name": "standard error of dipole_amplitude (from cl_err_1)", "units": "1"}),
        "dipole_coherent_share": (rg, stack_g("dipole_coherent_share"), {
            "long_name": "coherent share of the dipole, cl_coherent_1 / <C_1>, at the last snapshot", "units": "1"}),
        "p_fit": (rg, stack_g("p_fit"), {"long_name": "BGK p of C_hat_l/C_hat_1 (l >= 2, free normalisation)",
                                         "units": "1"}),
        "p_lo": (rg, stack_g("p_lo"), {"long_name": f"lower end of p_fit's {interval}", "units": "1"}),
        "p_hi": (rg, stack_g("p_hi"), {"long_name": f"upper end of p_fit's {interval}", "units": "1"}),
        "p_fit_relative": (rg, stack_g("p_fit_relative"), {
            "long_name": "BGK p of the relative part (cl_relative - N, C_1 fixed)", "units": "1"}),
        "p_lo_relative": (rg, stack_g("p_lo_relative"), {"long_name": f"lower end of p_fit_relative's {interval}",
                                                         "units": "1"}),
        "p_hi_relative": (rg, stack_g("p_hi_relative"), {"long_name": f"upper end of p_fit_relative's {interval}",
                                                         "units": "1"}),
        "steady_state": (rg, stack_g("steady_state").astype(np.int8), {
            "long_name": "steady-state flag of the analysis (docs/analysis.md, steady state)", "units": "1",
            "flag_values": np.array([0, 1], dtype=np.int8), "flag_meanings": "not_steady_or_not_tested steady"}),
        "steady_onset": (rg, stack_g("steady_onset"), {
            "long_name": "steady-state onset Omega T of C_hat_1 and C_hat_l/C_hat_1", "units": "1",
            "comment": "NaN: never constant, or not tested"}),
        "steady_onset_T": (rg, stack_g("steady_onset_T"), {
            "long_name": "steady-state onset as T", "units": "1", "code_units": "L_c/c"}),
        "wall_seconds": ("rl", stack("wall_seconds"), {
            "long_name": "wall time of the sub-run's sessions that computed realisations (manifest sessions)",
            "units": "s"}),
        "compute_seconds": ("rl", stack("compute_seconds"), {
            "long_name": "sum of the realisations' own computing times (manifest records)", "units": "s"}),
        "mode_evaluations": ("rl", stack("mode_evaluations"), {
            "long_name": "realisations x particles x steps x n_modes (crsky.config.estimate_cost)", "units": "1"}),
    }
    if plan.variable == "energy_tev":
        variables["energy_tev"] = ("rl", stack("energy_tev"), {"long_name": "particle energy", "units": "TeV"})
    coords = {
        "rl": ("rl", stack("rl"), {"long_name": "gyroradius in B0, r_L / L_c", "units": "1", "code_units": "L_c"}),
        "gradient": ("gradient", np.array(names, dtype=object), {"long_name": "density gradient"}),
        "ell": ("ell", np.arange(lmax + 1), {"long_name": "multipole l", "units": "1"}),
    }
    ds = xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()},
                    coords={k: xr.Variable(*v) for k, v in coords.items()})
    ds.attrs.update({
        "Conventions": "CF-1.10",
        "title": "crsky rigidity scan",
        "crsky_version": __version__,
        "scan": plan.to_json(),
        "scan_variable": plan.variable,
        "config_sha256": json.dumps([r["config_sha256"] for r in runs]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "units_comment": "code units (docs/conventions.md): every number is the quantity over its code unit "
                         "(units = '1', code_units names it); L_c the bend-over scale, c the speed of light, "
                         "Omega = c / r_L",
        "quasilinear_slope": QUASILINEAR_SLOPE,
    })
    return ds


# ---------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------
def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]


def _log_scale(ax, x=None, y=None) -> None:
    """Log axes where the drawn values allow it (some value > 0); a linear axis otherwise,
    so that a scan without a measured quantity still gets its figure."""
    for values, setter in ((x, ax.set_xscale), (y, ax.set_yscale)):
        if values is None:
            continue
        v = np.asarray(values, dtype=np.float64).ravel()
        if np.any(np.isfinite(v) & (v > 0)):
            setter("log")


def _rigidity_ticks(ax, rl) -> None:
    """Ticks at the scanned rigidities, labelled with their values (log axes' minor
    labels would crowd a scan of one or two decades)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(rl, [f"{v:g}" for v in rl])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _finite(*arrays) -> np.ndarray:
    return np.all([np.isfinite(a) for a in arrays], axis=0)


def plot_scan_diffusion(ds):
    """``K_par`` and ``K_perp`` at the last snapshot against ``r_L / L_c`` (log-log), with the
    quasi-linear ``r_L^(1/3)`` slope drawn through the ``K_par`` of the highest rigidity."""
    fig, (ax,) = _figure(5.5, 4.2)
    rl = ds["rl"].values
    for name, marker in (("K_par", "o"), ("K_perp", "s")):
        ok = _finite(ds[name].values)
        label = {"K_par": r"$K_\parallel$", "K_perp": r"$K_\perp$"}[name]
        ax.errorbar(rl[ok], ds[name].values[ok], yerr=ds[f"{name}_err"].values[ok], marker=marker, ls="-",
                    capsize=3, label=label)
    ok = _finite(ds["K_par"].values) & (ds["K_par"].values > 0)
    if ok.any():
        ref = int(np.argmax(np.where(ok, rl, -np.inf)))
        x = np.geomspace(rl.min(), rl.max(), 50) if rl.size > 1 else np.array([rl[0] / 3, rl[0] * 3])
        ax.plot(x, ds["K_par"].values[ref] * (x / rl[ref]) ** QUASILINEAR_SLOPE, color="0.4", ls="--",
                label=r"slope guide $\propto r_L^{1/3}$ (quasi-linear, Kolmogorov)")
    _log_scale(ax, rl, np.concatenate([ds["K_par"].values, ds["K_perp"].values]))
    _rigidity_ticks(ax, rl)
    ax.set_xlabel(r"$r_L / L_c$")
    ax.set_ylabel(r"$K$ at the last snapshot  [$L_c\,c$]")
    ax.set_title("Diffusion coefficients against rigidity")
    ax.legend(fontsize=8)
    return fig


def plot_scan_shape(ds):
    """``C_hat_l / C_hat_1`` at the last snapshot for every rigidity, one panel per gradient."""
    from .bgk import bgk_ratio

    names = [str(n) for n in ds["gradient"].values]
    fig, axes = _figure(5.0 * len(names), 4.2, ncols=len(names))
    ell = ds["ell"].values
    for ax, name in zip(axes, names):
        d = ds.sel(gradient=name)
        for k, rl in enumerate(ds["rl"].values):
            r = d["shape_ratio"].values[k]
            e = d["shape_ratio_err"].values[k]
            ok = (ell >= 1) & _finite(r, e) & (r > 0)
            onset = float(d["steady_onset"].values[k])
            steady = "steady" if int(d["steady_state"].values[k]) else "NOT steady"
            label = (rf"$r_L/L_c$ = {rl:g} (t$\Omega$ = {float(ds['t_max'].values[k]):g}, {steady}"
                     + (f", onset {onset:.3g})" if math.isfinite(onset) else ")"))
            if ok.any():
                ax.errorbar(ell[ok] * (1 + 0.02 * k), r[ok], yerr=e[ok], marker="o", ms=3, ls="-", capsize=2,
                            label=label)
            else:
                ax.plot([], [], marker="o", ls="-", label=label + r": no $\hat C_1 > 0$")
        lmax = int(ell.max())
        ax.plot(np.arange(1, lmax + 1), bgk_ratio(0.5, lmax), color="0.3", ls="--", label="BGK p = 1/2")
        _log_scale(ax, ell[1:], np.where(ell >= 1, d["shape_ratio"].values, np.nan))
        ax.set_xlabel(r"$\ell$")
        ax.set_ylabel(r"$\hat C_\ell / \hat C_1$ at the last snapshot")
        ax.set_title(f"{name} gradient")
        ax.legend(fontsize=7)
    return fig


def plot_scan_fits(ds):
    """``p_fit`` and ``p_fit_relative`` (with their intervals) and the dipole amplitude
    against ``r_L / L_c``, per gradient."""
    fig, (ax_p, ax_d) = _figure(10.0, 4.2, ncols=2)
    rl = ds["rl"].values
    names = [str(n) for n in ds["gradient"].values]
    for g, name in enumerate(names):
        d = ds.sel(gradient=name)
        for var, marker, what in (("", "o", r"$p$ of $\hat C_\ell/\hat C_1$"), ("_relative", "s", r"$p$ relative")):
            p = d[f"p_fit{var}"].values
            lo, hi = d[f"p_lo{var}"].values, d[f"p_hi{var}"].values
            ok = _finite(p, lo, hi)
            shift = 1 + 0.04 * (2 * g + (var != "")) - 0.06
            ax_p.errorbar(rl[ok] * shift, p[ok], yerr=[p[ok] - lo[ok], hi[ok] - p[ok]], marker=marker, capsize=3,
                          ls="-" if name == "parallel" else ":", label=f"{name}: {what}")
        a, e = d["dipole_amplitude"].values, d["dipole_amplitude_err"].values
        ok = _finite(a, e)
        ax_d.errorbar(rl[ok], a[ok], yerr=e[ok], marker="o", capsize=3, ls="-" if name == "parallel" else ":",
                      label=f"{name}: " + r"$3\sqrt{\hat C_1/4\pi}$")
    ax_p.axhline(0.5, color="0.4", ls="--", label="p = 1/2 (Mertsch & Ahlers 2015)")
    ax_p.set_ylim(0.0, 1.0)
    ax_p.set_ylabel(r"BGK exponent $p$ (1$\sigma$ interval)")
    ax_p.set_title("Best-fit p against rigidity")
    _log_scale(ax_d, None, ds["dipole_amplitude"].values)
    ax_d.set_ylabel(r"dipole amplitude for $|\nabla n/n| = 1/L_c$")
    ax_d.set_title("Dipole amplitude against rigidity")
    for ax in (ax_p, ax_d):
        _log_scale(ax, rl)
        ax.set_xlim(rl.min() / 1.5, rl.max() * 1.5)  # also where no p was fitted
        _rigidity_ticks(ax, rl)
        ax.set_xlabel(r"$r_L / L_c$")
        ax.legend(fontsize=7)
    return fig


def write_scan_figures(ds, directory, formats=("png", "pdf")) -> list[Path]:
    """Write the scan figures (:data:`SCAN_FIGURE_STEMS`) to ``directory``, each atomically."""
    from .plots import save_figure

    paths = []
    for stem, draw in zip(SCAN_FIGURE_STEMS, (plot_scan_diffusion, plot_scan_shape, plot_scan_fits)):
        paths += save_figure(draw(ds), directory, stem, formats=formats)
    return paths


def format_scan(ds) -> str:
    """A table of the scan for the terminal: per rigidity the resolution, K, and per
    gradient the steady-state onset, ``C_hat_2/C_hat_1`` and ``p_fit``."""
    lines = [f"{'r_L/L_c':>9} {'n_modes':>7} {'lambda_min':>10} {'t_max':>7} {'wall_s':>8} "
             f"{'K_par':>17} {'K_perp':>19}"]
    for k, rl in enumerate(ds["rl"].values):
        lines.append(
            f"{rl:>9.3g} {int(ds['n_modes'].values[k]):>7d} {float(ds['lambda_min'].values[k]):>10.3g} "
            f"{float(ds['t_max'].values[k]):>7.4g} {float(ds['wall_seconds'].values[k]):>8.1f} "
            f"{float(ds['K_par'].values[k]):>8.4g} +- {float(ds['K_par_err'].values[k]):<6.2g}"
            f"{float(ds['K_perp'].values[k]):>10.4g} +- {float(ds['K_perp_err'].values[k]):<6.2g}")
    for name in ds["gradient"].values:
        d = ds.sel(gradient=name)
        lines.append(f"gradient {name}: steady-state onset (t Omega), C_hat_2/C_hat_1, BGK p (1 sigma interval)")
        for k, rl in enumerate(ds["rl"].values):
            onset = float(d["steady_onset"].values[k])
            onset_text = f"{onset:.3g}" if math.isfinite(onset) else "never"
            r2, e2 = float(d["shape_ratio"].values[k, 2]), float(d["shape_ratio_err"].values[k, 2])
            p, lo, hi = (float(d[v].values[k]) for v in ("p_fit", "p_lo", "p_hi"))
            p_text = f"{p:.2f} ({lo:.2f} .. {hi:.2f})" if math.isfinite(p) else "no fit"
            steady = "steady" if int(d["steady_state"].values[k]) else "not steady"
            lines.append(f"{rl:>9.3g}  onset {onset_text:>6} ({steady:>10})  C_2/C_1 = {r2:.3g} +- {e2:.2g}  "
                         f"p = {p_text}")
    return "\n".join(lines)
