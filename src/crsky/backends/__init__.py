"""Execution backends: loops that run the scalar kernels of :mod:`crsky.kernels`
over many particles.

:func:`get_backend` returns a :class:`Backend` with its options fixed; every backend
exposes the same calls, ``trace_many(x0, v0, modes, *, sign, dt, rl,
snapshot_steps)``, ``trace(...)`` (one realisation) and ``field_at_points(modes,
points)``, with the same meaning and units.

One module per execution mode: :mod:`~crsky.backends.cpu_float64`,
:mod:`~crsky.backends.cpu_mixed` (their common driver :mod:`~crsky.backends.cpu`) and
:mod:`~crsky.backends.cuda` (both precisions in one kernel body). Mode-array layouts,
all from the float64 ``(7, N)`` modes of :func:`crsky.turbulence.make_modes`:
``turns_soa`` (4, N) and ``modes32_soa`` (6, N), one row per component, of the CPU
mixed path (:func:`crsky.backends.cpu_mixed.mode_arrays_soa`); ``turns_aos`` and
``amps_aos`` (N, 4), one row per mode, of the GPU mixed path
(:func:`crsky.backends.cuda.mode_arrays_aos`).
"""

from __future__ import annotations

import os
import sys

from ..errors import InputError
from .interface import PRECISIONS, Backend

__all__ = [
    "Backend",
    "PRECISIONS",
    "BackendError",
    "BACKENDS",
    "VECTOR_BITS_ENV",
    "configure_cpu_vectors",
    "cuda_available",
    "cuda_simulated",
    "cuda_unavailable_reason",
    "get_backend",
    "resolve_backend",
    "wide_vector_features",
]

BACKENDS = ("auto", "cpu", "cuda")


class BackendError(RuntimeError):
    """A requested backend cannot run here (for example ``cuda`` without a GPU)."""


#: Environment variable for the CPU vector width the command line asks numba for:
#: ``auto`` (default: 512 bits where the CPU has AVX-512), ``512`` or ``256``.
VECTOR_BITS_ENV = "CRSKY_VECTOR_BITS"


def wide_vector_features(host_features: str, environ) -> str | None:
    """The ``NUMBA_CPU_FEATURES`` value that makes LLVM vectorise with 512-bit
    registers, or None to leave numba's default (256-bit vectors even on AVX-512 CPUs).

    LLVM's tuning for recent Intel server CPUs prefers 256-bit vectors; the mixed
    path is ~30 % faster with 512-bit ones (``docs/performance.md``).
    Returns None when the CPU lacks AVX-512, when the user has set
    ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` (theirs wins), or when
    ``CRSKY_VECTOR_BITS=256``.

    Parameters
    ----------
    host_features : str
        LLVM's feature string of the host (``+avx2,-avx512f,...``).
    environ : mapping
        The environment to read.

    Raises
    ------
    InputError
        For a ``CRSKY_VECTOR_BITS`` other than ``auto``, ``256`` or ``512``.
    """
    choice = environ.get(VECTOR_BITS_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "256", "512"):
        raise InputError(f"{VECTOR_BITS_ENV} = {choice!r}: must be auto, 256 or 512")
    if choice == "256" or environ.get("NUMBA_CPU_FEATURES") or environ.get("NUMBA_CPU_NAME"):
        return None
    flags = host_features.split(",")
    if "+avx512f" not in flags:
        return None  # choice "512" on a CPU without AVX-512: nothing to widen
    return host_features + ",-prefer-256-bit"


def configure_cpu_vectors(environ=None) -> str:
    """Before numba is imported: ask it for 512-bit vectors on AVX-512 CPUs.

    The command line calls this first thing, so that a whole ``crsky`` process (and the
    Dask workers it starts, which inherit its environment) compiles the kernels for
    one vector width. Library users get numba's default unless they set
    ``NUMBA_CPU_FEATURES`` themselves (numba reads it once, at import). Vector width
    changes only the order of float32 additions in the mixed field sum (rounding
    level, ``docs/performance.md``). Numba's on-disk cache keys compiled code by CPU
    features, so the two builds never mix.

    Returns
    -------
    str
        What was done, for logs.
    """
    environ = os.environ if environ is None else environ
    if "numba" in sys.modules:
        return "numba already imported: its vector width is left as it is"
    try:
        import llvmlite.binding as ll

        host = ll.get_host_cpu_features().flatten()
    except Exception:  # pragma: no cover - exotic platforms: keep numba's default
        return "host CPU features unknown: numba's default vector width"
    features = wide_vector_features(host, environ)
    if features is None:
        return "numba's default vector width"
    environ["NUMBA_CPU_FEATURES"] = features
    return "512-bit vectors (NUMBA_CPU_FEATURES=<host>,-prefer-256-bit)"


def cuda_simulated() -> bool:
    """True when numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba import config

    return bool(getattr(config, "ENABLE_CUDASIM", False))


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here and what to do, in one line; None when it can.

    The backend needs the ``cuda`` extra, numba-cuda. Without it ``numba.cuda`` is
    numba's own, older CUDA target, whose simulator fails inside crsky's kernels, so
    its absence is checked first (by package, without importing it). With numba-cuda,
    numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, for tests) counts as usable;
    otherwise a GPU must be visible to the driver.
    """
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        return ("the cuda extra (numba-cuda) is not installed: pip install 'crsky[cuda]' "
                "(needs an NVIDIA GPU and its driver), or use --backend cpu")
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba.cuda cannot be imported ({exc}): reinstall 'crsky[cuda]', or use --backend cpu"
    if cuda_simulated():
        return None
    try:
        if cuda.is_available():
            return None
    except Exception:  # driver present but broken: no usable GPU
        pass
    return ("no CUDA GPU is usable here (numba-cuda finds no NVIDIA GPU or driver): run on a machine "
            "with one, or use --backend cpu")


def cuda_available() -> bool:
    """True when numba-cuda is installed and sees a GPU (or its simulator is enabled)."""
    return cuda_unavailable_reason() is None


def resolve_backend(name: str) -> str:
    """Turn ``auto`` into a concrete backend name; check that ``cuda`` can run.

    Raises
    ------
    InputError
        For an unknown name.
    BackendError
        For ``cuda`` where it cannot run (:func:`cuda_unavailable_reason`), with one
        line that says why and what to install; never a silent CPU run.
    """
    if name not in BACKENDS:
        raise InputError(f"backend = {name!r}: must be one of {', '.join(BACKENDS)}")
    if name == "auto":
        # Never the simulator: it is for tests, thousands of times slower than the CPU.
        return "cuda" if cuda_available() and not cuda_simulated() else "cpu"
    if name == "cuda" and not cuda_available():
        reason = cuda_unavailable_reason() or "no CUDA GPU is usable here: use --backend cpu"
        raise BackendError(f"backend 'cuda' requested but {reason}")
    return name


def get_backend(name: str = "cpu", precision: str = "float64", **options) -> Backend:
    """A backend with its options fixed.

    Parameters
    ----------
    name : {"auto", "cpu", "cuda"}
        Where to run (:func:`resolve_backend`).
    precision : {"float64", "mixed"}
        Field evaluation (:data:`PRECISIONS`).
    **options
        Backend-specific: ``threads`` and ``refresh`` of
        :class:`crsky.backends.cpu.CpuBackend`.

    Raises
    ------
    BackendError
        For ``cuda`` without a usable GPU.
    ValueError
        For an unknown precision or option value.
    """
    name = resolve_backend(name)
    if name == "cpu":
        from .cpu import CpuBackend

        return CpuBackend(precision, **options)
    from .cuda import CudaBackend

    return CudaBackend(precision, **options)
