"""The ``crsky`` command line (SPEC section 7).

Exit codes: 0 on success, 2 on bad input (one line on stderr naming the problem, no
traceback), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import InputError

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


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def _executor_options(args) -> dict:
    """``run_ensemble`` keywords of the executor options shared by ``run`` and ``reproduce``."""
    from .scheduler import CONNECT_TIMEOUT_S

    if args.connect_timeout is not None and args.scheduler is None:
        raise UsageError("--connect-timeout applies only with --scheduler")
    timeout = CONNECT_TIMEOUT_S if args.connect_timeout is None else args.connect_timeout
    return {"workers": args.workers, "scheduler": args.scheduler, "connect_timeout": timeout}


def _add_executor_options(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask.distributed scheduler address, [tcp://]HOST:PORT")
    group.add_argument("--workers", type=_positive_int, default=1,
                       help="local worker processes (default 1: this process, all cores); "
                       "at most one per CPU core and per pending realisation")
    parser.add_argument("--connect-timeout", type=_positive_seconds, metavar="SECONDS",
                        help="seconds to wait for the scheduler to answer (default 30)")


def _cmd_run(args) -> int:
    from .config import load_config
    from .ensemble import run_ensemble

    config = load_config(args.config, preset=args.preset)
    options = _executor_options(args)
    store = run_ensemble(config, args.out, backend=args.backend, force=args.force, progress=not args.quiet,
                         **options)
    done = len(store.completed())
    print(f"crsky run: {done}/{config.ensemble.realisations} realisations complete in {store.path}")
    return 0


def _cmd_analyze(args) -> int:
    from .analysis import analyze, format_summary
    from .store import RunStore

    RunStore.existing(args.run_dir)  # a missing or foreign directory is bad input
    _, summary = analyze(args.run_dir, progress=not args.json)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
        print(f"\nwrote {args.run_dir}/analysis.nc and {args.run_dir}/summary.json")
    return 0


def _cmd_plot(args) -> int:
    from .store import RunStore

    RunStore.existing(args.run_dir)  # before the heavy imports: bad input first
    from .plots import make_figures

    paths = make_figures(args.run_dir, observed=args.observed)
    print(f"crsky plot: wrote {len(paths)} files to {args.run_dir}/figures/")
    return 0


def _cmd_reproduce(args) -> int:
    from pathlib import Path

    from .analysis import analyze, format_summary
    from .config import load_config
    from .ensemble import run_ensemble
    from .plots import make_figures

    out = Path(args.out or f"runs/reproduce-{args.preset}")
    config = load_config(None, preset=args.preset)
    options = _executor_options(args)
    print(f"crsky reproduce: preset {args.preset} -> {out} "
          f"({config.ensemble.realisations} realisations x {config.particles.n_particles} particles, "
          f"t Omega to {config.integration.t_max:g}); rerun the same command to resume", file=sys.stderr)
    run_ensemble(config, out, backend=args.backend, progress=True, **options)
    _, summary = analyze(out, progress=True)
    paths = make_figures(out)
    print(format_summary(summary))
    print(f"\nsummary: {out / 'summary.json'}\nanalysis: {out / 'analysis.nc'}\nfigures: {out / 'figures'}/ "
          f"({len(paths)} files)")
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
    from .bench import format_table, run_benchmarks

    results = run_benchmarks(backend=args.backend, quick=args.quick, progress=not args.json)
    print(json.dumps(results, indent=1) if args.json else format_table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crsky",
        description="Backtrack cosmic rays through synthetic turbulent magnetic fields; sky maps and "
        "angular power spectra of the small-scale anisotropy (Mertsch & Ahlers 2015). Code units: "
        "lengths in L_c, times as t Omega, diffusion coefficients in L_c c.",
    )
    parser.add_argument("--version", action="version", version=f"crsky {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
                     help="delete an existing run of another configuration in RUN_DIR and start over")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    analyze = sub.add_parser(
        "analyze", help="diffusion tensors, maps, power spectra, noise, sum rules of a run",
        description="Analyse RUN_DIR (SPEC section 4): writes RUN_DIR/analysis.nc (xarray) and "
        "RUN_DIR/summary.json, and prints a summary table.",
    )
    analyze.add_argument("run_dir", help="run directory written by crsky run")
    analyze.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    analyze.set_defaults(func=_cmd_analyze)

    plot = sub.add_parser("plot", help="figures of a run (Fig. 2, Fig. 3, sky maps, K(t))",
                          description="Write PNG and PDF figures to RUN_DIR/figures/ (analyses the run first "
                          "if RUN_DIR/analysis.nc is missing).")
    plot.add_argument("run_dir", help="run directory written by crsky run")
    plot.add_argument("--observed", metavar="FILE.csv",
                      help="measured spectrum to overlay: columns ell, C_ell, error[, noise]")
    plot.set_defaults(func=_cmd_plot)

    reproduce = sub.add_parser("reproduce", help="run + analyze + plot: the paper's experiment",
                               description="Run the preset's ensemble (resumable), analyse it and write "
                               "the figures; prints where the summary and figures are.")
    reproduce.add_argument("--preset", choices=["quick", "paper"], default="quick",
                           help="quick (minutes on a laptop, default) or paper (SPEC section 6)")
    reproduce.add_argument("--out", help="run directory (default runs/reproduce-PRESET)")
    reproduce.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="auto")
    _add_executor_options(reproduce)
    reproduce.set_defaults(func=_cmd_reproduce)

    bgk = sub.add_parser("bgk", help="C_l / C_1 of the BGK-like ansatz (seed eq. 4.7)",
                         description="Print l and C_l / C_1 for v_r(x) = nu (1 - x)^p.")
    bgk.add_argument("--p", type=float, required=True, help="exponent p, 0 < p < 1")
    bgk.add_argument("--lmax", type=int, required=True, help="largest multipole, >= 1")
    bgk.add_argument("--json", action="store_true", help="print JSON")
    bgk.set_defaults(func=_cmd_bgk)

    bench = sub.add_parser("bench", help="kernel throughput (mode evaluations per second)",
                           description="Measure mode evaluations and particle steps per second "
                           "for 64, 256 and 1024 modes; compile time is reported separately.")
    bench.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="cpu")
    bench.add_argument("--quick", action="store_true", help="fewer, shorter cases")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _interrupted_message(exc: KeyboardInterrupt) -> str:
    """One line: what stopped the run, what is complete, how to resume."""
    # RunInterrupted names its signal; a plain KeyboardInterrupt (outside a run) does not
    what = f"interrupted by {exc}" if getattr(exc, "signum", None) is not None else "interrupted"
    if getattr(exc, "completed", None) is not None:
        what += f"; {exc.completed}/{exc.total} realisations complete in {exc.run_dir}"
    return f"{what}; run the same command again to resume"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crsky`` command; returns the exit code."""
    from .backends import BackendError, configure_cpu_vectors
    from .scheduler import SchedulerError

    parser = build_parser()
    try:
        configure_cpu_vectors()  # before anything imports numba
        args = parser.parse_args(argv)
        return args.func(args)
    except (InputError, BackendError) as exc:  # ConfigError, RunDirError, UsageError included
        print(f"crsky: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # RunInterrupted (SIGINT, SIGTERM) included
        print(f"crsky: {_interrupted_message(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except SchedulerError as exc:  # a well-formed address where no Dask scheduler answers
        print(f"crsky: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        import traceback

        traceback.print_exc()
        print(f"crsky: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
