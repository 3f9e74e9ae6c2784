"""From trajectories to anisotropies (Mertsch & Ahlers 2015, sections 2-3).

Data flow, one way:

- :mod:`~crsky.analysis.harmonics`: healpy's transforms (``map2alm``/``anafast``
  settings, OpenMP threads, packed cross-spectra of the component maps);
- :mod:`~crsky.analysis.estimators`: small pure functions with named results
  (diffusion tensors, ``C_l`` of the maps, shot noise, the coherent/relative split,
  the sum rules, the BGK fit);
- :mod:`~crsky.analysis.dataset`: the streaming pass over a run, the estimators in
  order, the assembly of the Dataset and ``analysis.nc``;
- :mod:`~crsky.analysis.report`: ``summary.json`` and the terminal table, made from
  the Dataset;
- :mod:`~crsky.analysis.sky`: what a pixel of a stored map is; arrival-direction maps;
- :mod:`~crsky.analysis.angles`: spectra against the angle between gradient and B0,
  from the quadratic forms stored in ``analysis.nc``.

The figures (:mod:`crsky.plots`) read ``analysis.nc`` and nothing else. Definitions
and units: docs/analysis.md; conventions: docs/conventions.md.
"""

from .dataset import (
    ANALYSIS_FILE,
    AnalysisNotCurrentError,
    IncompleteEnsembleError,
    TIME_DIM,
    RealisationSummary,
    analyze_run,
    load_analysis,
    load_current_analysis,
    select_map_times,
    summarise_realisation,
    write_analysis,
)
from .estimators import (
    FIT_NSIGMA,
    STEADY_LMAX,
    STEADY_NSIGMA,
    GRADIENT_PRESETS,
    GYRO_AXES,
    NOISE_MODELS,
    angle_gradient_name,
    gradient_at_angle,
    component_maps,
    diffusion_tensor,
    fit_bgk,
    fit_range,
    noise_error,
    relative_diffusion_tensor,
    relative_intensity,
    resolve_gradients,
    shot_noise,
    steady_state,
)
from .harmonics import (anafast_options, angular_power, axial_coefficients, cross_spectra, rotate_to_axis,
                        sht_threads)
from .sky import HEALPIX_ORDERING, PIXEL_CONVENTION, arrival_direction_map, map_attributes
from .angles import angle_spectra
from .report import SUMMARY_FILE, analyze, format_summary, read_summary, summary_dict, write_summary

__all__ = [
    "GRADIENT_PRESETS",
    "GYRO_AXES",
    "angle_gradient_name",
    "gradient_at_angle",
    "angle_spectra",
    "axial_coefficients",
    "rotate_to_axis",
    "ANALYSIS_FILE",
    "SUMMARY_FILE",
    "FIT_NSIGMA",
    "NOISE_MODELS",
    "AnalysisNotCurrentError",
    "IncompleteEnsembleError",
    "anafast_options",
    "sht_threads",
    "angular_power",
    "component_maps",
    "cross_spectra",
    "diffusion_tensor",
    "relative_diffusion_tensor",
    "relative_intensity",
    "shot_noise",
    "noise_error",
    "fit_range",
    "fit_bgk",
    "RealisationSummary",
    "summarise_realisation",
    "resolve_gradients",
    "select_map_times",
    "analyze_run",
    "write_analysis",
    "load_analysis",
    "load_current_analysis",
    "summary_dict",
    "format_summary",
    "write_summary",
    "read_summary",
    "analyze",
    "TIME_DIM",
    "STEADY_LMAX",
    "STEADY_NSIGMA",
    "steady_state",
    "HEALPIX_ORDERING",
    "PIXEL_CONVENTION",
    "arrival_direction_map",
    "map_attributes",
]
