"""crsky: cosmic-ray anisotropies from backtracking through synthetic turbulence.

Implements Mertsch & Ahlers (ICRC 2015). Code units throughout: lengths in ``L_c``,
speeds in ``c``, fields in ``B0``, times as ``t * Omega``.
"""

__version__ = "0.1.0"

__all__ = ["load_analysis", "__version__"]


def __getattr__(name):
    # Lazy, so that `import crsky` stays light (no healpy/xarray until needed).
    if name == "load_analysis":
        from .analysis import load_analysis

        return load_analysis
    raise AttributeError(f"module 'crsky' has no attribute {name!r}")
