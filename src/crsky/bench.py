"""Kernel throughput: mode evaluations and particle steps per second.

A case traces ``n_particles`` particles for ``n_steps`` steps through an isotropic
field of ``n_modes`` modes (SPEC defaults otherwise), starting at random positions
about 10 ``L_c`` from the origin so that the phases ``k . x`` are of order 10^3-10^4
rad, as late in a real run. The first call of a backend (compilation, or loading the
on-disk cache) is timed separately and excluded from the throughput.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from .backends import get_backend, resolve_backend
from .config import TurbulenceConfig
from .turbulence import make_modes

__all__ = ["bench_case", "run_benchmarks", "format_table"]


def _start_state(n_particles: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.normal(scale=10.0, size=(n_particles, 3))
    vel = rng.normal(size=(n_particles, 3))
    vel /= np.linalg.norm(vel, axis=1)[:, None]
    return pos, vel


def bench_case(n_modes: int, n_particles: int, n_steps: int, backend: str = "cpu", repeats: int = 3) -> dict:
    """Time one case; the best of ``repeats`` runs (after one warm-up call)."""
    backend = resolve_backend(backend)
    driver = get_backend(backend)
    modes = make_modes(TurbulenceConfig(n_modes=n_modes), seed=0, realisation=0)
    pos, vel = _start_state(n_particles)
    steps = np.array([n_steps // 2, n_steps], dtype=np.int64)
    start = time.perf_counter()
    driver.trace(pos[:2], vel[:2], modes, -1.0, 0.05, 0.1, np.array([1], dtype=np.int64))
    first_call = time.perf_counter() - start
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        driver.trace(pos, vel, modes, -1.0, 0.05, 0.1, steps)
        best = min(best, time.perf_counter() - start)
    particle_steps = n_particles * n_steps
    return {
        "n_modes": n_modes,
        "n_particles": n_particles,
        "n_steps": n_steps,
        "seconds": best,
        "mode_evals_per_s": particle_steps * n_modes / best,
        "particle_steps_per_s": particle_steps / best,
        "first_call_s": first_call,
        "backend": backend,
        "dtype": "float64",
        "threads": _threads(backend),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
    }


def _threads(backend: str) -> int:
    if backend == "cpu":
        import numba

        return numba.get_num_threads()
    return 0


def run_benchmarks(backend: str = "cpu", quick: bool = False, progress: bool = True) -> list[dict]:
    """Measure 64, 256 and 1024 modes at several particle counts.

    The step count is chosen so that each case does about the same work (about
    ``2e9`` mode evaluations, ``2e8`` with ``quick``).
    """
    work = 2e8 if quick else 2e9
    particle_counts = (768,) if quick else (768, 3072, 12288)
    results = []
    for n_modes in (64, 256, 1024):
        for n_particles in particle_counts:
            n_steps = max(2, int(work / (n_modes * n_particles)))
            result = bench_case(n_modes, n_particles, n_steps, backend=backend, repeats=1 if quick else 3)
            if progress:
                print(f"  {n_modes:5d} modes {n_particles:6d} particles: "
                      f"{result['mode_evals_per_s']:.3e} mode evals/s", flush=True)
            results.append(result)
    return results


def format_table(results: list[dict]) -> str:
    """A readable table of :func:`run_benchmarks` results."""
    lines = [f"{'backend':>7} {'dtype':>7} {'modes':>6} {'particles':>9} {'steps':>7} "
             f"{'mode evals/s':>13} {'particle steps/s':>16} {'first call s':>12}"]
    for r in results:
        lines.append(
            f"{r['backend']:>7} {r['dtype']:>7} {r['n_modes']:>6} {r['n_particles']:>9} {r['n_steps']:>7} "
            f"{r['mode_evals_per_s']:>13.3e} {r['particle_steps_per_s']:>16.3e} {r['first_call_s']:>12.2f}"
        )
    return "\n".join(lines)
