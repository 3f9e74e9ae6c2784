"""Validated, immutable run configuration: TOML in and out, presets.

All values are in code units (docs/conventions.md, Units): lengths in the turbulence
bend-over scale ``L_c``, times as ``t * Omega``, field strengths in units of ``B0``.
The only physical units accepted are the alternative particle description
(``energy_tev``, ``charge``, ``b0_microgauss``, ``lc_pc``), converted to ``rl`` at
the boundary by :func:`crsky.units.gyroradius_lc`.

A configuration is built from a preset (``quick`` by default) that a TOML file
overrides key by key. Every value is checked before any work starts; a bad value
raises :class:`ConfigError` with one line naming the key and its allowed range.
The physics checks (docs/design.md, Physics checks) run with them: a spectrum that
does not resolve the resonant scales is refused (:func:`check_resonance`), and
:func:`physics_warnings` lists what is allowed but suspect (a run too short for the
steady state, a step too large). ``lambda_min`` and ``n_modes`` may be ``"auto"``,
scaled with the gyroradius (:func:`resolve_resolution`), and :func:`estimate_cost`
states what a run will cost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from . import units
from .errors import InputError

__all__ = [
    "ConfigError",
    "TurbulenceConfig",
    "ParticlesConfig",
    "IntegrationConfig",
    "EnsembleConfig",
    "OutputConfig",
    "RunConfig",
    "PRESETS",
    "DEFAULT_DT",
    "MAX_STEPS",
    "MAX_SIGMA2",
    "load_config",
    "read_config_tables",
    "SCAN_TABLE",
    "resolve_config",
    "ResourceEstimate",
    "estimate_resources",
    "CostEstimate",
    "estimate_cost",
    "check_resources",
    "check_resonance",
    "AUTO",
    "DEFAULT_RESONANCE_FACTOR",
    "DEFAULT_MODES_PER_DECADE",
    "auto_lambda_min",
    "modes_for_range",
    "resolve_resolution",
    "PhysicsWarning",
    "physics_warnings",
    "parallel_mean_free_path",
    "scattering_time",
    "physical_record",
    "describe_physical",
    "ANALYSIS_TABLE",
    "analysis_gradients",
    "load_analysis_gradients",
]

#: Default step ``Omega * dt``; chosen by the convergence study in docs/validation.md
#: (section 3.2: halving it changes K by 0.2 %, a fifth of the paper preset's error).
DEFAULT_DT = 0.1

#: Largest number of steps ``t_max / dt``. Step counts and snapshot times
#: ``steps * dt`` stay exact in int64 and float64 far below it, and a run of that
#: many steps is already ~10^4 times longer than the paper's (2 x 10^4 steps).
MAX_STEPS = 10**9

#: Largest turbulence level ``sigma2 = <dB^2> / B0^2``. The paper uses 1; 10^4
#: (``dB = 100 B0``) is far into the strong-turbulence regime and keeps every field
#: value and phase finite in float64.
MAX_SIGMA2 = 1.0e4

#: Largest config file read (bytes). A configuration is well under a kilobyte; the
#: limit stops ``/dev/zero`` or a wrong file from being read into memory.
MAX_CONFIG_BYTES = 1 << 20

GEOMETRIES = ("isotropic", "slab", "2d", "composite")
PRECISIONS = ("float64", "float32")
FIELD_PRECISIONS = ("float64", "mixed")


class ConfigError(InputError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class TurbulenceConfig:
    """The turbulent field (docs/conventions.md, Turbulent field).

    Attributes
    ----------
    geometry : str
        ``isotropic`` (3D), ``slab`` (k along B0), ``2d`` (k perpendicular to B0) or
        ``composite`` (slab + 2D).
    slab_fraction : float
        Composite only: fraction of ``sigma2`` carried by the slab modes, in [0, 1].
    sigma2 : float
        Turbulence level ``<dB^2> / B0^2`` (dimensionless).
    gamma : float
        Spectral index of the isotropic 3D spectrum ``1 / (1 + (k L_c)^gamma)``.
    lambda_min, lambda_max : float
        Smallest and largest wavelength, in ``L_c``. A config file may give
        ``lambda_min = "auto"``: ``2 pi r_L / resonance_factor``.
    n_modes : int
        Number of plane-wave modes. A config file may give ``n_modes = "auto"``:
        ``ceil(modes_per_decade * log10(lambda_max / lambda_min))``.
    allow_unresolved : bool
        Accept a spectrum that does not resolve the resonant scales
        (:func:`check_resonance`). A permission, not physics: it is left out of
        :meth:`RunConfig.digest` and written to TOML only when true.
    resonance_factor : float or None
        ``2 pi r_L / lambda_min`` of the resolution policy: set when ``lambda_min =
        "auto"`` was resolved with it (default :data:`DEFAULT_RESONANCE_FACTOR`),
        ``None`` for an explicit ``lambda_min``.
    modes_per_decade : float or None
        Modes per decade of wavelength of the resolution policy: set when ``n_modes
        = "auto"`` was resolved with it (default :data:`DEFAULT_MODES_PER_DECADE`),
        ``None`` for an explicit ``n_modes``.

    ``lambda_min`` and ``n_modes`` always hold the resolved numbers, which alone
    define the field; the two policy keys record where they came from and are left
    out of :meth:`RunConfig.digest` (:func:`resolve_resolution`).
    """

    geometry: str = "isotropic"
    slab_fraction: float = 0.2
    sigma2: float = 1.0
    gamma: float = 11.0 / 3.0
    lambda_min: float = 0.01
    lambda_max: float = 100.0
    n_modes: int = 256
    allow_unresolved: bool = False
    resonance_factor: float | None = None
    modes_per_decade: float | None = None


@dataclass(frozen=True)
class ParticlesConfig:
    """The traced particles.

    Attributes
    ----------
    rl : float
        Gyroradius in B0 alone, ``r_L / L_c``. Either this or the four physical keys.
    nside : int
        HEALPix resolution; ``12 nside^2`` particles per realisation.
    charge : int
        Charge number ``Z`` of the observed cosmic ray (its sign sets the sense of
        gyration; backtracking traces charge ``-Z``).
    energy_tev, b0_microgauss, lc_pc : float or None
        Physical alternative to ``rl``: energy in TeV, B0 in microgauss, L_c in pc.
    """

    rl: float = 0.1
    nside: int = 32
    charge: int = 1
    energy_tev: float | None = None
    b0_microgauss: float | None = None
    lc_pc: float | None = None

    @property
    def n_particles(self) -> int:
        return 12 * self.nside**2


@dataclass(frozen=True)
class IntegrationConfig:
    """Time stepping (docs/conventions.md, Equation of motion).

    Attributes
    ----------
    dt : float
        Step ``Omega * dt``.
    t_max : float
        ``Omega * T`` of the last snapshot.
    n_snapshots : int
        Number of snapshots, log-spaced from ``t_min`` to ``t_max`` (of all stages,
        for an extended run).
    t_min : float
        ``Omega * T`` of the first snapshot.
    extended_from : tuple of dict, optional
        Set by ``crsky run --extend`` (docs/rundir.md, Extending a run): the
        ``{"t_max": ..., "n_snapshots": ...}`` of the run before each extension,
        oldest first. The snapshots are then those of the first stage (``t_min`` to
        its ``t_max``) followed by each extension's, and a realisation is traced
        stage by stage from the state at the end of the previous one
        (:func:`crsky.simulate.snapshot_stages`). Absent for a run never extended.
    precision : str
        Field evaluation: ``float64`` (the reference) or ``mixed`` (float32
        polynomial cosine of phases reduced in float64: on the CPU from per-particle
        reference points, ~30x faster; on CUDA per mode; field error < 5e-7 of its rms
        on both; see docs/performance.md). Both presets use ``mixed``.
    """

    dt: float = DEFAULT_DT
    t_max: float = 2000.0
    n_snapshots: int = 40
    t_min: float = 0.1
    precision: str = "float64"
    extended_from: tuple | None = None


@dataclass(frozen=True)
class EnsembleConfig:
    """The ensemble of field realisations.

    Attributes
    ----------
    realisations : int
        Number of independent field realisations.
    seed : int
        Run seed; realisation ``j`` is generated from ``(seed, j)`` alone.
    """

    realisations: int = 120
    seed: int = 0


@dataclass(frozen=True)
class OutputConfig:
    """What is stored per realisation.

    Attributes
    ----------
    precision : str
        ``float64`` or ``float32`` for stored positions and momenta (the integration is
        always float64).
    """

    precision: str = "float64"


@dataclass(frozen=True)
class RunConfig:
    """A complete, validated run configuration."""

    turbulence: TurbulenceConfig = field(default_factory=TurbulenceConfig)
    particles: ParticlesConfig = field(default_factory=ParticlesConfig)
    integration: IntegrationConfig = field(default_factory=IntegrationConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dictionary (TOML tables), without unset optional keys and
        without permissions that are not granted (``allow_unresolved = false``)."""
        out = {}
        for f in dataclasses.fields(self):
            table = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = {k: v for k, v in table.items()
                           if v is not None and not (k in _PERMISSIONS and v is False)}
        return out

    def to_toml(self) -> str:
        """The resolved configuration as TOML text.

        A run given in physical units gets a ``[derived]`` table after it
        (:func:`physical_record`: ``r_L / L_c``, the gyro period and ``t_max`` in
        years and in ``L_c / c``), for the reader of a run directory's config.toml.
        It is recomputed, never read: :func:`config_from_toml_text` drops it, and the
        digest does not see it.
        """
        text = tomli_w.dumps(self.to_dict())
        derived = physical_record(self)
        if derived is not None:
            text += "\n# Derived from the physical inputs above; recomputed, not read back.\n"
            text += tomli_w.dumps({DERIVED_TABLE: derived})
        return text

    def physics_dict(self) -> dict[str, dict[str, Any]]:
        """:meth:`to_dict` without the permissions (``allow_unresolved``) and the
        resolution-policy record (``resonance_factor``, ``modes_per_decade``): what
        the run computes, and so what identifies it. An ``"auto"`` configuration has
        the digest of the same numbers given explicitly."""
        out = self.to_dict()
        for section, key in _PERMISSION_KEYS + _POLICY_KEYS:
            out[section].pop(key, None)
        return out

    def to_json(self) -> str:
        """The resolved physics (:meth:`physics_dict`) as one JSON string (for file
        attributes); the input of :meth:`digest`."""
        return json.dumps(self.physics_dict(), sort_keys=True)

    def digest(self) -> str:
        """SHA-256 of the resolved configuration; identifies a run's physics."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def charge_sign(self) -> int:
        """Sign of the observed particle's charge, +1 or -1."""
        return 1 if self.particles.charge > 0 else -1


#: Keys that allow what a check would refuse. They change what is accepted, never what
#: is computed, so they stay out of the digest: granting one to a finished run's
#: configuration (to resume it after a check was added) keeps its identity.
_PERMISSION_KEYS = (("turbulence", "allow_unresolved"),)
_PERMISSIONS = {key for _, key in _PERMISSION_KEYS}
#: Keys that record how ``lambda_min`` and ``n_modes`` were chosen (the resolution
#: policy), not what is computed: out of the digest, like the permissions.
_POLICY_KEYS = (("turbulence", "resonance_factor"), ("turbulence", "modes_per_decade"))

#: Table of a physical-unit run's config.toml with the values derived from its inputs.
DERIVED_TABLE = "derived"
#: Table of a config file with the analysis' options (:func:`analysis_gradients`); a run
#: ignores it, so one file can configure a run and its analysis.
ANALYSIS_TABLE = "analysis"

_SECTIONS = {
    "turbulence": TurbulenceConfig,
    "particles": ParticlesConfig,
    "integration": IntegrationConfig,
    "ensemble": EnsembleConfig,
    "output": OutputConfig,
}

#: Preset overrides on top of the dataclass defaults (which are the paper's physics).
#: Both presets use the mixed-precision field (about 30x faster than float64); its
#: K and C_l agree with float64 within their statistical errors (paired null test,
#: docs/performance.md). ``precision = "float64"`` in a config file selects the reference.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Under a minute on a 2-core laptop; same physics as the paper, fewer modes,
    # pixels, realisations and a shorter end time (still past the t Omega ~ 100 steady
    # state). Sized so that Fig. 3 shows the steady-state shape for both gradients:
    # the shot noise falls as 1 / N_pix, so nside 16 (3072 CRs) lifts the
    # perpendicular C_hat_2..4 above it where nside 8 did not; 32 realisations give
    # the margin (docs/figures.md), 64 modes pay for both.
    "quick": {
        "turbulence": {"n_modes": 64},
        "particles": {"nside": 16},
        "integration": {"t_max": 300.0, "n_snapshots": 24, "precision": "mixed"},
        "ensemble": {"realisations": 32},
    },
    # The experiment of Mertsch & Ahlers (2015).
    "paper": {
        "turbulence": {"n_modes": 256},
        "particles": {"nside": 32},
        "integration": {"t_max": 2000.0, "n_snapshots": 40, "precision": "mixed"},
        "ensemble": {"realisations": 120},
    },
}


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_type(section: str, key: str, value: Any, expected: Any) -> Any:
    where = f"[{section}] {key}"
    if expected in ("float", "float | None"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: must be a number, got {_type_name(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r}: must be a finite number")
        return value
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: must be an integer, got {_type_name(value)}")
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{where} = {value!r}: must be a 64-bit integer, in [-2^63, 2^63)")
        return value
    if expected == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: must be true or false, got {_type_name(value)}")
        return value
    if expected == "tuple | None":  # [integration] extended_from: the stages before each extension
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, dict) and set(v) == {"t_max", "n_snapshots"} for v in value):
            raise ConfigError(f"{where} = {value!r}: must be a list of {{t_max = ..., n_snapshots = ...}} "
                              "tables (written by crsky run --extend)")
        stages = tuple({"t_max": _check_type(section, f"{key} t_max", v["t_max"], "float"),
                        "n_snapshots": _check_type(section, f"{key} n_snapshots", v["n_snapshots"], "int")}
                       for v in value)
        return stages or None  # none: a run never extended, whose digest does not see the key
    if expected == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: must be a string, got {_type_name(value)}")
        return value
    raise AssertionError(f"unhandled type {expected} for {where}")  # pragma: no cover


def _merge(base: dict, override: dict, origin: str) -> dict:
    merged = {name: dict(base.get(name, {})) for name in _SECTIONS}
    for name, table in override.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{name}] in {origin}; allowed: {', '.join(_SECTIONS)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{name} in {origin} must be a table [{name}]")
        allowed = {f.name for f in dataclasses.fields(_SECTIONS[name])}
        for key, value in table.items():
            if key not in allowed:
                raise ConfigError(
                    f"unknown key [{name}] {key} in {origin}; allowed: {', '.join(sorted(allowed))}"
                )
            merged[name][key] = value
    return merged


def _range(cond: bool, section: str, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"[{section}] {key} = {value!r}: must be {allowed}")


def _validate(cfg: RunConfig, strict: bool = True) -> RunConfig:
    """Check every value; ``strict=False`` (a stored run's configuration) keeps only
    the checks that runs written before the sigma2 bound, the step-count bound and the
    whole-step t_max were introduced already passed, so that they stay readable."""
    t, p, i, e, o = cfg.turbulence, cfg.particles, cfg.integration, cfg.ensemble, cfg.output
    _range(t.geometry in GEOMETRIES, "turbulence", "geometry", t.geometry, "one of " + ", ".join(GEOMETRIES))
    _range(0.0 <= t.slab_fraction <= 1.0, "turbulence", "slab_fraction", t.slab_fraction, "in [0, 1]")
    _range(0.0 <= t.sigma2 <= (MAX_SIGMA2 if strict else math.inf), "turbulence", "sigma2", t.sigma2,
           f"in [0, {MAX_SIGMA2:g}] (<dB^2> / B0^2; the paper uses 1)")
    _range(t.gamma > 0.0, "turbulence", "gamma", t.gamma, "> 0")
    _range(t.lambda_min > 0.0, "turbulence", "lambda_min", t.lambda_min, "> 0 (in L_c)")
    _range(
        t.lambda_max > t.lambda_min, "turbulence", "lambda_max", t.lambda_max,
        f"> lambda_min = {t.lambda_min} (in L_c)",
    )
    _range(t.n_modes >= 1, "turbulence", "n_modes", t.n_modes, ">= 1")
    if t.geometry == "composite":
        _range(t.n_modes >= 2, "turbulence", "n_modes", t.n_modes, ">= 2 for the composite geometry")
    _range(p.rl > 0.0, "particles", "rl", p.rl, "> 0 (r_L / L_c)")
    _range(
        p.nside >= 1 and (p.nside & (p.nside - 1)) == 0 and p.nside <= 8192,
        "particles", "nside", p.nside, "a power of 2 between 1 and 8192",
    )
    _range(p.charge != 0, "particles", "charge", p.charge, "a non-zero integer (charge number Z)")
    _range(i.dt > 0.0, "integration", "dt", i.dt, "> 0 (Omega * dt)")
    _range(i.t_max > 0.0, "integration", "t_max", i.t_max, "> 0 (Omega * T)")
    _range(i.t_min > 0.0, "integration", "t_min", i.t_min, "> 0 (Omega * T)")
    _range(i.t_min <= i.t_max, "integration", "t_min", i.t_min, f"<= t_max = {i.t_max}")
    _range(i.n_snapshots >= 1, "integration", "n_snapshots", i.n_snapshots, ">= 1")
    _range(i.precision in FIELD_PRECISIONS, "integration", "precision", i.precision,
           "one of " + ", ".join(FIELD_PRECISIONS))
    _range(i.dt <= i.t_min, "integration", "dt", i.dt, f"<= t_min = {i.t_min} (the first snapshot)")
    _check_stages(i)
    if strict:
        _check_steps(i)
        check_resonance(cfg)
    else:
        ratio = i.t_max / i.dt
        _range(math.isfinite(ratio) and round(ratio) >= i.n_snapshots, "integration", "n_snapshots",
               i.n_snapshots, f"<= the number of steps t_max / dt = {ratio:.6g}")
    _range(e.realisations >= 1, "ensemble", "realisations", e.realisations, ">= 1")
    _range(0 <= e.seed < 2**63, "ensemble", "seed", e.seed, "an integer in [0, 2^63)")
    _range(o.precision in PRECISIONS, "output", "precision", o.precision, "one of " + ", ".join(PRECISIONS))
    return cfg


def _check_steps(i: IntegrationConfig) -> None:
    """The step count ``t_max / dt`` is a whole number <= :data:`MAX_STEPS` and the
    ``n_snapshots`` snapshots fit on distinct steps between ``t_min`` and ``t_max``.

    The last snapshot is ``t_max`` exactly on a step (``t_max = n dt``); the others
    are rounded to the nearest step (:func:`crsky.simulate.snapshot_schedule`).
    """
    ratio = i.t_max / i.dt
    if not ratio <= MAX_STEPS:  # also catches an overflow to inf
        raise ConfigError(
            f"[integration] t_max / dt = {i.t_max!r} / {i.dt!r} = {ratio:.3g} steps: must be <= {MAX_STEPS:.0e} "
            "(raise dt or lower t_max)"
        )
    n_steps = round(ratio)
    # ratio is exact to a few ulps (<= 1e-6 steps below MAX_STEPS): a larger offset is
    # a t_max that is not a whole number of steps.
    if abs(ratio - n_steps) > 1e-6:
        below, above = math.floor(ratio) * i.dt, math.ceil(ratio) * i.dt
        raise ConfigError(
            f"[integration] t_max = {i.t_max!r}: must be a whole number of steps dt = {i.dt!r} "
            f"(the last snapshot is t_max, on a step), e.g. {below:.12g} or {above:.12g}"
        )
    first = max(1, round(i.t_min / i.dt)) if i.n_snapshots > 1 else n_steps
    distinct = n_steps - first + 1
    _range(
        i.n_snapshots <= distinct, "integration", "n_snapshots", i.n_snapshots,
        f"<= {distinct}, the number of distinct steps dt = {i.dt!r} from t_min = {i.t_min!r} "
        f"to t_max = {i.t_max!r} (lower t_min or dt, or raise t_max)",
    )


def _check_stages(i: IntegrationConfig) -> None:
    """The stages of an extended run (``extended_from``): ``t_max`` and ``n_snapshots``
    strictly increase from stage to stage and stay below the run's; each stage ends
    on a whole step, and its snapshots fit on distinct steps."""
    if not i.extended_from:
        return
    stages = (*i.extended_from, {"t_max": i.t_max, "n_snapshots": i.n_snapshots})
    previous_t, previous_n = i.t_min, 0
    for k, stage in enumerate(stages):
        t, n = stage["t_max"], stage["n_snapshots"]
        name = "" if k == len(stages) - 1 else "extended_from "
        later = previous_t <= t if k == 0 else previous_t < t
        _range(later and t <= i.t_max and abs(t / i.dt - round(t / i.dt)) <= 1e-6, "integration", f"{name}t_max",
               t, f"a whole number of steps dt = {i.dt!r} after {previous_t}, at most t_max = {i.t_max}")
        # the first stage starts at t_min's step (inclusive), each later one after the previous t_max
        first = max(1, round(previous_t / i.dt)) - 1 if k == 0 else round(previous_t / i.dt)
        room = round(t / i.dt) - first
        _range(previous_n < n <= i.n_snapshots and n - previous_n <= room, "integration", f"{name}n_snapshots", n,
               f"more than {previous_n} (the stage before), at most {previous_n + room} (one per step up to "
               f"t_max = {t:g})")
        previous_t, previous_n = t, n


def _resolve_particles(table: dict) -> dict:
    physical = ("energy_tev", "b0_microgauss", "lc_pc")
    given = [k for k in physical if table.get(k) is not None]
    if not given:
        return table
    if len(given) != len(physical):
        missing = [k for k in physical if k not in given]
        raise ConfigError(
            f"[particles] {', '.join(missing)} missing: energy_tev, b0_microgauss and lc_pc "
            "must be given together (or give rl alone)"
        )
    # Types and ranges of every input of r_L first, so that a bad one is named
    # rather than surfacing as an error of the unit conversion.
    values = {key: _check_type("particles", key, table[key], "float") for key in physical}
    units_of = {"energy_tev": "TeV", "b0_microgauss": "microgauss", "lc_pc": "pc"}
    for key, value in values.items():
        _range(value > 0.0, "particles", key, value, f"a finite number > 0 (in {units_of[key]})")
    charge = _check_type("particles", "charge", table.get("charge", 1), "int")
    _range(charge != 0, "particles", "charge", charge, "a non-zero integer (charge number Z)")
    rl = units.gyroradius_lc(values["energy_tev"], charge, values["b0_microgauss"], values["lc_pc"])
    if not (math.isfinite(rl) and rl > 0.0):
        raise ConfigError(
            f"[particles] energy_tev = {values['energy_tev']!r}, charge = {charge}, b0_microgauss = "
            f"{values['b0_microgauss']!r}, lc_pc = {values['lc_pc']!r} give r_L / L_c = {rl!r}: must be a "
            "finite number > 0 (outside the range of float64)"
        )
    return {**table, **values, "rl": rl}


#: The value of ``[turbulence] lambda_min`` and ``n_modes`` that asks for the resolution policy.
AUTO = "auto"

#: Default ``2 pi r_L / lambda_min`` of ``lambda_min = "auto"``: the paper's ``2 pi
#: 0.1 / 0.01 = 20 pi = 62.83``, so that ``lambda_min = r_L / 10``. The resonant
#: wavelengths ``2 pi r_L |mu|`` are then resolved down to ``|mu| = 1 / 20 pi = 0.016``
#: at every rigidity, as in the paper at ``r_L = 0.1 L_c``.
DEFAULT_RESONANCE_FACTOR = 20.0 * math.pi

#: Default modes per decade of wavelength of ``n_modes = "auto"``: the paper's 256
#: modes over the 4 decades from 0.01 to 100 ``L_c``.
DEFAULT_MODES_PER_DECADE = 64.0

#: Slack of ``ceil`` in :func:`modes_for_range`: a product within 1e-9 above a whole
#: number is that number (``64 * log10(1e4)`` is 256, not 257, whatever the rounding).
_CEIL_SLACK = 1e-9


def auto_lambda_min(rl: float, resonance_factor: float = DEFAULT_RESONANCE_FACTOR) -> float:
    """``lambda_min = 2 pi r_L / resonance_factor`` (``L_c``), the resolution policy's
    smallest wavelength for ``r_L / L_c = rl``."""
    return 2.0 * math.pi * rl / resonance_factor


def modes_for_range(lambda_min: float, lambda_max: float,
                    modes_per_decade: float = DEFAULT_MODES_PER_DECADE) -> int:
    """``n_modes = ceil(modes_per_decade * log10(lambda_max / lambda_min))``, at least 1."""
    count = modes_per_decade * math.log10(lambda_max / lambda_min)
    return max(1, math.ceil(count - _CEIL_SLACK))


def resolve_resolution(table: dict, rl: float) -> dict:
    """Resolve ``lambda_min = "auto"`` and ``n_modes = "auto"`` of a ``[turbulence]``
    table for ``r_L / L_c = rl`` (docs/design.md, Resolution policy).

    ``lambda_min = 2 pi r_L / resonance_factor`` (:func:`auto_lambda_min`) and
    ``n_modes = ceil(modes_per_decade * log10(lambda_max / lambda_min))``
    (:func:`modes_for_range`); the table returned holds the resolved numbers and the
    policy values used (``resonance_factor``, ``modes_per_decade``), which stay out of
    the digest. Explicit values win; a policy key given with an explicit value must be
    the one it records (a run's config.toml, read back), else it is refused.

    Raises
    ------
    ConfigError
        A value neither a number nor ``"auto"``, a policy key out of range or not
        matching an explicit value, or an ``"auto"`` ``lambda_min`` not below
        ``lambda_max``.
    """
    table = dict(table)
    given_factor, given_density = table.get("resonance_factor"), table.get("modes_per_decade")
    for key, kind in (("lambda_min", "a number (in L_c)"), ("n_modes", "an integer")):
        value = table.get(key)
        if isinstance(value, str) and value != AUTO:
            raise ConfigError(f"[turbulence] {key} = {value!r}: must be {kind} or {AUTO!r}")
    factor = DEFAULT_RESONANCE_FACTOR if given_factor is None else \
        _check_type("turbulence", "resonance_factor", given_factor, "float")
    _range(factor >= RESONANCE_RESOLUTION, "turbulence", "resonance_factor", factor,
           f">= {RESONANCE_RESOLUTION:g} (2 pi r_L / lambda_min; the paper has 20 pi = 62.83)")
    density = DEFAULT_MODES_PER_DECADE if given_density is None else \
        _check_type("turbulence", "modes_per_decade", given_density, "float")
    _range(density > 0.0, "turbulence", "modes_per_decade", density, "> 0 (the paper has 64)")
    lambda_max = _check_type("turbulence", "lambda_max", table.get("lambda_max", TurbulenceConfig.lambda_max),
                             "float")

    if table.get("lambda_min") == AUTO:
        _range(rl > 0.0, "particles", "rl", rl, "> 0 (r_L / L_c)")
        lambda_min = auto_lambda_min(rl, factor)
        if not lambda_min > 0.0:  # a factor beyond float64 (1e308)
            raise ConfigError(f"[turbulence] resonance_factor = {factor!r}: gives lambda_min = 2 pi r_L / "
                              f"resonance_factor = {lambda_min!r} L_c at r_L / L_c = {rl:.4g}; must give > 0")
        if not lambda_min < lambda_max:
            raise ConfigError(
                f"[turbulence] lambda_min = 'auto' = 2 pi r_L / resonance_factor = {lambda_min:.4g} L_c "
                f"(r_L / L_c = {rl:.4g}) is not below lambda_max = {lambda_max!r}: raise lambda_max or give "
                "lambda_min explicitly"
            )
        table["lambda_min"], table["resonance_factor"] = lambda_min, factor
    elif given_factor is not None:
        lambda_min = _check_type("turbulence", "lambda_min", table.get("lambda_min", TurbulenceConfig.lambda_min),
                                 "float")
        expected = auto_lambda_min(rl, factor)
        if not math.isclose(lambda_min, expected, rel_tol=1e-12):
            raise ConfigError(
                f"[turbulence] resonance_factor = {factor!r} applies to lambda_min = 'auto' (it gives "
                f"{expected:.6g} L_c at r_L / L_c = {rl:.4g}), not to lambda_min = {lambda_min!r}: "
                "set lambda_min = 'auto' or remove resonance_factor"
            )
        table["resonance_factor"] = factor

    if table.get("n_modes") == AUTO:
        lambda_min = _check_type("turbulence", "lambda_min", table.get("lambda_min", TurbulenceConfig.lambda_min),
                                 "float")
        if lambda_min > 0.0 and lambda_max > lambda_min:  # else _validate names the bad range
            count = density * math.log10(lambda_max / lambda_min)
            if not count < 2**63:  # finite and an int64 (the memory check refuses far fewer modes)
                raise ConfigError(
                    f"[turbulence] n_modes = 'auto' gives modes_per_decade x log10(lambda_max / lambda_min) = "
                    f"{density:g} x {math.log10(lambda_max / lambda_min):.4g} = {count:.3g} modes: must be < 2^63 "
                    "(lower modes_per_decade or resonance_factor)")
            table["n_modes"] = modes_for_range(lambda_min, lambda_max, density)
        else:
            table["n_modes"] = 1
        table["modes_per_decade"] = density
    elif given_density is not None:
        n_modes = _check_type("turbulence", "n_modes", table.get("n_modes", TurbulenceConfig.n_modes), "int")
        lambda_min = _check_type("turbulence", "lambda_min", table.get("lambda_min", TurbulenceConfig.lambda_min),
                                 "float")
        expected = modes_for_range(lambda_min, lambda_max, density) if 0.0 < lambda_min < lambda_max else None
        if n_modes != expected:
            raise ConfigError(
                f"[turbulence] modes_per_decade = {density!r} applies to n_modes = 'auto' (it gives "
                f"{expected} modes from lambda_min = {lambda_min:.6g} to lambda_max = {lambda_max:g}), not to "
                f"n_modes = {n_modes}: set n_modes = 'auto' or remove modes_per_decade"
            )
        table["modes_per_decade"] = density
    return table


def resolve_config(overrides: dict | None = None, preset: str = "quick", origin: str = "config",
                   *, strict: bool = True) -> RunConfig:
    """Build a validated :class:`RunConfig` from a preset and key-by-key overrides.

    Parameters
    ----------
    overrides : dict, optional
        Nested tables as read from TOML (``{"particles": {"nside": 16}}``).
    preset : {"quick", "paper"}
        The base the overrides apply to.
    origin : str
        Where the overrides came from, for error messages.
    strict : bool
        Every check of a new run (default). ``False`` only for a configuration a run
        directory already stores (:func:`config_from_toml_text`).

    Raises
    ------
    ConfigError
        On an unknown preset, section or key, a wrong type or an out-of-range value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    # a run's config.toml, or a file that also holds the analysis' options ([analysis],
    # read by `crsky analyze --config`): the run needs neither table
    overrides = {name: table for name, table in (overrides or {}).items()
                 if name not in (DERIVED_TABLE, ANALYSIS_TABLE)}
    merged = _merge(_merge({}, PRESETS[preset], f"preset {preset}"), overrides, origin)
    given = overrides.get("particles", {})
    both = "rl" in given and any(k in given for k in ("energy_tev", "b0_microgauss", "lc_pc"))
    merged["particles"] = _resolve_particles(merged["particles"])
    rl = _check_type("particles", "rl", merged["particles"].get("rl", ParticlesConfig.rl), "float")
    merged["turbulence"] = resolve_resolution(merged["turbulence"], rl)
    if both:
        # A resolved configuration (a run's config.toml) stores rl with the physical
        # inputs: accepted when rl is the one they give, so that it can be rerun.
        rl_given = _check_type("particles", "rl", given["rl"], "float")
        rl = merged["particles"]["rl"]
        if not math.isclose(rl_given, rl, rel_tol=1e-12):
            raise ConfigError(
                f"[particles] give either rl or (energy_tev, b0_microgauss, lc_pc), not both (rl = {rl_given!r}, "
                f"they give r_L / L_c = {rl:.6g})"
            )
    sections = {}
    for name, cls in _SECTIONS.items():
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in merged[name]:
                kwargs[f.name] = _check_type(name, f.name, merged[name][f.name], f.type)
        sections[name] = cls(**kwargs)
    _check_slab_fraction((overrides or {}).get("turbulence", {}), sections["turbulence"])
    return _validate(RunConfig(**sections), strict)


def _check_slab_fraction(given: dict, turbulence: TurbulenceConfig) -> None:
    """Refuse ``slab_fraction`` where the geometry ignores it.

    Only ``composite`` uses it; elsewhere a value would change the config digest (and
    so the identity of the run) without changing the physics. The default value is
    accepted because every resolved configuration carries it (a run's config.toml,
    reused as input, must load).
    """
    default = TurbulenceConfig.slab_fraction
    ignored = turbulence.geometry in GEOMETRIES and turbulence.geometry != "composite"
    if "slab_fraction" in given and ignored and turbulence.slab_fraction != default:
        raise ConfigError(
            f"[turbulence] slab_fraction = {turbulence.slab_fraction!r}: used only by geometry = 'composite', "
            f"ignored by geometry = {turbulence.geometry!r}; remove the key"
        )


# ---------------------------------------------------------------------------------
# Physics checks: resonance (refused), run length and step size (warnings)
# ---------------------------------------------------------------------------------
#: ``lambda_min`` must be at most ``2 pi r_L / RESONANCE_RESOLUTION``. A particle of
#: pitch-angle cosine ``mu`` resonates with wavelengths ``2 pi r_L |mu|`` along B0
#: (``k_par r_L |mu| = 1``), so 10 resolves the resonances of every ``|mu| >= 0.1``
#: (the paper preset has ``2 pi r_L / lambda_min = 63``).
RESONANCE_RESOLUTION = 10.0

#: Parallel mean free path at ``r_L = 0.1 L_c``, ``sigma2 = 1``, isotropic Kolmogorov
#: turbulence (``L_c``): ``3 K_par / c`` with crsky's ``K_par(t Omega = 2000) =
#: 0.5663 L_c c`` of the paper preset (docs/performance.md). The normalisation of
#: :func:`parallel_mean_free_path`.
LAMBDA_PAR_AT_RL_0_1 = 3 * 0.5663

#: The steady state needs ``t_max >= STEADY_STATE_SCATTERING_TIMES`` estimated
#: scattering times: Mertsch & Ahlers (2015), section 4, find the spectrum steady from
#: ``t Omega ~ 100``, which is 5.9 scattering times at ``r_L = 0.1 L_c``.
STEADY_STATE_SCATTERING_TIMES = 6.0

#: Largest safe rotation of the velocity per step, ``sqrt(1 + sigma2) dt`` (rad): at
#: ``sigma2 = 1``, ``Omega dt = 0.4`` (0.57 rad) changes K_par by 15 % on halving,
#: ``Omega dt = 0.2`` (0.28 rad) by less than the errors (docs/validation.md, section 3).
MAX_ROTATION_PER_STEP = 0.5

#: Largest safe share of ``sigma2`` in modes whose phase advances by more than pi per
#: step along the orbit (``k_n r_L dt > pi``: sampled fewer than twice per wavelength,
#: so the integrator sees them as noise, not as a field). The paper preset has 0.8 %.
MAX_ALIASED_POWER = 0.1


def check_resonance(cfg: RunConfig) -> None:
    """Refuse a spectrum that does not resolve the resonant scales of the gyration.

    Required, unless ``[turbulence] allow_unresolved = true``:

    - ``2 pi r_L <= lambda_max``: a gyration larger than every wavelength meets no
      resonant mode;
    - ``lambda_min <= 2 pi r_L / RESONANCE_RESOLUTION``: resonant wavelengths
      ``2 pi r_L |mu|`` are resolved down to ``|mu| = 0.1``. This includes the case
      ``2 pi r_L < lambda_min``, where no mode is resonant at all.

    Raises
    ------
    ConfigError
        One line naming both numbers, the bound, and the key that allows it.
    """
    t, rl = cfg.turbulence, cfg.particles.rl
    if t.allow_unresolved:
        return
    gyration = 2 * math.pi * rl
    allow = "or set [turbulence] allow_unresolved = true"
    where = f"r_L / L_c = {rl:.4g}"
    if gyration > t.lambda_max:
        raise ConfigError(
            f"[turbulence] lambda_max = {t.lambda_max!r}: the gyration scale 2 pi r_L = {gyration:.4g} L_c "
            f"({where}) is larger, so no turbulent mode is resonant; raise lambda_max to >= {gyration:.4g} "
            f"or lower r_L, {allow}"
        )
    bound = gyration / RESONANCE_RESOLUTION
    if t.lambda_min > bound:
        if t.lambda_min > gyration:
            problem = (f"is larger than the gyration scale 2 pi r_L = {gyration:.4g} L_c ({where}): "
                       "no turbulent mode is resonant")
        else:
            problem = (f"resolves the resonant wavelengths 2 pi r_L |mu| only for |mu| >= "
                       f"{t.lambda_min / gyration:.2g} (2 pi r_L = {gyration:.4g} L_c, {where})")
        raise ConfigError(
            f"[turbulence] lambda_min = {t.lambda_min!r} {problem}; must be <= 2 pi r_L / "
            f"{RESONANCE_RESOLUTION:g} = {bound:.4g}, {allow}"
        )


def parallel_mean_free_path(turbulence: TurbulenceConfig, rl: float) -> float | None:
    """Quasi-linear estimate of the parallel mean free path ``lambda_par`` (``L_c``).

    ``lambda_par = LAMBDA_PAR_AT_RL_0_1 (rl / 0.1)^(4 - gamma) / sigma2_res`` for
    ``rl <= 1``: the quasi-linear scaling ``r_L^(2 - q) L_c^(q - 1)`` with ``q = gamma -
    2`` the one-dimensional index of the inertial range (Kolmogorov ``q = 5/3``:
    ``r_L^(1/3)``; Jokipii 1966, Casse, Lemoine & Pelletier 2002), normalised to crsky's
    own ``K_par`` of the paper preset. Above ``rl = 1`` the resonance leaves the
    inertial range for small-angle scattering, ``lambda_par ~ r_L^2 / L_c`` (Casse et
    al. 2002), joined continuously. ``sigma2_res`` is the resonant part of the
    turbulence: all of ``sigma2`` for ``isotropic`` and ``slab``, ``slab_fraction *
    sigma2`` for ``composite``. An order-of-magnitude estimate (factor ~2 off the
    calibration point), for warnings only.

    Returns
    -------
    float or None
        ``inf`` without turbulence (``sigma2 = 0``); ``None`` where quasi-linear theory
        gives no parallel scattering (``2d``, or ``composite`` without slab modes) or
        the spectrum has no quasi-linear inertial range (``gamma`` outside (3, 4)).
    """
    if turbulence.sigma2 == 0.0:
        return math.inf
    resonant = {"isotropic": 1.0, "slab": 1.0, "composite": turbulence.slab_fraction}.get(turbulence.geometry, 0.0)
    if resonant == 0.0 or not 3.0 < turbulence.gamma < 4.0:
        return None
    exponent = 4.0 - turbulence.gamma
    at_one = LAMBDA_PAR_AT_RL_0_1 * 10.0**exponent  # lambda_par at rl = 1, sigma2_res = 1
    log_shape = exponent * math.log(rl) if rl <= 1.0 else 2.0 * math.log(rl)
    if log_shape > 700.0:  # beyond float64 (rl ~ 1e152, allowed unresolved): never scatters
        return math.inf
    return at_one * math.exp(log_shape) / (resonant * turbulence.sigma2)


def scattering_time(cfg: RunConfig) -> float | None:
    """Estimated scattering time ``lambda_par / c`` as ``t Omega`` (``lambda_par / r_L``);
    ``None`` or ``inf`` as :func:`parallel_mean_free_path`."""
    mfp = parallel_mean_free_path(cfg.turbulence, cfg.particles.rl)
    return None if mfp is None else mfp / cfg.particles.rl


@dataclass(frozen=True)
class PhysicsWarning:
    """A configuration that runs but may not mean what it should.

    Attributes
    ----------
    code : str
        ``steady_state_not_reached``, ``step_rotation`` or ``step_aliasing``.
    message : str
        One line saying what and why, with the numbers.
    suggested_dt : float or None
        A step ``Omega dt`` that passes the check (step warnings only).
    """

    code: str
    message: str
    suggested_dt: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (for JSON)."""
        return dataclasses.asdict(self)


def _round_down(x: float) -> float:
    """``x`` rounded down to two significant digits (a step to suggest)."""
    scale = 10.0 ** (math.floor(math.log10(x)) - 1)
    return round(math.floor(x / scale) * scale, 15 - math.floor(math.log10(x)))


def physics_warnings(cfg: RunConfig) -> list[PhysicsWarning]:
    """What is allowed but suspect in ``cfg``: a pure function of the configuration.

    Checked (thresholds and reasoning in docs/design.md, Physics checks):

    - ``steady_state_not_reached``: ``t_max`` below ``STEADY_STATE_SCATTERING_TIMES``
      estimated scattering times (:func:`scattering_time`);
    - ``step_rotation``: the velocity turns by ``sqrt(1 + sigma2) dt`` (the rms
      ``|b|``) per step, more than ``MAX_ROTATION_PER_STEP`` rad;
    - ``step_aliasing``: modes whose phase advances by more than pi per step along
      the orbit (``k_n r_L dt > pi``; the fastest mode advances ``k_max r_L dt`` with
      ``k_max = 2 pi / lambda_min``) carry more than ``MAX_ALIASED_POWER`` of
      ``sigma2``.

    A run directory's summary carries them (``summary["warnings"]``), recomputed from
    its stored configuration.
    """
    import numpy as np

    t, rl, i = cfg.turbulence, cfg.particles.rl, cfg.integration
    warnings = []
    tau = scattering_time(cfg)
    if tau is not None and i.t_max < STEADY_STATE_SCATTERING_TIMES * tau:
        if math.isinf(tau):
            why = ("sigma2 = 0: without turbulence the particles never scatter" if t.sigma2 == 0.0 else
                   f"the estimated scattering time is beyond float64 at r_L / L_c = {rl:.3g}")
        else:
            why = (f"t_max = {i.t_max:g} is {i.t_max / tau:.3g} estimated scattering times lambda_par / c "
                   f"(t Omega = {tau:.3g}, lambda_par ~ {tau * rl:.3g} L_c), fewer than "
                   f"{STEADY_STATE_SCATTERING_TIMES:g}; raise t_max to >= {STEADY_STATE_SCATTERING_TIMES * tau:.3g}")
        warnings.append(PhysicsWarning("steady_state_not_reached", f"the steady state will not be reached: {why}"))
    rotation = math.sqrt(1.0 + t.sigma2) * i.dt
    if rotation > MAX_ROTATION_PER_STEP:
        dt = _round_down(MAX_ROTATION_PER_STEP / math.sqrt(1.0 + t.sigma2))
        warnings.append(PhysicsWarning(
            "step_rotation",
            f"step too large: the velocity turns by sqrt(1 + sigma2) dt = {rotation:.3g} rad per step at the rms "
            f"field, more than {MAX_ROTATION_PER_STEP:g}; use [integration] dt <= {dt:g}", dt))
    k, power = _mode_powers(t)
    with np.errstate(over="ignore"):
        phase = k * rl * i.dt
    aliased = float(power[phase > math.pi].sum())
    if aliased > MAX_ALIASED_POWER:
        # resolve every mode but the fastest ones that together carry at most the bound
        order = np.argsort(k)[::-1]
        above = np.cumsum(power[order]) - power[order]  # power strictly faster than each mode
        k_resolved = k[order][np.argmax(above + power[order] > MAX_ALIASED_POWER)]
        dt = math.pi / (k_resolved * rl)
        dt = _round_down(dt) if math.isfinite(dt) and dt > 0.0 else None
        advice = f"use [integration] dt <= {dt:g}" if dt else "lower r_L"
        warnings.append(PhysicsWarning(
            "step_aliasing",
            f"step too large for the field: the fastest mode's phase advances k_max r_L dt = "
            f"{phase.max():.3g} rad per step, and modes advancing more than pi (sampled fewer than twice per "
            f"wavelength) carry {aliased:.1%} of sigma2, more than {MAX_ALIASED_POWER:.0%}; {advice}", dt))
    return warnings


def _mode_powers(turbulence: TurbulenceConfig):
    """Wavenumbers (``1/L_c``) and shares of ``sigma2`` of the modes, as
    :func:`crsky.turbulence.make_modes` draws them (amplitudes do not depend on the
    random numbers)."""
    import numpy as np

    from .turbulence import spectrum_weights, wavenumbers  # turbulence imports this module

    t = turbulence
    if t.geometry == "composite":
        n_slab = t.n_modes // 2
        parts = [(n_slab, 1, t.slab_fraction), (t.n_modes - n_slab, 2, 1.0 - t.slab_fraction)]
    else:
        parts = [(t.n_modes, {"isotropic": 3, "slab": 1, "2d": 2}[t.geometry], 1.0)]
    ks, powers = [], []
    for n, dimension, share in parts:
        k = wavenumbers(t.lambda_min, t.lambda_max, n)
        weights = spectrum_weights(k, t.gamma, dimension)
        ks.append(k)
        powers.append(share * weights / weights.sum())
    return np.concatenate(ks), np.concatenate(powers)


def physical_record(cfg: RunConfig) -> dict[str, Any] | None:
    """The values derived from a run's physical inputs, or ``None`` for a run given
    in code units (``rl``).

    Keys (units in the names): ``rl`` (``r_L / L_c``), ``r_l_pc``, ``lc_over_c_yr``
    (``L_c / c``), ``gyro_period_yr`` and ``gyro_period_lc_over_c`` (``2 pi r_L / c``),
    ``t_max_yr`` and ``t_max_lc_over_c`` (the last snapshot). Years are Julian years
    (:func:`crsky.units.lc_over_c_years`, astropy).
    """
    p, t_max = cfg.particles, cfg.integration.t_max
    if p.lc_pc is None:
        return None
    lc_years = units.lc_over_c_years(p.lc_pc)
    gyro = 2 * math.pi * p.rl  # 2 pi r_L / c in L_c / c
    t_max_lc = units.time_to_lc_over_c(t_max, p.rl)
    return {
        "rl": p.rl,
        "r_l_pc": p.rl * p.lc_pc,
        "lc_over_c_yr": lc_years,
        "gyro_period_lc_over_c": gyro,
        "gyro_period_yr": gyro * lc_years,
        "t_max_lc_over_c": t_max_lc,
        "t_max_yr": t_max_lc * lc_years,
    }


def describe_physical(cfg: RunConfig) -> str | None:
    """One line of :func:`physical_record` for the terminal; ``None`` in code units."""
    d = physical_record(cfg)
    if d is None:
        return None
    p = cfg.particles
    return (f"E = {p.energy_tev:g} TeV, Z = {p.charge}, B0 = {p.b0_microgauss:g} microgauss, L_c = {p.lc_pc:g} pc: "
            f"r_L / L_c = {d['rl']:.4g} (r_L = {d['r_l_pc']:.4g} pc); gyro period 2 pi r_L / c = "
            f"{d['gyro_period_yr']:.4g} yr = {d['gyro_period_lc_over_c']:.4g} L_c / c; t_max = "
            f"{cfg.integration.t_max:g} / Omega = {d['t_max_yr']:.4g} yr = {d['t_max_lc_over_c']:.4g} L_c / c")


def load_config(path: str | Path | None = None, preset: str = "quick") -> RunConfig:
    """Read a TOML file (optional) over a preset and validate it.

    Raises
    ------
    ConfigError
        If the file is missing or malformed (the message carries the TOML parser's
        line and column) or any value is invalid.
    """
    if path is None:
        return resolve_config(None, preset)
    data = read_config_tables(path)
    if SCAN_TABLE in data:
        raise ConfigError(f"{path} has a [{SCAN_TABLE}] table: it describes a rigidity scan; run it with "
                          f"`crsky scan {path} --out SCAN_DIR` (docs/scan.md)")
    analysis_gradients(data.get(ANALYSIS_TABLE), origin=str(path))  # a bad [analysis] table fails before a run
    return resolve_config(data, preset, origin=str(path))


#: The table of a configuration file that makes it a rigidity scan (:mod:`crsky.scan`).
SCAN_TABLE = "scan"


def read_config_tables(path: str | Path) -> dict:
    """The tables of a TOML configuration file, parsed but not resolved.

    The file checks of :func:`load_config` (UTF-8, at most 1 MiB, a leading byte-order
    mark skipped) apply; :func:`load_config` and :mod:`crsky.scan` read files through it.

    Raises
    ------
    ConfigError
        If the file is missing, too large or malformed (with the parser's line and column).
    """
    path = Path(path)
    text = _read_config_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML in {path}: {exc}") from None


_ANALYSIS_KEYS = ("gradients", "gradient_angles_deg")


def _gradient_name_ok(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "_-" for c in name)


def analysis_gradients(table: dict | None, origin: str = "config") -> dict[str, tuple[float, ...]] | None:
    """The density gradients of an ``[analysis]`` table.

    Keys: ``gradients = {NAME = [x, y, z]}`` (``1 / L_c``, used as given) and
    ``gradient_angles_deg = [0, 30, ...]`` (the x-z plane gradient at that angle to B0,
    unit length, named ``angle30``; :func:`crsky.analysis.estimators.gradient_at_angle`).

    Returns
    -------
    dict or None
        ``parallel`` and ``perpendicular`` followed by the table's gradients, as
        ``{name: (x, y, z)}``; None for an empty or missing table (the default pair).

    Raises
    ------
    ConfigError
        An unknown key, a name that is taken or not of letters, digits, ``_``, ``-``, a
        vector that is not three finite numbers or is zero, an angle outside [0, 180].
    """
    if not table:
        return None
    from .analysis.estimators import GRADIENT_PRESETS, angle_gradient_name, gradient_at_angle
    from .errors import InputError

    if not isinstance(table, dict):
        raise ConfigError(f"{ANALYSIS_TABLE} in {origin} must be a table [{ANALYSIS_TABLE}]")
    for key in table:
        if key not in _ANALYSIS_KEYS:
            raise ConfigError(f"unknown key [{ANALYSIS_TABLE}] {key} in {origin}; allowed: "
                              f"{', '.join(_ANALYSIS_KEYS)}")
    out: dict[str, tuple[float, ...]] = {name: tuple(v) for name, v in GRADIENT_PRESETS.items()}

    def add(name, vector):
        if name in out:
            raise ConfigError(f"[{ANALYSIS_TABLE}] gradient {name!r} in {origin}: the name is taken")
        out[name] = tuple(float(v) for v in vector)

    vectors = table.get("gradients", {})
    if not isinstance(vectors, dict):
        raise ConfigError(f"[{ANALYSIS_TABLE}] gradients in {origin} must be a table NAME = [x, y, z]")
    for name, value in vectors.items():
        where = f"[{ANALYSIS_TABLE}] gradients.{name} = {value!r} in {origin}"
        if not _gradient_name_ok(name):
            raise ConfigError(f"{where}: the name must be of letters, digits, _ or -")
        ok = isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok:
            raise ConfigError(f"{where}: must be [x, y, z], three finite numbers (1/L_c)")
        if not any(value):
            raise ConfigError(f"{where}: must not be of zero length")
        add(name, value)
    angles = table.get("gradient_angles_deg", [])
    if not isinstance(angles, list):
        raise ConfigError(f"[{ANALYSIS_TABLE}] gradient_angles_deg in {origin} must be a list of degrees")
    for angle in angles:
        if isinstance(angle, bool) or not isinstance(angle, (int, float)):
            raise ConfigError(f"[{ANALYSIS_TABLE}] gradient_angles_deg in {origin}: {angle!r} is not a number "
                              "of degrees in [0, 180]")
        try:
            vector = gradient_at_angle(angle)
        except InputError as exc:
            raise ConfigError(f"[{ANALYSIS_TABLE}] gradient_angles_deg in {origin}: {exc}") from None
        add(angle_gradient_name(angle), vector)
    return out


def load_analysis_gradients(path: str | Path) -> dict[str, tuple[float, ...]] | None:
    """:func:`analysis_gradients` of the ``[analysis]`` table of a TOML file (other tables
    are not read here; the file may be a run's configuration).

    Raises
    ------
    ConfigError
        A missing, unreadable or malformed file, or a bad ``[analysis]`` table.
    """
    return analysis_gradients(read_config_tables(path).get(ANALYSIS_TABLE), origin=str(path))


def _read_config_text(path: Path) -> str:
    """The text of a config file: UTF-8 (a leading byte-order mark is skipped), at
    most :data:`MAX_CONFIG_BYTES` bytes, read without trusting its size (``/dev/zero``).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a crsky configuration"
        )
    try:
        return data.decode("utf-8-sig")  # TOML is UTF-8; editors on Windows may add a BOM
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} "
            "(save it as UTF-8)"
        ) from None


def config_from_toml_text(text: str) -> RunConfig:
    """Re-read a resolved configuration written by :meth:`RunConfig.to_toml`.

    The checks are those a run passed when it was written (``strict=False``): a run
    directory stays analysable after a check of new runs is tightened.
    """
    data = tomllib.loads(text)
    data.pop(DERIVED_TABLE, None)  # recomputed from the inputs, never read
    # A resolved config carries rl and the physical keys together: drop the physical
    # keys so that rl (already resolved) is taken as it is.
    particles = data.get("particles", {})
    physical = {k: particles.pop(k) for k in ("energy_tev", "b0_microgauss", "lc_pc") if k in particles}
    # A run written before slab_fraction was refused for other geometries may store
    # any value there: keep it as stored, so that the run's digest is unchanged.
    turbulence = data.get("turbulence", {})
    stored_slab = None
    if turbulence.get("geometry", TurbulenceConfig.geometry) != "composite" and "slab_fraction" in turbulence:
        stored_slab = _check_type("turbulence", "slab_fraction", turbulence.pop("slab_fraction"), "float")
    cfg = resolve_config(data, "quick", origin="resolved config", strict=False)
    if physical:
        cfg = dataclasses.replace(cfg, particles=dataclasses.replace(cfg.particles, **physical))
    if stored_slab is not None:
        cfg = dataclasses.replace(cfg, turbulence=dataclasses.replace(cfg.turbulence, slab_fraction=stored_slab))
    return cfg


# ---------------------------------------------------------------------------------
# Memory and disk, before anything is allocated or written
# ---------------------------------------------------------------------------------
#: Resident size of a worker process before any array: Python, numpy, numba with its
#: compiled kernels, healpy, xarray (measured ~300 MB).
_PROCESS_BYTES = 300 * 2**20
#: HDF5 and netCDF metadata of one realisation file (measured 14 KiB at nside 2).
_FILE_OVERHEAD_BYTES = 16 * 2**10
#: manifest.json record of one realisation (file name, size, SHA-256, host, time).
_MANIFEST_RECORD_BYTES = 400
#: Runs at least this large in memory or on disk get their estimate printed.
LARGE_RUN_BYTES = 2**30


@dataclass(frozen=True)
class ResourceEstimate:
    """Memory and disk a run needs (bytes), estimated from its configuration.

    Attributes
    ----------
    memory_simulation : int
        Peak memory of one process simulating one realisation: the mode array and
        its temporaries, ``x`` and ``p`` at every snapshot with their copies on the
        way to the file, and the process itself.
    memory_analysis : int
        Peak memory of ``crsky analyze``: one realisation read back, its component
        maps, their running sum, and the per-realisation spectra it keeps.
    disk_per_realisation : int
        One realisation file (``x`` and ``p`` at every snapshot, at the output
        precision, plus metadata).
    disk_total : int
        Every realisation file, the manifest and the analysis outputs.
    """

    memory_simulation: int
    memory_analysis: int
    disk_per_realisation: int
    disk_total: int

    def describe(self, workers: int = 1) -> str:
        """One line: disk and memory of the run."""
        procs = f"{workers} processes x " if workers > 1 else ""
        return (f"about {_size(self.disk_total)} on disk ({_size(self.disk_per_realisation)} per realisation), "
                f"{procs}{_size(self.memory_simulation)} of memory to run, {_size(self.memory_analysis)} to analyse")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def estimate_resources(config: RunConfig) -> ResourceEstimate:
    """Memory and disk of a run, from its configuration alone (nothing allocated).

    The estimates are upper bounds to within a factor of about 2 (measured on runs
    from nside 2 to 32); they exist to refuse what cannot fit, not to plan to the byte.
    Python integers, so that absurd sizes (``realisations = 10**12``) do not overflow.
    """
    snapshots = config.integration.n_snapshots
    npix = config.particles.n_particles
    realisations = config.ensemble.realisations
    out_bytes = 4 if config.output.precision == "float32" else 8
    lmax = 3 * config.particles.nside - 1
    trajectory = snapshots * npix * 3 * 8  # one of x, p at every snapshot, float64
    # make_modes builds about 20 float64 arrays of n_modes (k, k_hat, xi, bases, ...)
    modes = 20 * 8 * config.turbulence.n_modes
    # x and the traced velocity, p = -u, and one more copy of both while writing
    memory_simulation = _PROCESS_BYTES + modes + 5 * trajectory
    stored = 2 * snapshots * npix * 3 * out_bytes
    # read back (stored), as float64 component maps (2 trajectories), their running
    # sum (2), a temporary of the same size (2); per realisation the 21 cross-spectra
    # and the moments are kept
    kept = realisations * snapshots * ((lmax + 1) * 21 + 42) * 8
    memory_analysis = _PROCESS_BYTES + stored + 6 * trajectory + kept
    per_file = stored + _FILE_OVERHEAD_BYTES
    # analysis.nc: per-realisation spectra for each gradient, plus metadata
    analysis = realisations * 2 * snapshots * (lmax + 1) * 8 + 2**17
    disk_total = realisations * (per_file + _MANIFEST_RECORD_BYTES) + analysis
    return ResourceEstimate(memory_simulation, memory_analysis, per_file, disk_total)


@dataclass(frozen=True)
class CostEstimate:
    """Compute and disk of a run, estimated from its configuration.

    Attributes
    ----------
    mode_evaluations : int
        ``realisations x particles x steps x n_modes`` (``steps = t_max / dt``): one
        ``A_n xi_n cos(k_n . x + beta_n)`` term per mode, particle and step.
    throughput : float or None
        Mode evaluations per second assumed on this machine; ``None`` when unknown.
    throughput_source : str
        Where the throughput came from: ``"given"``, ``"calibrated"`` (the cache
        ``crsky bench`` writes) or ``"uncalibrated default"``; ``"unknown"`` without one.
    seconds : float or None
        ``mode_evaluations / throughput``: wall time of the whole run on this machine.
    disk_total : int
        Bytes on disk (:func:`estimate_resources`).
    """

    mode_evaluations: int
    throughput: float | None
    throughput_source: str
    seconds: float | None
    disk_total: int

    def describe(self, backend: str = "cpu") -> str:
        """One line for the terminal: mode evaluations, wall time, disk."""
        if self.seconds is None:
            time_text = (f"wall time unknown (no {backend} throughput measured here; run "
                         f"`crsky bench --quick --backend {backend}` to calibrate)")
        else:
            note = {"calibrated": "measured by crsky bench on this machine",
                    "uncalibrated default": "uncalibrated default; `crsky bench --quick` calibrates",
                    }.get(self.throughput_source, self.throughput_source)
            time_text = (f"about {_duration(self.seconds)} on this machine ({backend}) at "
                         f"{self.throughput:.2g} mode evaluations/s ({note})")
        return (f"estimated cost: {self.mode_evaluations:.3g} mode evaluations, {time_text}; "
                f"{_size(self.disk_total)} on disk")


def _duration(seconds: float) -> str:
    for unit, length in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= length:
            return f"{seconds / length:.3g} {unit}"
    return f"{seconds:.2g} s"


def estimate_cost(config: RunConfig, throughput: float | None = None, backend: str = "cpu",
                  from_t_omega: float = 0.0) -> CostEstimate:
    """Mode evaluations, wall time and disk of a whole run, before it starts.

    Parameters
    ----------
    config : RunConfig
        The validated configuration.
    throughput : float, optional
        Mode evaluations per second. By default the rate ``crsky bench`` measured on
        this machine for ``backend`` and the config's field precision
        (:func:`crsky.bench.cached_throughput`), else an uncalibrated default
        (:func:`crsky.bench.default_throughput`; none on CUDA).
    backend : {"cpu", "cuda"}
        The backend that will run (already resolved from ``auto``).
    from_t_omega : float
        ``Omega T`` the trajectories start from: 0 for a run, the old ``t_max`` for an
        extension (only the added steps cost).

    Returns
    -------
    CostEstimate
        Python integers for the counts, so that absurd sizes do not overflow.
    """
    from . import bench  # imports numba; bench imports this module

    i = config.integration
    steps = round(i.t_max / i.dt) - round(from_t_omega / i.dt)
    evaluations = config.ensemble.realisations * config.particles.n_particles * steps * config.turbulence.n_modes
    if throughput is not None:
        source = "given"
    else:
        entry = bench.cached_throughput(backend, i.precision)
        if entry is not None:
            throughput, source = float(entry["mode_evals_per_s"]), "calibrated"
        else:
            throughput = bench.default_throughput(backend, i.precision)
            source = "uncalibrated default" if throughput is not None else "unknown"
    seconds = evaluations / throughput if throughput else None
    return CostEstimate(evaluations, throughput, source, seconds, estimate_resources(config).disk_total)


def physical_memory() -> int | None:
    """Memory this process may use (bytes): physical RAM, or a smaller cgroup limit;
    ``None`` where the system does not say."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = None
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit.isdigit():
            ram = int(limit) if ram is None else min(ram, int(limit))
    except OSError:
        pass
    return ram


def _bytes_under(path: Path) -> int:
    """Total size of the regular files under ``path`` (0 if it does not exist)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except (NotADirectoryError, FileNotFoundError):
            pass
    return total


def check_resources(config: RunConfig, out, workers: int = 1) -> ResourceEstimate:
    """Refuse a run that cannot fit in this machine's memory or on the disk of ``out``.

    Run before the run directory is created, so that a refused configuration leaves
    nothing behind. A resumed run needs only the disk its missing files take: the
    bytes already under ``out`` count as written.

    Parameters
    ----------
    config : RunConfig
        The validated configuration.
    out : path
        The run directory (it need not exist yet).
    workers : int
        Local worker processes, each holding one realisation.

    Returns
    -------
    ResourceEstimate
        The estimate (for the caller to print for large runs).

    Raises
    ------
    ConfigError
        One line with the estimate and what this machine has.
    OSError
        If ``out`` is not a usable path name (too long, a loop of links).
    """
    estimate = estimate_resources(config)
    ram = physical_memory()
    need_memory = max(workers * estimate.memory_simulation, estimate.memory_analysis)
    if ram is not None and need_memory > ram:
        if workers * estimate.memory_simulation >= estimate.memory_analysis:
            which, advice = "to run", "[particles] nside, [turbulence] n_modes or [integration] n_snapshots"
            if workers > 1:
                advice += f", or use fewer --workers ({workers} processes x {_size(estimate.memory_simulation)})"
        else:
            which, advice = "to analyse", "[ensemble] realisations, [particles] nside or [integration] n_snapshots"
        raise ConfigError(
            f"run too large for this machine: about {_size(need_memory)} of memory {which}, "
            f"{_size(ram)} available; lower {advice}"
        )
    out = Path(out).absolute()
    existing = out
    while not existing.exists():  # the nearest existing ancestor holds the new files
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    need_disk = estimate.disk_total - _bytes_under(out)
    if need_disk > free:
        raise ConfigError(
            f"run too large for the disk: about {_size(need_disk)} more needed in {out} "
            f"({_size(estimate.disk_per_realisation)} per realisation), {_size(free)} free; lower "
            "[ensemble] realisations, [particles] nside or [integration] n_snapshots, use [output] "
            "precision = 'float32', or choose another --out"
        )
    return estimate
