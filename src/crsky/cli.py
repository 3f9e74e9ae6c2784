"""The ``crsky`` command line.

Exit codes: 0 on success, 2 on bad input (one line on stderr naming the problem), 1 on
any other failure (one line). ``crsky --debug ...`` adds the Python traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import sys

from . import __version__
from .errors import InputError, NonFiniteError, StorageError

__all__ = ["main"]


class UsageError(InputError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _positive_finite(what: str):
    """An argparse type: a positive, finite number; ``what`` names it in the message."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
        if not (value > 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number ({what})")
        return value

    return parse


def _gradient_option(text: str) -> tuple[str, tuple[float, float, float]]:
    """``NAME=x,y,z`` of ``analyze --gradient``: a gradient g = grad n / n in 1/L_c."""
    name, sep, vector = text.partition("=")
    name = name.strip()
    if not sep or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=x,y,z (NAME of letters, digits, _ or -)")
    try:
        values = tuple(float(v) for v in vector.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: x,y,z must be three numbers (1/L_c)") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: x,y,z must be three finite numbers (1/L_c)")
    if not any(values):
        raise argparse.ArgumentTypeError(f"{text!r}: the gradient must not be zero")
    return name, values


def _K_option(text: str):
    """``analyze --K``: ``late``, ``running``, ``K_par,K_perp`` or nine numbers (row-major), in L_c c."""
    if text in ("late", "running"):
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 9) or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected late, running, K_par,K_perp or 9 numbers "
                                         "K_xx,K_xy,...,K_zz (L_c c)")
    if len(values) == 2:
        k_par, k_perp = values
        return ((k_perp, 0.0, 0.0), (0.0, k_perp, 0.0), (0.0, 0.0, k_par))
    return tuple(tuple(values[3 * i:3 * i + 3]) for i in range(3))


def _angle_option(text: str) -> float:
    """``analyze --gradient-angle DEG``: the angle (degrees, 0..180) between the gradient and B0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of degrees") from None
    if not (math.isfinite(value) and 0.0 <= value <= 180.0):
        raise argparse.ArgumentTypeError(f"{text!r}: the angle to B0 must be between 0 and 180 degrees")
    return value


def _analysis_gradients(extra, angles=(), config=None) -> dict | None:
    """Parallel and perpendicular, the ``[analysis]`` table of ``--config``, then the
    ``--gradient`` and ``--gradient-angle`` ones (None: the default pair)."""
    from .analysis import GRADIENT_PRESETS, angle_gradient_name, gradient_at_angle
    from .config import load_analysis_gradients

    gradients = (load_analysis_gradients(config) if config else None) or dict(GRADIENT_PRESETS)
    named = [(f"--gradient {name}", name, vector) for name, vector in extra or ()]
    named += [(f"--gradient-angle {a:g} ({angle_gradient_name(a)})", angle_gradient_name(a),
               tuple(gradient_at_angle(a))) for a in angles or ()]
    for option, name, vector in named:
        if name in gradients:
            raise UsageError(f"{option}: the name is taken (by a preset, the config or an earlier option)")
        gradients[name] = vector
    return None if set(gradients) == set(GRADIENT_PRESETS) else gradients


def _executor_options(args) -> dict:
    """``run_ensemble`` keywords of the executor options shared by ``run`` and ``reproduce``."""
    from .scheduler import CONNECT_TIMEOUT_S, check_scheduler_address

    if args.connect_timeout is not None and args.scheduler is None:
        raise UsageError("--connect-timeout applies only with --scheduler")
    if args.scheduler is not None:
        check_scheduler_address(args.scheduler)  # bad input before any warning or side effect
    timeout = CONNECT_TIMEOUT_S if args.connect_timeout is None else args.connect_timeout
    return {"workers": args.workers, "scheduler": args.scheduler, "connect_timeout": timeout}


def _add_executor_options(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask.distributed scheduler address, [tcp://]HOST:PORT")
    group.add_argument("--workers", type=_positive_int, default=1,
                       help="local worker processes (default 1: this process, all cores); "
                       "at most one per CPU core and per pending realisation")
    parser.add_argument("--connect-timeout", type=_positive_finite("seconds"), metavar="SECONDS",
                        help="seconds to wait for the scheduler to answer (default 30)")


def _local_workers(args, config) -> int:
    """Worker processes this machine will hold at most (for the memory estimate): the
    ensemble's cap of ``--workers`` (cores, realisations); 1 with a Dask scheduler."""
    from .ensemble import local_worker_count

    return 1 if args.scheduler else max(1, local_worker_count(args.workers, config.ensemble.realisations)[0])


def _cmd_extend(args) -> int:
    """``crsky run --out RUN --extend T_MAX [CONFIG]`` (docs/rundir.md, Extending a run)."""
    from .backends import resolve_backend
    from .config import estimate_cost, load_config, physics_warnings
    from .ensemble import check_extension, extend_run

    if args.force:
        raise UsageError("--force cannot be combined with --extend (extending keeps every realisation)")
    given = load_config(args.config, preset=args.preset) if args.config else None
    options = _executor_options(args)
    _, stored, extended = check_extension(args.out, args.extend, given)  # bad input before any note
    for warning in physics_warnings(extended):
        print(f"crsky run: warning: {warning.message}", file=sys.stderr)
    if stored is not None:  # None: an interrupted commit, nothing left to compute
        backend = resolve_backend(args.backend)
        cost = estimate_cost(extended, backend=backend, from_t_omega=stored.integration.t_max)
        print(f"crsky run: extension {cost.describe(backend)}", flush=True)
    store = extend_run(args.out, args.extend, given, backend=args.backend, progress=not args.quiet, **options)
    config = store.config()
    print(f"crsky run: {len(store.completed())}/{config.ensemble.realisations} realisations extended to "
          f"t Omega = {config.integration.t_max:g} ({config.integration.n_snapshots} snapshots) in {store.path}")
    return 0


def _cmd_run(args) -> int:
    from .backends import resolve_backend
    from .config import (LARGE_RUN_BYTES, check_resources, describe_physical, estimate_cost, load_config,
                         physics_warnings)
    from .ensemble import run_ensemble
    from .store import RunStore

    if args.extend is not None:
        return _cmd_extend(args)

    config = load_config(args.config, preset=args.preset)  # refuses unresolved resonant scales
    options = _executor_options(args)
    # before the run directory exists: a refused size leaves nothing behind
    workers = _local_workers(args, config)
    estimate = check_resources(config, args.out, workers=workers)
    if max(estimate.disk_total, estimate.memory_simulation, estimate.memory_analysis) >= LARGE_RUN_BYTES:
        print(f"crsky run: {estimate.describe(workers)}", file=sys.stderr)
    physical = describe_physical(config)
    if physical:
        print(f"crsky run: {physical}", file=sys.stderr)
    for warning in physics_warnings(config):
        print(f"crsky run: warning: {warning.message}", file=sys.stderr)
    # The exclusive lock for the whole run: a second run or an analyze is refused
    # (naming this process) until it ends; the OS releases it however it ends.
    with RunStore(args.out).lock(exclusive=True, create_dir=True):
        # once the run directory is ours: the cost of the whole run, on the backend that runs it
        # (stdout, with the run's result line; stderr keeps a failure to one line)
        backend = resolve_backend(args.backend)
        print(f"crsky run: {estimate_cost(config, backend=backend).describe(backend)}", flush=True)
        store = run_ensemble(config, args.out, backend=args.backend, force=args.force,
                             progress=not args.quiet, **options)
        if store.foreign_files:
            names = ", ".join(store.foreign_files[:5]) + (" ..." if len(store.foreign_files) > 5 else "")
            print(f"crsky: warning: --force kept {len(store.foreign_files)} files crsky did not write in "
                  f"{store.path}: {names}", file=sys.stderr)
    done = len(store.completed())
    print(f"crsky run: {done}/{config.ensemble.realisations} realisations complete in {store.path}")
    return 0


def _cmd_analyze(args) -> int:
    import os
    from pathlib import Path

    from .analysis import analyze, format_summary
    from .store import RunStore

    store = RunStore.existing(args.run_dir)  # a missing or foreign directory is bad input
    out_dir = Path(args.out) if args.out else store.path
    if args.out:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    # A read-only (archived) run without --out: analyse, print, and say where it could not write.
    writable = os.access(out_dir, os.W_OK) and not _read_only_fs(out_dir)
    with store.lock(exclusive=False, clean=writable and not args.out):
        _, summary = analyze(store.path, gradients=_analysis_gradients(args.gradient, args.gradient_angle,
                                                                       args.config), K=args.K,
                             progress=not args.json, out_dir=out_dir, write=writable, partial=args.partial)
    print(json.dumps(summary) if args.json else format_summary(summary))
    if not writable:
        raise StorageError(f"cannot write analysis.nc and summary.json into {out_dir} (read-only); the summary "
                           "above is complete: rerun with --out DIR to keep the files")
    if not args.json:
        print(f"\nwrote {out_dir}/analysis.nc and {out_dir}/summary.json")
    return 0


def _read_only_fs(path) -> bool:
    """Whether ``path`` is on a file system mounted read-only (os.access ignores that for root)."""
    import os

    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _cmd_plot(args) -> int:
    from .store import RunStore

    store = RunStore.existing(args.run_dir)  # before the heavy imports: bad input first
    from .analysis import SUMMARY_FILE, read_summary
    from .plots import make_figures

    noise = _observed_noise(args)
    fit = args.observed is not None and not args.no_fit
    with store.lock(exclusive=False, clean=True):  # no run may write while the figures are drawn
        paths = make_figures(args.run_dir, observed=args.observed, observed_noise=noise, fit_observed=fit,
                             formats=FIGURE_FORMATS[args.format])  # refuses without a current analysis
        _, regenerated = read_summary(args.run_dir)
    if regenerated:
        print(f"crsky plot: {SUMMARY_FILE} was not the pair of analysis.nc (missing, or of another analysis); "
              "remade it from analysis.nc", file=sys.stderr)
    _print_figures("crsky plot", paths, args.run_dir)
    if fit:
        from pathlib import Path

        from .observed import FIT_FILE, format_comparison

        fit_path = next(p for p in paths if Path(p).name == FIT_FILE)
        print(format_comparison(json.loads(Path(fit_path).read_text())))
    return 0


def _observed_noise(args):
    """``N = f_sky 4 pi / N_CR`` from ``--n-cr`` and ``--f-sky`` (both or neither), or None."""
    from .observed import noise_level

    given = [name for name, value in (("--n-cr", args.n_cr), ("--f-sky", args.f_sky)) if value is not None]
    if not given:
        return None
    if len(given) == 1:
        raise UsageError(f"{given[0]} needs {'--f-sky' if given[0] == '--n-cr' else '--n-cr'} as well: the noise "
                         "level is N = f_sky 4 pi / N_CR")
    if args.observed is None:
        raise UsageError("--n-cr and --f-sky are the noise level of an observed spectrum: give --observed FILE.csv")
    return noise_level(args.n_cr, args.f_sky)


def _cmd_observe(args) -> int:
    from .analysis.observatory import resolve_band, sky_direction
    from .store import RunStore

    band = resolve_band(args.band)  # bad input first, before the heavy work
    b0 = _angles(args.b0, "--b0")
    gradient = _angles(args.gradient, "--gradient")
    sky_direction(b0, args.frame, "--b0")
    sky_direction(gradient, args.frame, "--gradient")
    store = RunStore.existing(args.run_dir)
    from .analysis.observatory import run_observatory

    with store.lock(exclusive=False, clean=True):
        paths, text = run_observatory(args.run_dir, b0, gradient, band, frame=args.frame,
                                      remove_m0=not args.keep_m0, progress=not args.quiet)
    print(text)
    print(f"crsky observe: wrote {len(paths)} files")
    for path in paths:
        print(f"  {path}")
    return 0


def _angles(text: str, option: str) -> tuple[float, ...]:
    """``LON,LAT`` (degrees) or ``X,Y,Z`` of a direction option."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected LON,LAT in degrees or X,Y,Z") from None
    if len(values) not in (2, 3):
        raise UsageError(f"{option} {text!r}: expected LON,LAT in degrees or X,Y,Z")
    return values


def _print_figures(prog: str, paths, run_dir) -> None:
    """The figure files written (``make_figures`` removed the stale ones of its set)."""
    from pathlib import Path

    print(f"{prog}: wrote {len(paths)} files to {Path(run_dir) / 'figures'}/")
    for path in paths:
        print(f"  {Path(path).name}")


def _cmd_reproduce(args) -> int:
    from pathlib import Path

    from .analysis import analyze, format_summary
    from .config import check_resources, load_config
    from .ensemble import run_ensemble
    from .plots import make_figures
    from .store import RunStore

    out = Path(args.out or f"runs/reproduce-{args.preset}")
    config = load_config(args.config, preset=args.preset)
    gradients = _analysis_gradients(None, config=args.config)  # the file's [analysis] table, if any
    options = _executor_options(args)
    check_resources(config, out, workers=_local_workers(args, config))
    source = f"{args.config} over preset {args.preset}" if args.config else f"preset {args.preset}"
    print(f"crsky reproduce: {source} -> {out} "
          f"({config.ensemble.realisations} realisations x {config.particles.n_particles} particles, "
          f"t Omega to {config.integration.t_max:g}); rerun the same command to resume", file=sys.stderr)
    with RunStore(out).lock(exclusive=True, create_dir=True):
        run_ensemble(config, out, backend=args.backend, force=args.force, progress=not args.quiet, **options)
        # then the figures, from the analysis just written
        _, summary = analyze(out, gradients=gradients, progress=not args.quiet)
        paths = make_figures(out)
    print(format_summary(summary))
    print(f"\nsummary: {out / 'summary.json'}\nanalysis: {out / 'analysis.nc'}")
    _print_figures("figures", paths, out)
    return 0


def _cmd_scan(args) -> int:
    """``crsky scan CONFIG --out SCAN_DIR``: a rigidity scan (crsky.scan, docs/scan.md)."""
    from .scan import SCAN_FILE, format_scan, read_scan, run_scan

    plan = read_scan(args.config, preset=args.preset)  # every rigidity's configuration, before anything is written
    options = _executor_options(args)
    ds = run_scan(plan, args.out, backend=args.backend, progress=not args.quiet, **options)
    print(format_scan(ds))
    print(f"\ncrsky scan: {len(plan.points)} runs in {args.out}/rl_*; wrote {args.out}/{SCAN_FILE} and "
          f"{args.out}/figures/")
    return 0


def _cmd_bgk(args) -> int:
    from .bgk import bgk_ratio

    ratio = bgk_ratio(args.p, args.lmax)
    ells = list(range(1, args.lmax + 1))
    if args.json:
        print(json.dumps({"p": args.p, "ell": ells, "ratio": [float(r) for r in ratio]}))
    else:
        print(f"# BGK ansatz v_r(x) = nu (1 - x)^p, p = {args.p}: C_l / C_1")
        print(f"{'l':>6}  {'C_l/C_1':>22}")
        for ell, r in zip(ells, ratio):
            print(f"{ell:>6}  {r:>22.15e}")
    return 0


def _cmd_bench(args) -> int:
    from .backends import resolve_backend
    from .bench import format_row, record_throughput, run_benchmarks, table_footer, table_header

    backend = resolve_backend(args.backend)  # a missing GPU is reported before any work
    if args.json:
        results = run_benchmarks(backend=backend, quick=args.quick)
        print(json.dumps(results, indent=1))
    else:
        # Each case is printed once, as a table row when it has been measured.
        kernel = backend == "cuda"  # the CUDA cases also time the kernel alone
        print(table_header(kernel), flush=True)
        results = run_benchmarks(backend=backend, quick=args.quick,
                                 progress=lambda r: print(format_row(r, kernel), flush=True))
        print(table_footer(results))
    try:
        cache = record_throughput(results)  # what `crsky run` states its wall time from
    except OSError as exc:  # the measurement is printed; only the cache is lost
        print(f"crsky bench: warning: throughput not cached: {exc}", file=sys.stderr)
    else:
        if cache is None:
            print("crsky bench: throughput not cached: no case of the standard sizes was measured", file=sys.stderr)
        else:
            print(f"crsky bench: throughput of this machine cached in {cache}", file=sys.stderr)
    return 0


def _add_run_command(sub) -> None:
    run = sub.add_parser(
        "run", help="backtrack an ensemble of realisations into a run directory (resumes)",
        description="Backtrack cosmic rays through an ensemble of turbulent-field realisations. "
        "A config file overrides the preset key by key; an existing RUN_DIR of the same "
        "configuration is resumed.",
    )
    run.add_argument("config", nargs="?", help="TOML configuration file (optional)")
    run.add_argument("--out", required=True, help="run directory")
    run.add_argument("--preset", choices=["quick", "paper"], default="quick",
                     help="base configuration that CONFIG overrides (default: quick)")
    run.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="auto",
                     help="kernel backend (default: auto = cuda if a GPU is usable, else cpu)")
    _add_executor_options(run)
    run.add_argument("--force", action="store_true",
                     help="start over: remove the files crsky wrote in RUN_DIR (a crsky run only; other "
                     "files are kept) and run anew (docs/rundir.md)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--extend", type=_positive_finite("t Omega"), metavar="T_MAX",
                     help="continue the complete run in --out to t Omega = T_MAX (a whole number of steps, later "
                     "than its t_max; float64 output), adding log-spaced snapshots; CONFIG, if given, must be the "
                     "run's own; resumable like a run (docs/rundir.md)")
    run.set_defaults(func=_cmd_run)


def _add_analyze_command(sub) -> None:
    analyze = sub.add_parser(
        "analyze", help="diffusion tensors, maps, power spectra, noise, sum rules of a run",
        description="Analyse RUN_DIR (docs/analysis.md): verifies every realisation against the "
        "manifest, writes analysis.nc (xarray), then summary.json, into RUN_DIR (or --out DIR), and "
        "prints a summary table. A run with fewer realisations complete than configured is refused "
        "unless --partial is given.",
    )
    analyze.add_argument("run_dir", help="run directory written by crsky run")
    analyze.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    analyze.add_argument("--partial", action="store_true",
                         help="analyse an incomplete ensemble; the table, summary.json and analysis.nc "
                         "say 'N of M realisations' and complete = false")
    analyze.add_argument("--out", metavar="DIR",
                         help="write analysis.nc and summary.json to DIR instead of RUN_DIR (e.g. for a "
                         "read-only, archived run)")
    analyze.add_argument("--gradient", action="append", type=_gradient_option, metavar="NAME=x,y,z",
                         help="an extra density gradient g = grad n / n in 1/L_c (used as given, not "
                         "normalised), analysed in addition to parallel (z) and perpendicular (x); repeatable")
    analyze.add_argument("--gradient-angle", action="append", type=_angle_option, metavar="DEG",
                         help="an extra gradient in the x-z plane at DEG degrees (0..180) to B0, of the presets' "
                         "magnitude 1/L_c, named angleDEG; repeatable. Spectra at any angle also follow from "
                         "analysis.nc without a new analysis (crsky.analysis.angle_spectra, figure "
                         "angle_dependence)")
    analyze.add_argument("--config", metavar="FILE",
                         help="TOML file whose [analysis] table adds gradients: gradients = {NAME = [x, y, z]} "
                         "(1/L_c) and gradient_angles_deg = [0, 30, ...] (may be the run's config file; other "
                         "tables are not read here)")
    analyze.add_argument("--K", type=_K_option, default="late", metavar="late|running|K_par,K_perp|9 numbers",
                         help="diffusion tensor K (L_c c) in the -3 K p term of the maps: late (default) = the "
                         "ensemble K^s at the last snapshot, so the maps depend on the run's t_max; running = "
                         "K^s(T) at each snapshot; K_par,K_perp = diag(K_perp, K_perp, K_par); or the nine "
                         "components row by row. Give a fixed K to compare runs of different t_max at the "
                         "same T. Stored in analysis.nc (K_map, K_source) and summary.json (K_map)")
    analyze.set_defaults(func=_cmd_analyze)


#: ``crsky plot --format``: the matplotlib formats of each choice.
FIGURE_FORMATS = {"png": ("png",), "pdf": ("pdf",), "both": ("png", "pdf")}


def _add_plot_command(sub) -> None:
    plot = sub.add_parser("plot", help="figures of a run (Fig. 2, Fig. 3, sky maps, K(t), gyrotropy, angle to B0)",
                          description="Write PNG and PDF figures to RUN_DIR/figures/ from RUN_DIR/analysis.nc "
                          "alone; it must be the current analysis of the run (else: exit 2, run "
                          "`crsky analyze RUN_DIR` first).")
    plot.add_argument("run_dir", help="run directory written by crsky run")
    plot.add_argument("--observed", metavar="FILE.csv",
                      help="measured spectrum to overlay and fit (BGK eq. 4.7 with free normalisation and a "
                      "broken power law, also fitted to the simulation; results printed and stored in "
                      "figures/observed_fit.json): columns ell, C_ell, error or error_low,error_high[, noise] "
                      "(docs/observatories.md)")
    plot.add_argument("--n-cr", type=float, metavar="N_CR",
                      help="number of events of the observed spectrum: with --f-sky, its noise level "
                      "N = f_sky 4 pi / N_CR is drawn and only multipoles with C_ell > N are fitted")
    plot.add_argument("--f-sky", type=float, metavar="F",
                      help="effective sky fraction in (0, 1] holding the N_CR events (with --n-cr)")
    plot.add_argument("--no-fit", action="store_true",
                      help="draw the observed spectrum without fitting it (its error column may then be 0)")
    plot.add_argument("--format", choices=sorted(FIGURE_FORMATS), default="both",
                      help="file formats of the figures: png, pdf or both (default); figures of the other "
                      "format left from an earlier call are removed with the rest of the old set")
    plot.set_defaults(func=_cmd_plot)


def _add_observe_command(sub) -> None:
    observe = sub.add_parser(
        "observe", help="the sky as a ground-based observatory reports it: pseudo-C_l of a declination band",
        description="Orient the simulated sky on the celestial sphere (B0 and the gradient), keep a declination "
        "band, remove the m = 0 modes in equatorial coordinates and compute the pseudo-C_l of every "
        "realisation at the last snapshot (docs/observatories.md). Writes RUN_DIR/observatory/BAND.nc and "
        "RUN_DIR/figures/observatory_BAND.png/.pdf (full-sky C_l against the observatory's).")
    observe.add_argument("run_dir", help="run directory with its current analysis")
    observe.add_argument("--b0", required=True, metavar="LON,LAT",
                         help="direction of the regular field B0 (degrees; or X,Y,Z) in --frame")
    observe.add_argument("--gradient", required=True, metavar="LON,LAT",
                         help="direction of the cosmic-ray gradient grad n / n (degrees; or X,Y,Z) in --frame")
    observe.add_argument("--frame", choices=["galactic", "icrs"], default="galactic",
                         help="frame of --b0 and --gradient: galactic (l, b; default) or icrs (ra, dec)")
    observe.add_argument("--band", default="combined", metavar="BAND",
                         help="declination band: icecube (-90..-20), hawc (-30..64), combined (-90..64; default) or "
                         "DECMIN,DECMAX in degrees (write --band=-90,-30 when DECMIN is negative)")
    observe.add_argument("--keep-m0", action="store_true",
                         help="keep the m = 0 modes (default: removed, as ground-based detectors cannot measure them)")
    observe.add_argument("--quiet", action="store_true", help="no progress bar")
    observe.set_defaults(func=_cmd_observe)


def _add_reproduce_command(sub) -> None:
    reproduce = sub.add_parser("reproduce", help="run + analyze + plot: the paper's experiment",
                               description="Run the ensemble of the preset (or of CONFIG over it; "
                               "resumable), analyse it and write the figures; prints the summary table, "
                               "where the summary and analysis are and every figure file written.")
    reproduce.add_argument("config", nargs="?", help="TOML configuration file that overrides the preset "
                           "key by key (optional)")
    reproduce.add_argument("--preset", choices=["quick", "paper"], default="quick",
                           help="quick (minutes on a laptop, default) or paper (the paper's ensemble)")
    reproduce.add_argument("--out", metavar="DIR", help="run directory (default runs/reproduce-PRESET)")
    reproduce.add_argument("--force", action="store_true",
                           help="delete an existing run of another configuration in the run directory and "
                           "start over")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="auto",
                           help="kernel backend (default: auto = cuda if a GPU is usable, else cpu)")
    _add_executor_options(reproduce)
    reproduce.set_defaults(func=_cmd_reproduce)


def _add_scan_command(sub) -> None:
    scan = sub.add_parser(
        "scan", help="a rigidity scan: one run per r_L (or energy), each analysed, then scan.nc and figures",
        description="Run the [scan] table of CONFIG (rl = [...] or energy_tev = [...], optional t_max = [...]): "
        "one ordinary run directory SCAN_DIR/rl_<rl> per rigidity (resumed or adopted like crsky run), each "
        "analysed, then SCAN_DIR/scan.nc and SCAN_DIR/figures/ (docs/scan.md).")
    scan.add_argument("config", help="TOML configuration file with a [scan] table")
    scan.add_argument("--out", required=True, help="scan directory")
    scan.add_argument("--preset", choices=["quick", "paper"], default="quick",
                      help="base configuration that CONFIG overrides (default: quick)")
    scan.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="auto",
                      help="kernel backend (default: auto = cuda if a GPU is usable, else cpu)")
    _add_executor_options(scan)
    scan.add_argument("--quiet", action="store_true", help="no progress bars")
    scan.set_defaults(func=_cmd_scan)


def _add_bgk_command(sub) -> None:
    bgk = sub.add_parser("bgk", help="C_l / C_1 of the BGK-like ansatz (Mertsch & Ahlers 2015, eq. 4.7)",
                         description="Print l and C_l / C_1 for v_r(x) = nu (1 - x)^p.")
    bgk.add_argument("--p", type=float, required=True, help="exponent p, 0 < p < 1")
    bgk.add_argument("--lmax", type=int, required=True, help="largest multipole, >= 1")
    bgk.add_argument("--json", action="store_true", help="print JSON")
    bgk.set_defaults(func=_cmd_bgk)


def _add_bench_command(sub) -> None:
    bench = sub.add_parser("bench", help="kernel throughput (mode evaluations per second)",
                           description="Measure mode evaluations and particle steps per second "
                           "for 64, 256 and 1024 modes in both field precisions (float64, mixed); "
                           "compile time is reported separately. Ends with the estimated wall time of "
                           "the paper preset on this machine (its mode evaluations divided by the "
                           "measured mixed 256-mode rate).")
    bench.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="cpu",
                       help="where to measure (default cpu)")
    bench.add_argument("--quick", action="store_true",
                       help="one particle count, a tenth of the work, one timed run per case "
                       "(under 30 s on 2 cores once the kernels are compiled)")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crsky",
        description="Backtrack cosmic rays through synthetic turbulent magnetic fields; sky maps and "
        "angular power spectra of the small-scale anisotropy (Mertsch & Ahlers 2015). Code units: "
        "lengths in L_c, times as t Omega, diffusion coefficients in L_c c.",
    )
    parser.add_argument("--version", action="version", version=f"crsky {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on a failure, print the Python traceback (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run_command(sub)
    _add_analyze_command(sub)
    _add_plot_command(sub)
    _add_observe_command(sub)
    _add_reproduce_command(sub)
    _add_scan_command(sub)
    _add_bgk_command(sub)
    _add_bench_command(sub)
    for command in sub.choices.values():  # --debug also after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


#: errno values of a path the user gave that cannot be used as a path at all: bad
#: input (exit 2), not a failure. Other OSErrors (disk full, I/O) are failures.
_BAD_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP}


def _interrupted_message(exc: KeyboardInterrupt) -> str:
    """One line: what stopped the run, what is complete, how to resume."""
    # RunInterrupted names its signal; a plain KeyboardInterrupt (outside a run) does not
    what = f"interrupted by {exc}" if getattr(exc, "signum", None) is not None else "interrupted"
    if getattr(exc, "completed", None) is not None:
        what += f"; {exc.completed}/{exc.total} realisations complete in {exc.run_dir}"
    return f"{what}; run the same command again to resume"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crsky`` command; returns the exit code.

    Exit 0 on success; 2 on bad input (:class:`~crsky.errors.InputError`, an
    unusable backend, a path name too long for the file system); 1 on any other
    failure, non-finite results (:class:`~crsky.errors.NonFiniteError`) included.
    Every error is one line on stderr; ``--debug`` adds the traceback.
    """
    from .backends import BackendError, configure_cpu_vectors
    from .scheduler import SchedulerError

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # until the arguments are parsed
    parser = build_parser()
    try:
        configure_cpu_vectors()  # before anything imports numba
        args = parser.parse_args(argv)
        debug = args.debug
        return args.func(args)
    except (InputError, BackendError) as exc:  # ConfigError, RunDirError, UsageError included
        return _report(f"crsky: error: {exc}", 2, debug)
    except StorageError as exc:  # a write failed (full disk, read-only): one line
        return _report(f"crsky: error: {exc}", 1, debug)
    except KeyboardInterrupt as exc:  # RunInterrupted (SIGINT, SIGTERM) included
        return _report(f"crsky: {_interrupted_message(exc)}", getattr(exc, "exit_code", 130), debug)
    except (NonFiniteError, SchedulerError) as exc:  # a failure, not bad input: one line
        return _report(f"crsky: error: {exc}", 1, debug)
    except OSError as exc:
        if exc.errno in _BAD_PATH_ERRNOS:
            return _report(f"crsky: error: cannot use path {exc.filename}: {exc.strerror}", 2, debug)
        if _from_numba_cache(exc):
            return _report(f"crsky: failed: numba could not write its cache of compiled kernels ({exc.strerror}); "
                           "free space where crsky is installed, or set NUMBA_CACHE_DIR to a writable directory "
                           "with space", 1, debug)
        return _report(f"crsky: failed: {exc}" + ("" if debug else " (--debug for the traceback)"), 1, debug)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        return _report(f"crsky: failed: {type(exc).__name__}: {exc}"
                       + ("" if debug else " (--debug for the traceback)"), 1, debug)


def _from_numba_cache(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while numba saved a compiled kernel to its on-disk cache
    (a full disk or a file size limit there names no file of crsky's)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith("numba/core/caching.py"):
            return True
        tb = tb.tb_next
    return False


def _report(message: str, code: int, debug: bool) -> int:
    """Print ``message`` as one line on stderr (after the traceback with ``--debug``)."""
    if debug:
        import traceback

        traceback.print_exc()
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the exception said
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
