"""The one interface every backend exposes (:class:`Backend`), and its argument checks."""

from __future__ import annotations

import numpy as np

__all__ = ["Backend", "PRECISIONS", "check_precision", "check_trace_args"]

#: Field evaluations every backend offers: the float64 reference, and a mixed-precision
#: fast path (float32 cosines of phases reduced in float64; its algorithm differs
#: between the CPU and the GPU, both with a field error below 1e-6 of the rms field).
PRECISIONS = ("float64", "mixed")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`.

    Raises
    ------
    ValueError
        Naming the value and the allowed ones.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r}: must be one of {', '.join(PRECISIONS)}")
    return precision


def check_trace_args(x0, v0, modes, snapshot_steps):
    """The arguments of :meth:`Backend.trace_many` as contiguous float64 / int64
    arrays, shapes checked.

    Raises
    ------
    ValueError
        For mismatched shapes or snapshot steps that are not a non-empty, strictly
        increasing sequence of steps >= 0.
    """
    x0 = np.ascontiguousarray(x0, dtype=np.float64)
    v0 = np.ascontiguousarray(v0, dtype=np.float64)
    modes = np.ascontiguousarray(modes, dtype=np.float64)
    steps = np.ascontiguousarray(snapshot_steps, dtype=np.int64)
    if x0.ndim != 3 or x0.shape[2] != 3 or v0.shape != x0.shape:
        raise ValueError(f"x0 and v0 must have one shape (R, n, 3); got {x0.shape} and {v0.shape}")
    if modes.ndim != 3 or modes.shape[:2] != (len(x0), 7):
        raise ValueError(f"modes must have shape (R, 7, N) with R = {len(x0)}; got {modes.shape}")
    if steps.ndim != 1 or len(steps) == 0 or steps[0] < 0 or np.any(np.diff(steps) <= 0):
        raise ValueError("snapshot_steps must be a non-empty, strictly increasing sequence of steps >= 0")
    return x0, v0, modes, steps


class Backend:
    """A backend with its options (precision, threads, ...) fixed at construction.

    Every backend traces particles the same way, in the same units: charge sign
    ``sign`` forward in time, drift-kick-drift steps of :mod:`crsky.kernels`.

    Attributes
    ----------
    name : str
        ``"cpu"`` or ``"cuda"``.
    precision : str
        One of :data:`PRECISIONS`.
    last_kernel_seconds : float or None
        Run time of the last trace's kernel alone (without host-device copies), where
        the backend measures it (CUDA events); None otherwise.
    """

    name = ""
    precision = "float64"
    last_kernel_seconds = None

    def trace_many(self, x0, v0, modes, *, sign, dt, rl, snapshot_steps):
        """Integrate the particles of ``R`` realisations forward; record their state at
        given step counts.

        Parameters
        ----------
        x0, v0 : numpy.ndarray, shape (R, n, 3), float64
            Initial positions (``L_c``) and unit velocities (``c``).
        modes : numpy.ndarray, shape (R, 7, N), float64
            Field realisations (:func:`crsky.turbulence.make_modes`).
        sign : float
            Sign of the traced charge, +1 or -1.
        dt : float
            Step ``Omega dt``.
        rl : float
            ``r_L / L_c``.
        snapshot_steps : numpy.ndarray, shape (m,), int
            Strictly increasing step counts (>= 0) at which the state is recorded.

        Returns
        -------
        positions, velocities : numpy.ndarray, shape (R, m, n, 3)
            ``L_c`` and ``c`` at each snapshot. A realisation's result does not depend
            on the others traced with it.
        """
        raise NotImplementedError

    def trace(self, x0, v0, modes, *, sign, dt, rl, snapshot_steps):
        """:meth:`trace_many` of one realisation: ``x0, v0`` (n, 3), ``modes`` (7, N);
        returns positions and velocities of shape (m, n, 3)."""
        pos, vel = self.trace_many(np.asarray(x0, dtype=np.float64)[None], np.asarray(v0, dtype=np.float64)[None],
                                   np.asarray(modes, dtype=np.float64)[None], sign=sign, dt=dt, rl=rl,
                                   snapshot_steps=snapshot_steps)
        return pos[0], vel[0]

    def field_at_points(self, modes, points):
        """``B / B0`` at ``points`` (n, 3) in ``L_c`` as this backend's trace evaluates
        it (for the mixed paths: the reference point at the point itself); returns
        shape (n, 3)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} precision={self.precision}>"
