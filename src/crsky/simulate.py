"""One realisation: HEALPix directions -> snapshots of ``x(-T)`` and ``p(-T)``.

A cosmic ray observed at the origin at ``t = 0`` with momentum direction ``p`` is
traced back in time. Backtracking a charge ``q`` is forward integration of charge
``-q`` from the origin with initial velocity ``-p``; the momentum direction at
``t = -T`` is minus the traced velocity at ``tau = Omega T`` (docs/conventions.md).
:func:`backtrack_many` is the one place that reversal is made.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import healpy as hp
import numpy as np

from .backends import Backend, get_backend
from .config import ConfigError, RunConfig, _check_steps
from .errors import NonFiniteError
from .turbulence import make_modes

__all__ = [
    "pixel_directions",
    "snapshot_schedule",
    "extension_schedule",
    "snapshot_stages",
    "run_schedule",
    "extension_snapshot_count",
    "extend_config",
    "trace",
    "backtrack",
    "backtrack_many",
    "Realisation",
    "simulate_realisation",
    "simulate_realisations",
    "continue_realisations",
    "check_finite",
    "batch_size",
]


def pixel_directions(nside: int) -> np.ndarray:
    """Unit vectors of the HEALPix pixel centres, RING ordering, shape ``(12 nside^2, 3)``."""
    return np.ascontiguousarray(np.stack(hp.pix2vec(nside, np.arange(hp.nside2npix(nside))), axis=1))


def snapshot_schedule(t_min: float, t_max: float, n_snapshots: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced snapshot times on whole steps, the last one at ``t_max``.

    Parameters
    ----------
    t_min, t_max : float
        First and last snapshot, ``Omega * T``; ``t_max`` is a whole number of steps
        (checked by :mod:`crsky.config`).
    n_snapshots : int
        Number of snapshots (``1`` gives ``t_max`` alone).
    dt : float
        Step ``Omega * dt``.

    Returns
    -------
    steps : numpy.ndarray of int64
        Strictly increasing step counts from the step nearest ``t_min`` (at least 1)
        to ``round(t_max / dt)``. Each snapshot is rounded to its nearest step; where
        that repeats a count, the later snapshot moves up by whole steps, and where
        this would pass ``t_max`` the earlier ones move down instead.
    times : numpy.ndarray of float64
        The actual snapshot times ``steps * dt`` (``Omega * T``).

    Raises
    ------
    ValueError
        If ``n_snapshots`` distinct steps do not fit between ``t_min`` and ``t_max``
        (the configuration refuses such a schedule up front).
    """
    last = int(round(t_max / dt))
    if n_snapshots == 1:
        targets = np.array([t_max])
    else:
        targets = np.geomspace(t_min, t_max, n_snapshots)
    steps = np.maximum(np.rint(targets / dt).astype(np.int64), 1)
    first = int(steps[0])
    for j in range(1, len(steps)):
        steps[j] = max(steps[j], steps[j - 1] + 1)
    steps[-1] = min(steps[-1], last)
    for j in range(len(steps) - 2, -1, -1):
        steps[j] = min(steps[j], steps[j + 1] - 1)
    if steps[0] < first or steps[-1] != last:
        raise ValueError(
            f"{n_snapshots} snapshots do not fit on distinct steps of dt = {dt} between t_min = {t_min} "
            f"and t_max = {t_max}"
        )
    return steps, steps * dt


def extension_schedule(t_from: float, t_to: float, n_added: int, dt: float) -> np.ndarray:
    """Step counts of the snapshots an extension from ``t_from`` to ``t_to`` adds.

    The ``n_added`` snapshots are log-spaced after ``t_from`` (excluded) up to
    ``t_to`` (included, the last one), on distinct whole steps: the snapshots
    :func:`snapshot_schedule` places from ``t_from`` to ``t_to`` with ``n_added + 1``
    points, without the first (``t_from``, the extended run's last snapshot).

    Returns
    -------
    numpy.ndarray of int64, shape (n_added,)
        Strictly increasing step counts, all above ``round(t_from / dt)``, the last
        ``round(t_to / dt)``.
    """
    return snapshot_schedule(t_from, t_to, n_added + 1, dt)[0][1:]


def _stage_bounds(integ) -> list[dict]:
    """``{"t_max", "n_snapshots"}`` at the end of every stage, the run's own last."""
    return [*(integ.extended_from or ()), {"t_max": integ.t_max, "n_snapshots": integ.n_snapshots}]


def snapshot_stages(integ) -> list[np.ndarray]:
    """Snapshot step counts of each stage of a run (one stage unless extended).

    The first stage is :func:`snapshot_schedule` from ``t_min`` to its ``t_max``;
    each extension adds :func:`extension_schedule` from the previous stage's
    ``t_max`` to its own (``[integration] extended_from``).

    Parameters
    ----------
    integ : crsky.config.IntegrationConfig

    Returns
    -------
    list of numpy.ndarray of int64
        Absolute step counts, strictly increasing across the stages.
    """
    bounds = _stage_bounds(integ)
    stages = [snapshot_schedule(integ.t_min, bounds[0]["t_max"], bounds[0]["n_snapshots"], integ.dt)[0]]
    for before, stage in zip(bounds, bounds[1:]):
        stages.append(extension_schedule(before["t_max"], stage["t_max"],
                                         stage["n_snapshots"] - before["n_snapshots"], integ.dt))
    return stages


def run_schedule(integ) -> tuple[np.ndarray, np.ndarray]:
    """All snapshots of a run: step counts (int64) and times ``steps * dt`` (``Omega T``);
    :func:`snapshot_schedule` for a run never extended."""
    steps = np.concatenate(snapshot_stages(integ))
    return steps, steps * integ.dt


def extension_snapshot_count(integ, t_max: float) -> int:
    """Snapshots an extension of a run to ``t_max`` adds: the density per decade of
    the run's first stage, ``(n - 1) / log10(t_max_1 / t_min)``, over the decades
    from the run's ``t_max`` to the new one, rounded, at least 1 and at most the
    number of steps in between. A first stage of one snapshot adds one (``t_max``).
    """
    first = _stage_bounds(integ)[0]
    available = max(1, int(round((t_max - integ.t_max) / integ.dt)))
    if first["n_snapshots"] < 2 or first["t_max"] <= integ.t_min:
        return 1
    per_decade = (first["n_snapshots"] - 1) / math.log10(first["t_max"] / integ.t_min)
    return min(available, max(1, int(round(per_decade * math.log10(t_max / integ.t_max)))))


def extend_config(config: RunConfig, t_max: float) -> RunConfig:
    """The configuration of ``config``'s run extended to ``t_max`` (``Omega T``).

    ``t_max`` and ``n_snapshots`` become the extended run's, and the stage that
    ended at the old ``t_max`` is appended to ``[integration] extended_from``; the
    added snapshots follow :func:`extension_snapshot_count`. Everything else is
    unchanged.

    Raises
    ------
    ConfigError
        ``t_max`` is not finite, not later than the run's ``t_max``, not a whole
        number of steps, or above the step limit.
    """
    integ = config.integration
    if not (math.isfinite(t_max) and t_max > integ.t_max):
        raise ConfigError(f"--extend {t_max!r}: must be a finite t Omega later than the run's t_max = "
                          f"{integ.t_max:g}")
    extended = dataclasses.replace(
        integ, t_max=float(t_max),
        extended_from=(*(integ.extended_from or ()), {"t_max": integ.t_max, "n_snapshots": integ.n_snapshots}),
    )
    try:
        _check_steps(dataclasses.replace(extended, n_snapshots=1))  # whole steps, step limit
    except ConfigError as exc:
        raise ConfigError(f"--extend: {exc}") from None
    extended = dataclasses.replace(extended,
                                   n_snapshots=integ.n_snapshots + extension_snapshot_count(integ, t_max))
    return dataclasses.replace(config, integration=extended)


def trace(positions, velocities, modes, rl, dt, snapshot_steps, sign=1, backend="cpu", precision="float64"):
    """Forward integration of particles of charge sign ``sign`` (no reversal).

    Parameters
    ----------
    positions, velocities : array_like, shape (n, 3)
        Initial positions (``L_c``) and unit velocities.
    modes : numpy.ndarray, shape (7, N)
        Field realisation (:func:`crsky.turbulence.make_modes`).
    rl : float
        ``r_L / L_c``.
    dt : float
        Step ``Omega * dt``.
    snapshot_steps : array_like of int
        Strictly increasing step counts to record.
    sign : int
        Charge sign of the traced particle.
    backend : str or crsky.backends.Backend
        ``cpu``, ``cuda`` or ``auto`` (with ``precision``), or a backend object.
    precision : {"float64", "mixed"}
        Field evaluation, on either backend. The library's default is ``float64``,
        the reference; every preset, and so the command line, uses ``mixed``, the
        fast path (~30x faster on the CPU, statistically the same results,
        docs/performance.md): pass ``precision="mixed"`` to get what ``crsky run``
        computes. The mixed algorithm differs between backends
        (:mod:`crsky.backends.cpu_mixed`, :mod:`crsky.backends.cuda`), both with a
        field error below 1e-6 of the rms field.

    Returns
    -------
    positions, velocities : numpy.ndarray, shape (m, n, 3)
    """
    return _backend(backend, precision).trace(positions, velocities, modes, sign=float(sign), dt=dt, rl=rl,
                                              snapshot_steps=snapshot_steps)


def _backend(backend, precision: str) -> Backend:
    return backend if isinstance(backend, Backend) else get_backend(backend, precision)


def backtrack_many(directions, modes, rl, dt, snapshot_steps, charge_sign=1, backend="cpu", precision="float64",
                   start=None):
    """Backtrack cosmic rays observed at the origin with momentum ``directions``
    through each of ``R`` field realisations (one call of the backend's
    ``trace_many``).

    Parameters
    ----------
    directions : array_like, shape (n, 3)
        Observed momentum directions (unit vectors).
    modes : numpy.ndarray, shape (R, 7, N)
        Field realisations.
    rl, dt, snapshot_steps, backend, precision
        As in :func:`trace`.
    charge_sign : int
        Sign of the observed cosmic ray's charge.
    start : tuple of numpy.ndarray, optional
        ``(x, p)``, shape (R, n, 3) each: continue the backtracking from positions
        ``x(-T0)`` and momentum directions ``p(-T0)`` (a run's last snapshot) instead
        of the origin and ``directions``; ``snapshot_steps`` then count from ``T0``.
        In float64 the continuation is bitwise the straight trace, whose state is
        exactly ``(x, -p)`` at every step.

    Returns
    -------
    x : numpy.ndarray, shape (R, m, n, 3)
        Positions ``x(-T_j)`` in ``L_c``.
    p : numpy.ndarray, shape (R, m, n, 3)
        Momentum directions ``p(-T_j)`` (unit vectors).
    """
    directions = np.asarray(directions, dtype=np.float64)
    modes = np.asarray(modes, dtype=np.float64)
    shape = (len(modes), *directions.shape)
    if start is None:
        x0, p0 = np.zeros(shape), np.broadcast_to(directions, shape)
    else:
        x0, p0 = (np.asarray(a, dtype=np.float64) for a in start)
    # Backtracking: the opposite charge with velocity -p, forward in time.
    x, u = _backend(backend, precision).trace_many(
        x0, -p0, modes, sign=-float(charge_sign), dt=dt, rl=rl, snapshot_steps=snapshot_steps,
    )
    return x, -u


def backtrack(directions, modes, rl, dt, snapshot_steps, charge_sign=1, backend="cpu", precision="float64"):
    """:func:`backtrack_many` through one realisation ``modes`` (7, N).

    The default ``precision="float64"`` is the reference field; the presets (and
    ``crsky run``) use ``"mixed"``, ~30x faster (see :func:`trace`).

    Returns
    -------
    x : numpy.ndarray, shape (m, n, 3)
        Positions ``x(-T_j)`` in ``L_c``.
    p : numpy.ndarray, shape (m, n, 3)
        Momentum directions ``p(-T_j)`` (unit vectors).
    """
    x, p = backtrack_many(directions, np.asarray(modes)[None], rl, dt, snapshot_steps, charge_sign=charge_sign,
                          backend=backend, precision=precision)
    return x[0], p[0]


@dataclass(frozen=True)
class Realisation:
    """Result of one field realisation.

    Attributes
    ----------
    index : int
        Realisation index.
    t_omega : numpy.ndarray, shape (m,)
        Snapshot times ``Omega T``.
    x : numpy.ndarray, shape (m, npix, 3)
        ``x(-T)`` in ``L_c`` for each pixel (RING order).
    p : numpy.ndarray, shape (m, npix, 3)
        ``p(-T)``, unit vectors.
    seconds : float
        Wall time of the integration.
    backend : str
        Backend that ran it.
    """

    index: int
    t_omega: np.ndarray
    x: np.ndarray
    p: np.ndarray
    seconds: float
    backend: str


def simulate_realisation(config: RunConfig, index: int, backend: str = "cpu") -> Realisation:
    """Backtrack all pixels of realisation ``index`` of a run."""
    return simulate_realisations(config, [index], backend)[0]


def batch_size(config: RunConfig, backend: str) -> int:
    """Realisations per kernel launch: 1 on the CPU; on a GPU enough to give about
    2^18 threads (a large GPU holds ~2^17-2^18 resident threads)."""
    if backend != "cuda":
        return 1
    return max(1, (1 << 18) // config.particles.n_particles)


def simulate_realisations(config: RunConfig, indices, backend: str = "cpu") -> list[Realisation]:
    """Backtrack several realisations in one call of the backend per stage (on the
    CUDA backend, one launch per stage; one stage unless the run was extended).

    An extended run (``[integration] extended_from``) is traced stage by stage, each
    from the state at the end of the previous one, as ``crsky run --extend`` did:
    so a recomputed realisation has the bits of the extended one in every precision.

    The result of each realisation does not depend on which others share its call.
    ``seconds`` of each is the wall time of the call divided by their number.
    """
    return _trace_stages(config, indices, snapshot_stages(config.integration), None, backend)


def continue_realisations(config: RunConfig, indices, x_last, p_last, backend: str = "cpu") -> list[Realisation]:
    """Continue realisations of a run from their state at the end of its previous
    stage through its last stage (the snapshots ``crsky run --extend`` adds).

    Parameters
    ----------
    config : RunConfig
        The extended run's configuration (:func:`extend_config`).
    indices : list of int
        Realisation indices.
    x_last, p_last : array_like, shape (len(indices), npix, 3), float64
        ``x(-T)`` (``L_c``) and ``p(-T)`` at the previous stage's ``t_max``, exactly as
        stored (float64 output).

    Returns
    -------
    list of Realisation
        The added snapshots only.
    """
    stages = snapshot_stages(config.integration)
    if len(stages) < 2:
        raise ValueError("continue_realisations needs an extended configuration ([integration] extended_from)")
    start = (np.asarray(x_last, dtype=np.float64), np.asarray(p_last, dtype=np.float64))
    return _trace_stages(config, indices, stages[-1:], start, backend, origin_step=int(stages[-2][-1]))


def _trace_stages(config: RunConfig, indices, stages, start, backend: str, origin_step: int = 0) -> list[Realisation]:
    """Trace realisations ``indices`` through ``stages`` (absolute step counts), each
    stage from the last state of the one before (``start`` at ``origin_step`` first,
    or the origin at step 0)."""
    driver = get_backend(backend, config.integration.precision)
    integ = config.integration
    directions = pixel_directions(config.particles.nside)
    modes = np.stack([make_modes(config.turbulence, config.ensemble.seed, j) for j in indices])
    for j, m in zip(indices, modes):
        if not np.isfinite(m).all():
            raise NonFiniteError(
                f"realisation {j}: the field modes are not finite (wavenumbers or amplitudes out of the "
                f"range of float64); check [turbulence] sigma2 = {config.turbulence.sigma2!r}, "
                f"gamma = {config.turbulence.gamma!r}, lambda_min = {config.turbulence.lambda_min!r}, "
                f"lambda_max = {config.turbulence.lambda_max!r}"
            )
    start_time = time.perf_counter()
    xs, ps = [], []
    for steps in stages:
        x, p = backtrack_many(directions, modes, config.particles.rl, integ.dt, steps - origin_step,
                              charge_sign=config.charge_sign, backend=driver, start=start)
        xs.append(x)
        ps.append(p)
        start, origin_step = (x[:, -1], p[:, -1]), int(steps[-1])
    x = xs[0] if len(xs) == 1 else np.concatenate(xs, axis=1)
    p = ps[0] if len(ps) == 1 else np.concatenate(ps, axis=1)
    times = np.concatenate(stages) * integ.dt
    seconds = (time.perf_counter() - start_time) / max(len(indices), 1)
    out = [Realisation(j, times, x[k], p[k], seconds, driver.name) for k, j in enumerate(indices)]
    for result in out:
        check_finite(result, config)
    return out


def check_finite(result: Realisation, config: RunConfig) -> None:
    """Raise :class:`~crsky.errors.NonFiniteError` if ``x`` or ``p`` of a realisation
    holds NaN or infinity (one pass over the arrays, small next to the integration).

    The message names the realisation, the first snapshot affected and how many
    particles, and the inputs that usually cause it.
    """
    bad = ~(np.isfinite(result.x).all(axis=2) & np.isfinite(result.p).all(axis=2))  # (m, npix)
    if not bad.any():
        return
    first = int(np.argmax(bad.any(axis=1)))
    t, p, i = config.turbulence, config.particles, config.integration
    raise NonFiniteError(
        f"realisation {result.index}: {int(bad[first].sum())} of {bad.shape[1]} particles have non-finite "
        f"positions or momenta from t Omega = {result.t_omega[first]:g} on (likely an overflow: check "
        f"[turbulence] sigma2 = {t.sigma2!r}, lambda_min = {t.lambda_min!r}, [particles] rl = {p.rl!r}, "
        f"[integration] dt = {i.dt!r}); nothing of it was written"
    )
