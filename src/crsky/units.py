"""Physical quantities to code units, at the boundary only (docs/conventions.md, Units).

Inside crsky lengths are in ``L_c``, speeds in ``c``, field strengths in ``B0`` and
times are quoted as ``t * Omega`` with ``Omega = c / r_L``.
"""

from __future__ import annotations

import math
import numbers

from .errors import InputError

__all__ = [
    "RL_PC_PER_TEV_PER_MICROGAUSS",
    "gyroradius_pc",
    "gyroradius_lc",
    "time_to_lc_over_c",
    "lc_over_c_years",
]

#: ``r_L / pc`` of a Z = 1 ultra-relativistic particle of 1 TeV in 1 microgauss:
#: ``E / (e B c)`` = 1e12 V / (2.9979e8 m/s * 1e-10 T) = 3.3356e13 m = 1.0810e-3 pc.
RL_PC_PER_TEV_PER_MICROGAUSS = 1.0810e-3


def gyroradius_pc(energy_tev: float, charge: int, b0_microgauss: float) -> float:
    """Gyroradius ``r_L = E / (|Z| e B0 c)`` in parsec.

    Parameters
    ----------
    energy_tev : float
        Particle energy in TeV (ultra-relativistic, ``E = p c``).
    charge : int
        Charge number Z (only ``|Z|`` enters).
    b0_microgauss : float
        Regular field strength in microgauss.

    Raises
    ------
    InputError
        If ``charge`` is not a non-zero integer or an energy or field is not a finite
        number > 0.
    """
    if isinstance(charge, bool) or not isinstance(charge, numbers.Integral) or charge == 0:
        raise InputError(f"charge = {charge!r}: must be a non-zero integer (charge number Z)")
    _positive("energy_tev", energy_tev)
    _positive("b0_microgauss", b0_microgauss)
    return RL_PC_PER_TEV_PER_MICROGAUSS * energy_tev / (abs(charge) * b0_microgauss)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} = {value!r}: must be a finite number > 0")


def gyroradius_lc(energy_tev: float, charge: int, b0_microgauss: float, lc_pc: float) -> float:
    """Gyroradius in units of the bend-over scale, ``r_L / L_c`` (dimensionless).

    ``lc_pc`` is ``L_c`` in parsec; the other arguments as in :func:`gyroradius_pc`.
    """
    _positive("lc_pc", lc_pc)
    return gyroradius_pc(energy_tev, charge, b0_microgauss) / lc_pc


def time_to_lc_over_c(t_omega: float, rl: float) -> float:
    """Convert ``t * Omega`` to time in units of ``L_c / c``: ``t = (t Omega) r_L / c``."""
    if not math.isfinite(t_omega):
        raise InputError(f"t_omega = {t_omega!r} must be finite")
    return t_omega * rl


def lc_over_c_years(lc_pc: float) -> float:
    """The light-crossing time of the bend-over scale, ``L_c / c``, in Julian years.

    Converted with :mod:`astropy.units` (imported here only: it costs ~0.4 s, paid
    only by runs given in physical units). Multiply a time in ``L_c / c`` (e.g.
    :func:`time_to_lc_over_c`) by it to get years.

    Parameters
    ----------
    lc_pc : float
        ``L_c`` in parsec.
    """
    _positive("lc_pc", lc_pc)
    from astropy import constants
    from astropy import units as u

    return float((lc_pc * u.pc / constants.c).to(u.yr).value)
