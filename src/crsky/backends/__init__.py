"""Execution backends: drivers that run the scalar kernels of :mod:`crsky.kernels`
over many particles.

Every backend exposes ``trace(positions, velocities, modes, sign, dtau, rl,
snapshot_steps) -> (positions, velocities)`` with the same meaning and units; see
:func:`crsky.backends.cpu.trace`.
"""

from __future__ import annotations

from ..errors import InputError

__all__ = ["BackendError", "BACKENDS", "get_backend", "resolve_backend"]

BACKENDS = ("auto", "cpu", "cuda")


class BackendError(RuntimeError):
    """A requested backend cannot run here (for example ``cuda`` without a GPU)."""


def cuda_simulated() -> bool:
    """True when numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba import config

    return bool(getattr(config, "ENABLE_CUDASIM", False))


def cuda_available() -> bool:
    """True when numba-cuda is importable and sees a GPU (or its simulator is enabled)."""
    try:
        from numba import cuda
    except ImportError:
        return False
    if cuda_simulated():
        return True
    try:
        return bool(cuda.is_available())
    except Exception:  # driver present but broken: no usable GPU
        return False


def resolve_backend(name: str) -> str:
    """Turn ``auto`` into a concrete backend name; check that ``cuda`` can run.

    Raises
    ------
    ValueError
        For an unknown name.
    BackendError
        For ``cuda`` without a usable GPU (never a silent CPU run).
    """
    if name not in BACKENDS:
        raise InputError(f"backend = {name!r}: must be one of {', '.join(BACKENDS)}")
    if name == "auto":
        # Never the simulator: it is for tests, thousands of times slower than the CPU.
        return "cuda" if cuda_available() and not cuda_simulated() else "cpu"
    if name == "cuda" and not cuda_available():
        raise BackendError(
            "backend 'cuda' requested but no CUDA GPU is usable here "
            "(install crsky[cuda] on a machine with an NVIDIA GPU, or use --backend cpu)"
        )
    return name


def get_backend(name: str):
    """The driver module of a concrete backend (``cpu`` or ``cuda``)."""
    name = resolve_backend(name)
    if name == "cpu":
        from . import cpu

        return cpu
    from . import cuda

    return cuda
