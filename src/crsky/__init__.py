"""crsky: cosmic-ray anisotropies from backtracking through synthetic turbulence.

Implements Mertsch & Ahlers (ICRC 2015). Code units throughout: lengths in ``L_c``,
speeds in ``c``, fields in ``B0``, times as ``t * Omega``.
"""

__version__ = "0.1.0"
