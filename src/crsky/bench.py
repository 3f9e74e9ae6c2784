"""Kernel throughput: mode evaluations and particle steps per second.

A case traces ``n_particles`` particles for ``n_steps`` steps through an isotropic
field of ``n_modes`` modes (defaults otherwise: ``r_L = 0.1``, the default ``Omega dt``),
recording 8 log-spaced snapshots as a real run does. The particles start at random
positions about 10 ``L_c`` from the origin so that the phases ``k . x`` are of order
10^3-10^4 rad, as late in a real run. The first call of each backend and precision
(compilation, or loading numba's on-disk cache) is timed separately and excluded from
the throughput; each case reports the best of ``repeats`` timed runs.

One mode evaluation is one ``A_n xi_n cos(k_n . x + beta_n)`` term of one particle at
one step, so ``mode_evals_per_s = particle_steps_per_s * n_modes``.

The machine is often shared: every case records the 1-minute load average before it
ran and ``cpu_share``, the CPU time the process got during the best run divided by
``wall time * threads`` (1.0: it had all its threads' cores all the time; well below
1: other processes took cores and the rate is low). ``docs/performance.md`` says how
the published numbers were taken (``benchmarks/clean_bench.py``).

``backend="cuda"`` (``crsky bench --backend cuda``) measures both precisions on the
GPU with larger cases (:data:`CUDA_WORK`, :data:`CUDA_PARTICLE_COUNTS`); each case
then records the GPU in ``device``, the kernel's own time (CUDA events) in
``kernel_seconds`` and ``kernel_mode_evals_per_s`` besides the wall time with the
host-device copies, and has no ``cpu_share``. Without a usable GPU
it raises :class:`crsky.backends.BackendError` (the CLI exits 2 with that message).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from .backends import PRECISIONS, get_backend, resolve_backend
from .config import DEFAULT_DT, TurbulenceConfig
from .turbulence import make_modes

__all__ = [
    "bench_case",
    "run_benchmarks",
    "format_table",
    "format_row",
    "table_header",
    "table_footer",
    "paper_mode_evaluations",
    "paper_estimate",
    "machine_info",
    "precisions_of",
    "start_state",
    "snapshot_steps",
    "device_name",
    "throughput_cache_path",
    "throughput_key",
    "record_throughput",
    "cached_throughput",
    "default_throughput",
    "DEFAULT_CPU_THROUGHPUT_PER_CORE",
]

#: Work per case (mode evaluations) by precision: about 1.5 s per case at the
#: measured rates (7e7/s float64, 3e9/s mixed on 2 cores); ``quick`` divides by 10.
WORK = {"float64": 1e8, "mixed": 4e9}
MODE_COUNTS = (64, 256, 1024)
PARTICLE_COUNTS = (768, 3072, 12288)
QUICK_PARTICLE_COUNTS = (3072,)
#: The same on the CUDA backend. Work: ~1 s per case if the mixed path reaches the
#: 1e12/s it is designed for (the float64 rate on a GPU is not measured yet; 3e10
#: bounds a case at 10 s down to 3e9/s). Particles: one realisation (12288) fills
#: ~10 % of an H100; 2^18 is what a run launches (``simulate.batch_size``); 2^20 runs
#: ~8 waves of resident blocks, so the last, partly filled wave costs little.
CUDA_WORK = {"float64": 3e10, "mixed": 1e12}
CUDA_PARTICLE_COUNTS = (12288, 262144, 1048576)
CUDA_QUICK_PARTICLE_COUNTS = (262144,)


def start_state(n_particles: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Benchmark start: positions normal with 10 ``L_c`` per axis (phases of order
    10^3-10^4 rad, as late in a run), isotropic unit velocities; shapes (n, 3)."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(scale=10.0, size=(n_particles, 3))
    vel = rng.normal(size=(n_particles, 3))
    vel /= np.linalg.norm(vel, axis=1)[:, None]
    return pos, vel


def snapshot_steps(n_steps: int, count: int = 8) -> np.ndarray:
    """``count`` log-spaced snapshot steps ending at ``n_steps`` (as a run records)."""
    steps = np.unique(np.geomspace(max(1, n_steps / 100), n_steps, count).astype(np.int64))
    steps[-1] = n_steps
    return steps


def precisions_of(backend: str) -> tuple[str, ...]:
    """Precisions a backend offers: ``float64`` and ``mixed`` on both the CPU and the
    CUDA backend (the same names; the two mixed algorithms differ, see
    :mod:`crsky.backends.cuda`)."""
    return PRECISIONS


def bench_case(
    n_modes: int,
    n_particles: int,
    n_steps: int,
    backend: str = "cpu",
    repeats: int = 3,
    precision: str = "float64",
) -> dict:
    """Time one case: the best of ``repeats`` runs after one (separately timed) first call."""
    backend = resolve_backend(backend)
    driver = get_backend(backend, precision)
    modes = make_modes(TurbulenceConfig(n_modes=n_modes), seed=0, realisation=0)
    pos, vel = start_state(n_particles)
    steps = snapshot_steps(n_steps)

    def trace(x0, v0, snapshots):
        return driver.trace(x0, v0, modes, sign=-1.0, dt=DEFAULT_DT, rl=0.1, snapshot_steps=snapshots)

    start = time.perf_counter()
    trace(pos[:2], vel[:2], np.array([1], dtype=np.int64))
    first_call = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    best, share, kernel_best = np.inf, None, None
    threads = _threads(backend)
    for _ in range(repeats):
        # On the GPU the wall time includes the host-device copies (trace returns
        # host arrays); the kernel alone is timed with CUDA events as well.
        start, cpu_start = time.perf_counter(), time.process_time()
        trace(pos, vel, steps)
        wall = time.perf_counter() - start
        if wall < best:
            best = wall
            share = (time.process_time() - cpu_start) / (wall * threads) if threads else None
        kernel_s = driver.last_kernel_seconds
        if kernel_s and (kernel_best is None or kernel_s < kernel_best):
            kernel_best = kernel_s
    particle_steps = n_particles * n_steps
    return {
        "n_modes": n_modes,
        "n_particles": n_particles,
        "n_steps": n_steps,
        "n_snapshots": len(steps),
        "seconds": best,
        "mode_evals_per_s": particle_steps * n_modes / best,
        "particle_steps_per_s": particle_steps / best,
        "first_call_s": first_call,
        "compiled": driver.compiled_on_first_call() if backend == "cpu" else None,
        "backend": backend,
        "dtype": precision,
        "precision": precision,
        "threads": _threads(backend),
        "cpu_share": share,
        "load_1min": load,
        "machine": machine_info()["summary"],
        "device": device_name(backend),
        # CUDA only (None elsewhere): the kernel alone, without host-device copies
        "kernel_seconds": kernel_best,
        "kernel_mode_evals_per_s": particle_steps * n_modes / kernel_best if kernel_best else None,
    }


def _threads(backend: str) -> int:
    if backend == "cpu":
        import numba

        return numba.get_num_threads()
    return 0


def device_name(backend: str) -> str | None:
    """The GPU a CUDA case runs on (``None`` on the CPU)."""
    if backend != "cuda":
        return None
    from numba import cuda

    from .backends import cuda_simulated

    if cuda_simulated():
        return "numba CUDA simulator"
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    return f"{name} (compute capability {device.compute_capability[0]}.{device.compute_capability[1]})"


def machine_info() -> dict:
    """CPU model (``lscpu`` model name), logical CPUs, SIMD width numba compiles for."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        import llvmlite.binding as ll
        import numba

        cpu_name = numba.config.CPU_NAME or ll.get_host_cpu_name()
        host = ll.get_host_cpu_features().flatten()
        override = numba.config.CPU_FEATURES or ""
        features = override if ("+avx" in override or numba.config.CPU_NAME) else host + "," + override

        def has(flag):  # the last mention wins, as in LLVM's feature strings
            marks = [f for f in features.split(",") if f[1:] == flag]
            return bool(marks) and marks[-1][0] == "+"

        simd = "avx512" if has("avx512f") else "avx2" if has("avx2") else "sse/other"
        if simd == "avx512" and not has("prefer-256-bit") and "-prefer-256-bit" in features:
            simd = "avx512 (512-bit vectors)"
        elif simd == "avx512":
            simd = "avx512 (256-bit vectors preferred)"
    except Exception:  # pragma: no cover
        cpu_name, simd = "unknown", "unknown"
    info = {"model": model, "cpus": os.cpu_count(), "llvm_cpu": cpu_name, "simd": simd}
    info["summary"] = f"{model}, {info['cpus']} cpus, LLVM target {cpu_name} [{simd}], {platform.node()}"
    return info


def run_benchmarks(
    backend: str = "cpu",
    quick: bool = False,
    progress=None,
    precisions: tuple[str, ...] | None = None,
    mode_counts: tuple[int, ...] = MODE_COUNTS,
    particle_counts: tuple[int, ...] | None = None,
    work: dict[str, float] | None = None,
) -> list[dict]:
    """Measure 64, 256 and 1024 modes at several particle counts, for each precision.

    The step count is chosen so that each case does about the same work
    (``work``, default :data:`WORK`, or :data:`CUDA_WORK` on the CUDA backend, mode
    evaluations per precision; a tenth with ``quick``, which also measures one
    particle count and takes one timed run instead of three). Default particle
    counts: :data:`PARTICLE_COUNTS` on the CPU, :data:`CUDA_PARTICLE_COUNTS` (enough
    threads to fill a GPU) on CUDA.

    ``progress``, if given, is called with each case's result as soon as it is
    measured (the command line prints it as a row of :func:`format_table`).

    Raises
    ------
    crsky.backends.BackendError
        For ``backend="cuda"`` without a usable GPU.
    """
    backend = resolve_backend(backend)
    on_gpu = backend == "cuda"
    work_per_case = dict(CUDA_WORK if on_gpu else WORK, **(work or {}))
    precisions = precisions_of(backend) if precisions is None else precisions
    if particle_counts is None:
        if on_gpu:
            particle_counts = CUDA_QUICK_PARTICLE_COUNTS if quick else CUDA_PARTICLE_COUNTS
        else:
            particle_counts = QUICK_PARTICLE_COUNTS if quick else PARTICLE_COUNTS
    results = []
    for precision in precisions:
        budget = work_per_case.get(precision, work_per_case["float64"]) / (10 if quick else 1)
        for n_modes in mode_counts:
            for n_particles in particle_counts:
                n_steps = max(2, int(budget / (n_modes * n_particles)))
                result = bench_case(n_modes, n_particles, n_steps, backend=backend,
                                    repeats=1 if quick else 3, precision=precision)
                if progress:
                    progress(result)
                results.append(result)
    return results


def _has_kernel_rates(results: list[dict]) -> bool:
    return any(r.get("kernel_mode_evals_per_s") for r in results)


def table_header(kernel: bool = False) -> str:
    """Column heads of :func:`format_table`; ``kernel`` adds the CUDA kernel-only rate."""
    return (f"{'backend':>7} {'dtype':>7} {'modes':>6} {'particles':>9} {'steps':>7} "
            f"{'mode evals/s':>13} {'particle steps/s':>16} {'first call s':>12} {'load':>5} {'cpu share':>9}"
            + (f" {'kernel evals/s':>14}" if kernel else ""))


def format_row(r: dict, kernel: bool = False) -> str:
    """One case of :func:`run_benchmarks` as a row under :func:`table_header`."""
    load = r.get("load_1min")
    share = r.get("cpu_share")
    rate = r.get("kernel_mode_evals_per_s")
    return (
        f"{r['backend']:>7} {r['dtype']:>7} {r['n_modes']:>6} {r['n_particles']:>9} {r['n_steps']:>7} "
        f"{r['mode_evals_per_s']:>13.3e} {r['particle_steps_per_s']:>16.3e} {r['first_call_s']:>12.2f} "
        f"{'' if load is None else f'{load:.1f}':>5} "
        f"{'' if share is None else f'{share:.2f}':>9}"
        + (f" {'' if rate is None else f'{rate:.3e}':>14}" if kernel else "")
    )


def paper_mode_evaluations() -> float:
    """Mode evaluations of the ``paper`` preset: realisations x particles x steps x modes.

    120 x 12288 x 20000 x 256 = 7.55e12, computed from :data:`crsky.config.PRESETS`
    so that it follows the preset.
    """
    from .config import resolve_config

    cfg = resolve_config(preset="paper")
    steps = round(cfg.integration.t_max / cfg.integration.dt)
    return float(cfg.ensemble.realisations) * cfg.particles.n_particles * steps * cfg.turbulence.n_modes


def paper_estimate(results: list[dict]) -> dict | None:
    """Estimated wall time of the ``paper`` preset from measured throughput.

    :func:`paper_mode_evaluations` divided by the measured rate of the ``mixed``
    precision (the presets' field) at the paper's 256 modes, taking the case whose
    particle count is closest to one paper realisation (12288). An estimate of the
    backtracking alone: it leaves out writing the files, the analysis and a machine
    that is busier (or idler) than during the benchmark.

    Returns
    -------
    dict or None
        ``mode_evaluations``, ``mode_evals_per_s``, ``seconds`` and the ``case``
        (modes, particles) it rests on; None when no mixed 256-mode case was measured.
    """
    from .config import resolve_config

    paper = resolve_config(preset="paper")
    cases = [r for r in results if r["precision"] == paper.integration.precision
             and r["n_modes"] == paper.turbulence.n_modes]
    if not cases:
        return None
    target = paper.particles.n_particles
    case = min(cases, key=lambda r: abs(math.log(r["n_particles"] / target)))
    evaluations = paper_mode_evaluations()
    return {"mode_evaluations": evaluations, "mode_evals_per_s": case["mode_evals_per_s"],
            "seconds": evaluations / case["mode_evals_per_s"],
            "case": {"n_modes": case["n_modes"], "n_particles": case["n_particles"],
                     "precision": case["precision"], "backend": case["backend"]}}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table_footer(results: list[dict]) -> str:
    """Lines under the table: the machine, and the estimated paper-preset wall time."""
    lines = []
    if results:
        lines.append(f"machine: {results[0]['machine']}; threads: {results[0]['threads']}")
        if results[0].get("device"):
            lines.append(f"device: {results[0]['device']}")
    estimate = paper_estimate(results)
    if estimate is not None:
        case = estimate["case"]
        lines.append(
            f"paper preset on this machine: about {_duration(estimate['seconds'])} (estimate: "
            f"{estimate['mode_evaluations']:.3g} mode evaluations / {estimate['mode_evals_per_s']:.3g} per s, "
            f"{case['backend']} {case['precision']} {case['n_modes']} modes {case['n_particles']} particles; "
            "backtracking only)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# Throughput cache: what `crsky bench` measured, for the cost estimate of `crsky run`
# ---------------------------------------------------------------------------------
#: File name of the throughput cache under the user cache directory.
THROUGHPUT_CACHE_FILE = "throughput.json"
#: Format version of the cache; entries of another version are ignored.
_CACHE_VERSION = 1

#: Mode evaluations per second and per core of an uncalibrated CPU: the paper preset's
#: whole-run rate on the 2-vCPU development VM (3.4e9 /s mixed, docs/performance.md;
#: float64 ~7e7 /s), divided by its 2 cores. A guess for another machine, to within a
#: factor of a few; ``crsky bench --quick`` replaces it with a measurement.
DEFAULT_CPU_THROUGHPUT_PER_CORE = {"mixed": 1.7e9, "float64": 3.5e7}


def throughput_cache_path() -> Path:
    """``$XDG_CACHE_HOME/crsky/throughput.json`` (default ``~/.cache/crsky/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crsky" / THROUGHPUT_CACHE_FILE


def throughput_key(backend: str, precision: str) -> dict:
    """What a measured throughput depends on: host, CPU model, LLVM target and vector
    width, numba threads, numba version, backend, precision (and the GPU on CUDA)."""
    import numba

    from .backends import cuda_available

    info = machine_info()
    # no GPU here: no device to name (and nothing measured on it in the cache)
    device = device_name(backend) if backend != "cuda" or cuda_available() else None
    return {"host": platform.node(), "cpu": info["model"], "llvm_cpu": info["llvm_cpu"], "simd": info["simd"],
            "threads": _threads(backend), "numba": numba.__version__, "backend": backend,
            "precision": precision, "device": device}


def _key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _read_cache(path: Path) -> dict:
    """The cache's entries (empty if missing, unreadable or of another format)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def record_throughput(results: list[dict], path: Path | None = None) -> Path | None:
    """Store the median ``mode_evals_per_s`` of :func:`run_benchmarks` ``results`` per
    backend and precision in the throughput cache (written atomically), keyed by
    :func:`throughput_key`; other machines' entries are kept.

    The median over the cases (64 to 1024 modes, the particle counts) is what a run
    of any mode count gets to within the spread of docs/performance.md, Scaling. Only
    cases of the standard sizes (:data:`MODE_COUNTS` and the particle counts of the
    CPU or CUDA benchmark) are recorded: a toy case (a few modes, a few particles) is
    dominated by overheads and would misstate every later run's wall time.

    Returns
    -------
    Path or None
        The cache file; ``None`` if no case of the standard sizes was measured
        (nothing is written).
    """
    standard = [r for r in results if r["n_modes"] in MODE_COUNTS
                and r["n_particles"] in (*PARTICLE_COUNTS, *CUDA_PARTICLE_COUNTS)]
    if not standard:
        return None
    path = throughput_cache_path() if path is None else Path(path)
    entries = _read_cache(path)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in standard:
        groups.setdefault((r["backend"], r["precision"]), []).append(r)
    for (backend, precision), cases in groups.items():
        key = throughput_key(backend, precision)
        entries[_key_text(key)] = {
            **key,
            "mode_evals_per_s": statistics.median(c["mode_evals_per_s"] for c in cases),
            "cases": len(cases),
            "load_1min": cases[0].get("load_1min"),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": _CACHE_VERSION, "entries": entries}, indent=1))
    os.replace(tmp, path)
    return path


def cached_throughput(backend: str, precision: str, path: Path | None = None) -> dict | None:
    """The cache entry of this machine, backend and precision, or ``None``.

    The entry holds ``mode_evals_per_s``, ``measured`` (time) and the key fields.
    """
    path = throughput_cache_path() if path is None else Path(path)
    entry = _read_cache(path).get(_key_text(throughput_key(backend, precision)))
    if not isinstance(entry, dict) or not isinstance(entry.get("mode_evals_per_s"), (int, float)):
        return None
    return entry if entry["mode_evals_per_s"] > 0 else None


def default_throughput(backend: str, precision: str) -> float | None:
    """Uncalibrated throughput (mode evaluations / s) of this machine: on the CPU
    :data:`DEFAULT_CPU_THROUGHPUT_PER_CORE` times the numba threads; ``None`` on CUDA
    (no GPU rate has been measured to default to)."""
    if backend != "cpu":
        return None
    return DEFAULT_CPU_THROUGHPUT_PER_CORE[precision] * _threads(backend)
def format_table(results: list[dict]) -> str:
    """A readable table of :func:`run_benchmarks` results, with :func:`table_footer`."""
    kernel = _has_kernel_rates(results)
    lines = [table_header(kernel)] + [format_row(r, kernel) for r in results]
    footer = table_footer(results)
    return "\n".join(lines + ([footer] if footer else []))
