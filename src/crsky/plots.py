r"""Figures of a run (``crsky plot RUN_DIR [--observed FILE.csv]``).

Everything is drawn from the analysis file ``RUN_DIR/analysis.nc`` alone, which must be
the current analysis of the run (:func:`crsky.analysis.load_current_analysis`; run
``crsky analyze RUN_DIR`` first). Nothing here recomputes or rewrites the analysis: the
BGK fit is drawn from its stored curve (``fit_curve``), the sky maps from the stored
maps of one realisation (``skymap``).

Figures (``RUN_DIR/figures/<name>.png`` and ``.pdf``; :func:`make_figures` replaces the
set, removing files of these names that it did not write this time):

``fig2_spectrum_evolution``
    Mertsch & Ahlers (2015) Fig. 2: ``<C_0>`` (blue), ``<C_1>`` (black),
    ``<C_2>``..``<C_9>`` (a sequential colour map, keyed by a colour bar), the
    standard-diffusion dipole ``C_1(<dI>)`` (magenta) and the shot noise of eq. (3.1)
    (red) against ``t Omega``; solid for the gradient along ``B0``, dotted across it;
    bands are the standard errors over realisations; every line and band is in the
    legend.
``fig3_spectrum_shape``
    Fig. 3: ``C_hat_l / C_hat_1`` against ``l`` at three snapshots, BGK curves of eq.
    (4.7) for ``p = 1/3, 1/2, 2/3`` and the stored fit with its interval band, the noise
    band; one panel per gradient; a steady state is claimed only where the analysis'
    ``steady_state`` test passed.
``skymaps_<gradient>``
    Mollweide maps of ``dI`` of one realisation at three times (stored by the
    analysis), in *arrival* directions
    ``-p_i`` (pixels remapped to their antipodes), monopole removed (top row) and
    monopole and dipole removed (bottom row).
``diffusion_coefficients``
    ``K_par(T)``, ``K_perp(T)`` (and the relative ``K~``) in ``L_c c`` against
    ``t Omega``.
``gyrotropy``
    Gyrotropic decomposition of each realisation's map about ``B0`` (solid) and about
    the local field ``B(0)`` at the observer (dashed): the fraction of ``<C_l>`` in the
    ``m = 0`` mode against ``l`` at three snapshots and against ``t Omega`` for
    ``l = 1..4``, with the value ``1/(2l+1)`` of a statistically isotropic sky, and the
    gyrotropic and non-gyrotropic power against ``l`` at the last snapshot; one row per
    gradient (at most four).
``angle_dependence``
    ``<C_1>``, the standard dipole ``C_1(<dI>)`` (with ``4 pi |K g|^2``) and the shot
    noise, and ``C_hat_l / C_hat_1`` for ``l = 2..5``, against the angle between the
    gradient (x-z plane, unit length) and ``B0``, 0 to 90 degrees at the last snapshot,
    from the quadratic forms stored in the analysis
    (:func:`crsky.analysis.angle_spectra`); analysed gradients in that plane as points.
``observed_comparison`` (with ``observed``)
    Measured ``C_l`` (absolute, as the paper's Fig. 1) with the late-time simulated
    ``C_hat_l`` and BGK curves scaled to them by one amplitude each (fitted in log).

Normalisation: the analysis uses ``g = grad n / n`` of unit length in ``1 / L_c``
(``|grad n / n| = 1 / L_c``), so every ``C_l`` shown is the power of the dimensionless
``dI`` for that gradient; it scales as ``(|grad n / n| L_c)^2``.

No figure uses ``matplotlib.pyplot``: each is a :class:`matplotlib.figure.Figure` on an
Agg canvas, so nothing opens a window and a notebook's backend is left alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import textwrap
from functools import partial
from pathlib import Path

import numpy as np

from .analysis.dataset import load_current_analysis, nearest_log_indices, select_map_times
from .analysis.estimators import STEADY_LMAX, STEADY_NSIGMA, p_interval_text
from .analysis.sky import arrival_direction_map
from .errors import InputError
from .observed import FIT_FILE as _FIT_FILE
from .store import atomic_write_bytes

__all__ = [
    "FIGURES_DIR",
    "FIGURE_STEMS",
    "STEADY_STATE_T_OMEGA",
    "BGK_REFERENCE_P",
    "make_figures",
    "select_times",
    "select_map_times",
    "plot_spectrum_evolution",
    "plot_spectrum_shape",
    "plot_sky_maps",
    "plot_diffusion",
    "plot_gyrotropy",
    "plot_angle_dependence",
    "plot_observed",
    "plot_observatory",
    "arrival_map",
    "save_figure",
]

#: Sub-directory of the run directory that receives the figures.
FIGURES_DIR = "figures"
#: The figures :func:`make_figures` owns (plus ``skymaps_<gradient>``): files of these
#: stems that a call does not write are removed (stale ones of an earlier call).
FIGURE_STEMS = ("fig2_spectrum_evolution", "fig3_spectrum_shape", "diffusion_coefficients", "gyrotropy",
                "angle_dependence", "observed_comparison")
_SKYMAP_PREFIX = "skymaps_"
_DEFAULT_FORMATS = ("png", "pdf")
#: ``t Omega`` past which the paper finds the spectrum in its steady state.
STEADY_STATE_T_OMEGA = 100.0
#: The BGK exponents drawn in Fig. 3 (as in the paper).
BGK_REFERENCE_P = (1.0 / 3.0, 0.5, 2.0 / 3.0)

_DPI = 150
_GRADIENT_STYLES = {"parallel": "-", "perpendicular": ":"}
_EXTRA_STYLES = ("--", "-.", (0, (5, 1, 1, 1, 1, 1)))
_TIME_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c")  # early, middle, late
_BGK_STYLES = {1.0 / 3.0: ":", 0.5: "-", 2.0 / 3.0: "--"}

# ---------------------------------------------------------------------------------
# Matplotlib plumbing
# ---------------------------------------------------------------------------------
def _use_agg() -> None:
    """Select Agg unless pyplot is already in use (then leave the user's backend alone)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, directory, stem: str, formats=("png", "pdf"), dpi: int = _DPI) -> list[Path]:
    """Write ``fig`` as ``directory/stem.<fmt>`` for each format, each atomically.

    Each figure is rendered in memory and written with the store's atomic writer
    (:func:`crsky.store.atomic_write_bytes`), so a reader never sees a half-written
    figure. The PNG has exactly
    ``figsize * dpi`` pixels (no tight bounding box).

    Returns
    -------
    list of pathlib.Path
        The files written, in the order of ``formats``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        target = directory / f"{stem}.{fmt}"
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=_metadata(fmt))
        atomic_write_bytes(target, buffer.getvalue())
        out.append(target)
    return out


def _metadata(fmt: str) -> dict:
    # No creation date: the same run gives the same PDF bytes.
    if fmt == "pdf":
        return {"Creator": "crsky", "CreationDate": None}
    if fmt == "png":
        return {"Software": "crsky"}
    return {}


# ---------------------------------------------------------------------------------
# Data access
# ---------------------------------------------------------------------------------
def _config(ds) -> dict:
    try:
        return json.loads(ds.attrs.get("config", "{}"))
    except (TypeError, ValueError):
        return {}


def _run_label(ds) -> str:
    """One line describing the run, for figure subtitles."""
    cfg = _config(ds)
    parts = []
    turb = cfg.get("turbulence", {})
    if turb:
        text = f"{turb.get('geometry', '?')} turbulence, {turb.get('n_modes', '?')} modes"
        if isinstance(turb.get("sigma2"), (int, float)):
            text += f", $\\sigma^2$ = {turb['sigma2']:g}"
        parts.append(text)
    rl = cfg.get("particles", {}).get("rl")
    if rl is not None:
        parts.append(f"$r_L$ = {rl:g} $L_c$")
    nside = ds.attrs.get("nside")
    if nside is not None:
        parts.append(f"nside {int(nside)} ({int(ds.attrs.get('npix', 12 * int(nside) ** 2))} CRs/map)")
    used = int(ds.sizes["realisation"])
    expected = ds.attrs.get("n_realisations_expected", used)
    if ds.attrs.get("complete", 1):
        parts.append(f"{used} realisations")
    else:
        parts.append(f"PARTIAL ENSEMBLE: {used} of {int(expected)} realisations")
    return ", ".join(parts)


def _rl(ds) -> float:
    rl = _config(ds).get("particles", {}).get("rl")
    if rl is None:
        T = np.asarray(ds["T"].values, dtype=float)
        t = np.asarray(ds["t_omega"].values, dtype=float)
        return float(T[-1] / t[-1])
    return float(rl)


def _gradient_names(ds) -> list[str]:
    return [str(g) for g in ds["gradient"].values]


def _gradient_style(name: str, k: int):
    return _GRADIENT_STYLES.get(name, _EXTRA_STYLES[k % len(_EXTRA_STYLES)])


def _gradient_text(ds, name: str) -> str:
    g = np.asarray(ds["gradient_vector"].sel(gradient=name).values, dtype=float)
    if name == "parallel":
        return r"$\nabla n/n \parallel \mathbf{B}_0$ ($\hat z / L_c$)"
    if name == "perpendicular":
        return r"$\nabla n/n \perp \mathbf{B}_0$ ($\hat x / L_c$)"
    return f"{name}: $\\nabla n/n$ = ({g[0]:.3g}, {g[1]:.3g}, {g[2]:.3g}) / $L_c$"


def _positive_band(mean, err, floor_factor: float = 0.01):
    """Lower and upper edge of ``mean +- err`` for a log axis (lower edge clipped)."""
    mean = np.asarray(mean, dtype=float)
    err = np.nan_to_num(np.asarray(err, dtype=float), nan=0.0)
    lo = np.maximum(mean - err, floor_factor * np.abs(mean))
    hi = mean + err
    return lo, hi


def _add_time_axis(ax, rl: float) -> None:
    """Secondary top axis with ``T`` in ``L_c / c`` (``T = t Omega r_L``)."""
    sec = ax.secondary_xaxis("top", functions=(lambda t: t * rl, lambda T: T / rl))
    sec.set_xlabel(r"backtracking time $T$  [$L_c/c$]")


# ---------------------------------------------------------------------------------
# Snapshot choice
# ---------------------------------------------------------------------------------
def select_times(t_omega, n: int = 3, t_steady: float = STEADY_STATE_T_OMEGA) -> tuple[np.ndarray, bool]:
    """Indices of ``n`` snapshots for Fig. 3: early, middle and late in the steady state.

    If at least ``n`` snapshots have ``t Omega >= t_steady``: the first and the last of
    them and, between, those closest to log-equal spacing. Otherwise: the last snapshot
    and earlier ones log-spaced over the last two decades (the steady state is not
    reached).

    Returns
    -------
    indices : numpy.ndarray of int
        Increasing snapshot indices (fewer than ``n`` if the run has fewer snapshots).
    steady : bool
        Whether all chosen snapshots are at ``t Omega >= t_steady``.
    """
    t = np.asarray(t_omega, dtype=float)
    late = np.flatnonzero(t >= t_steady)
    if late.size >= n:
        pool, lo, hi = late, t[late[0]], t[late[-1]]
        steady = True
    else:
        pool = np.arange(t.size)
        hi = t[-1]
        lo = max(t[0], hi / 100.0)
        steady = bool(late.size == t.size)
    return nearest_log_indices(t, pool, np.geomspace(lo, hi, n) if n > 1 else np.array([hi])), steady


# ---------------------------------------------------------------------------------
# Fig. 2
# ---------------------------------------------------------------------------------
def plot_spectrum_evolution(ds):
    """Fig. 2 of Mertsch & Ahlers (2015): ``<C_l>(t Omega)`` with standard dipole and noise.

    Parameters
    ----------
    ds : xarray.Dataset
        An analysis (:func:`crsky.analysis.analyze_run`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.lines import Line2D

    fig = _new_figure(8.0, 6.2)
    ax = fig.add_axes([0.11, 0.10, 0.58, 0.74])
    t = np.asarray(ds["t_omega"].values, dtype=float)
    lmax = int(ds.sizes["ell"]) - 1
    high = range(2, min(9, lmax) + 1)
    greens = _high_ell_colours(len(high))
    for k, name in enumerate(_gradient_names(ds)):
        ls = _gradient_style(name, k)
        d = ds.sel(gradient=name)
        cl = np.asarray(d["cl"].values, dtype=float)
        err = np.asarray(d["cl_err"].values, dtype=float)
        series = [(0, "tab:blue", 2.0)] + [(1, "black", 2.0)] + [(l, greens[i], 1.1) for i, l in enumerate(high)]
        for ell, colour, lw in series:
            if ell > lmax:
                continue
            ax.plot(t, cl[:, ell], ls=ls, color=colour, lw=lw)
            lo, hi = _positive_band(cl[:, ell], err[:, ell])
            ax.fill_between(t, lo, hi, color=colour, alpha=0.12 if ell >= 2 else 0.18, lw=0)
        dip = np.asarray(d["dipole_standard"].values, dtype=float)
        ax.plot(t, dip, ls=ls, color="magenta", lw=2.0)
        if "dipole_standard_unbiased" in d:
            # C_1 of the R-realisation mean map carries (<C_1> - C_1(E dI)) / R of
            # realisation scatter; shade down to the estimate without it
            unbiased = np.asarray(d["dipole_standard_unbiased"].values, dtype=float)
            ax.fill_between(t, np.maximum(unbiased, 0.01 * dip), dip, color="magenta", alpha=0.15, lw=0)
        ax.plot(t, d["noise"].values, ls=ls, color="red", lw=1.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(t[0], t[-1])
    _clip_bottom(ax)
    ax.set_xlabel(r"backtracking time  $t\,\Omega$")
    ax.set_ylabel(r"angular power $\langle C_\ell\rangle$ of $\delta I$" "\n"
                  r"for $|\nabla n/n| = 1/L_c$  (scales as $|\nabla n/n|^2 L_c^2$)")
    marker = _steady_marker(ax, t)
    _add_time_axis(ax, _rl(ds))
    ax.grid(True, which="major", alpha=0.3)

    colour_handles = [
        Line2D([], [], color="tab:blue", lw=2, label=r"$\langle C_0\rangle$ (monopole)"),
        Line2D([], [], color="black", lw=2, label=r"$\langle C_1\rangle$ (dipole)"),
    ]
    if len(high):
        colour_handles.append(Line2D([], [], color=greens[len(greens) // 2], lw=1.5,
                                     label=rf"$\langle C_\ell\rangle$, $\ell$ = 2..{high[-1]} (colour bar)"))
    colour_handles += [
        Line2D([], [], color="magenta", lw=2, label="standard-diffusion dipole\n"
               r"$C_1$ of $\langle\delta I\rangle$ (eq. 1.1)"),
        _band_handle("shade: down to the estimate\nwithout the $\\langle C_1\\rangle/R$ bias",
                     colour="magenta"),
        Line2D([], [], color="red", lw=1.6, label="shot noise $\\mathcal{N}$ (eq. 3.1)"),
    ]
    style_handles = [Line2D([], [], color="0.3", ls=_gradient_style(n, k), lw=1.8, label=_gradient_text(ds, n))
                     for k, n in enumerate(_gradient_names(ds))]
    band = [_band_handle("standard error over\nrealisations")]
    if marker:
        band.append(Line2D([], [], color="0.6", lw=0.8, ls="--",
                           label=rf"$t\Omega$ = {STEADY_STATE_T_OMEGA:g}: steady state" "\n"
                           "reached in the paper"))
    leg1 = fig.legend(handles=colour_handles, loc="upper left", bbox_to_anchor=(0.705, 0.84), fontsize=8.5,
                      title="colour: quantity", title_fontsize=9, frameon=False)
    leg2 = fig.legend(handles=style_handles + band, loc="upper left", bbox_to_anchor=(0.705, 0.45), fontsize=8.5,
                      title="line style: gradient", title_fontsize=9, frameon=False)
    del leg1, leg2
    if len(high):
        _ell_colourbar(fig, [0.72, 0.065, 0.24, 0.018], high)
    fig.suptitle("Angular power spectrum against backtracking time (cf. Mertsch & Ahlers 2015, Fig. 2)",
                 fontsize=11, x=0.5, y=0.985)
    fig.text(0.5, 0.945, _run_label(ds), ha="center", fontsize=8.5, color="0.3")
    return fig


#: Sequential colour map of the curves l = 2..9 in Fig. 2 (keyed by a colour bar).
_HIGH_ELL_CMAP = "viridis"
_HIGH_ELL_RANGE = (0.0, 0.85)  # leave out viridis' pale yellow end


def _high_ell_colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 0:
        return []
    cmap = colormaps[_HIGH_ELL_CMAP]
    return [cmap(v) for v in np.linspace(*_HIGH_ELL_RANGE, n)]


def _ell_colourbar(fig, rect, ells) -> None:
    """Discrete colour bar keying the ``l = 2..9`` curves of Fig. 2."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    ells = list(ells)
    cmap = ListedColormap(_high_ell_colours(len(ells)))
    norm = BoundaryNorm(np.arange(ells[0] - 0.5, ells[-1] + 1.0), cmap.N)
    cax = fig.add_axes(rect)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal", ticks=ells)
    cbar.set_label(r"multipole $\ell$ of the $\langle C_\ell\rangle$ curves", fontsize=8)
    cbar.ax.tick_params(labelsize=7.5)


def _band_handle(label: str, colour="0.5"):
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, alpha=0.25, lw=0, label=label)


def _clip_bottom(ax, decades: float = 9.0) -> None:
    """Keep at most ``decades`` decades on a log y axis (bands clipped near zero)."""
    lo, hi = ax.get_ylim()
    if hi > 0 and lo > 0 and math.log10(hi / lo) > decades:
        ax.set_ylim(hi / 10.0**decades, hi)


def _steady_marker(ax, t) -> bool:
    """The paper's ``t Omega = 100`` (steady state reached there) as a dashed line; whether drawn."""
    if t[0] < STEADY_STATE_T_OMEGA < t[-1]:
        ax.axvline(STEADY_STATE_T_OMEGA, color="0.6", lw=0.8, ls="--", zorder=0)
        ax.text(STEADY_STATE_T_OMEGA * 1.06, 0.03, r"$t\Omega$ = 100", transform=ax.get_xaxis_transform(),
                fontsize=8, color="0.45", rotation=90, va="bottom")
        return True
    return False


# ---------------------------------------------------------------------------------
# Fig. 3
# ---------------------------------------------------------------------------------
def plot_spectrum_shape(ds, times=None):
    """Fig. 3: ``C_hat_l / C_hat_1`` at three snapshots with BGK curves and the noise band.

    Parameters
    ----------
    ds : xarray.Dataset
        An analysis.
    times : sequence of int, optional
        Snapshot indices; default :func:`select_times`.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per gradient. Points: ``C_hat_l / C_hat_1`` with the standard error
        of ``<C_l>`` over realisations (``/ C_hat_1``), slightly offset in ``l`` per
        snapshot. Thin steps: the noise level ``sigma_N(l) / C_hat_1`` of each snapshot,
        the 1-sigma noise of the estimate (``noise_err`` = ``N sqrt(2/((2l+1)R))``);
        grey: below that level at the latest snapshot. Lines: eq. (4.7) for
        ``p = 1/3, 1/2, 2/3`` (normalised to 1 at ``l = 1``, as the paper) and the fitted
        ``p`` of the analysis (last snapshot, with the free normalisation of the fit, thick
        over the fitted multipoles) with its 1-sigma range. Points with
        ``C_hat_l <= 0`` cannot be shown on the log axis and are counted in the legend.
        Open diamonds: the relative part ``cl_relative - N`` (normalised at its own
        ``l = 1``) at the earliest snapshot shown, where the analysis has it.
    """
    t = np.asarray(ds["t_omega"].values, dtype=float)
    if times is None:
        times, steady = select_times(t)
    else:
        times = np.asarray(times, dtype=int)
        steady = bool(np.all(t[times] >= STEADY_STATE_T_OMEGA))
    names = _gradient_names(ds)
    lmax = int(ds.sizes["ell"]) - 1
    fig = _new_figure(6.0 * len(names) + 0.4, 6.8)
    axes = [fig.add_axes([0.07 + k * (0.92 / len(names)), 0.285, 0.92 / len(names) - 0.085, 0.59])
            for k in range(len(names))]
    colours = _time_colours(len(times))
    l_curve = np.unique(np.geomspace(1, max(lmax, 2), 400).round().astype(int))
    l_curve = l_curve[l_curve <= lmax]
    for ax, name in zip(axes, names):
        _shape_panel(ax, ds, name, times, colours, l_curve)
    fig.suptitle("Shape of the angular power spectrum (cf. Mertsch & Ahlers 2015, Fig. 3)", fontsize=11, y=0.99)
    fig.text(0.5, 0.95, _run_label(ds), ha="center", fontsize=8.5, color="0.3")
    steady_lines = textwrap.wrap(_steady_text(ds, names), int(17 * fig.get_figwidth()), break_long_words=False)
    fig.text(0.5, 0.935, _mathtext("\n".join(steady_lines)), ha="center", va="top", fontsize=8, color="0.15")
    return fig


def _steady_text(ds, names) -> str:
    """What the analysis says about the steady state (its ``steady_state`` test), for Fig. 3.

    A gradient is called steady only where the analysis' test passed; an analysis
    without the test (older crsky) says so.
    """
    if "steady_state" not in ds:
        return "steady state not tested (analysis of an older crsky: run crsky analyze again)"
    statuses = {}
    for part in str(ds.attrs.get("steady_state_status", "")).split("; "):
        name, _, status = part.partition(": ")
        statuses[name] = status
    parts = []
    for n in names:
        status = statuses.get(n, "")
        if int(ds["steady_state"].sel(gradient=n).values):
            parts.append(f"{n}: steady")
        else:
            reason = status.partition(": ")[2] if status.startswith(("not steady:", "not tested:")) else status
            parts.append(f"{n}: NOT steady ({reason})" if reason else f"{n}: NOT steady")
    test = (f"steady-state test of the analysis (C_hat_1 and C_hat_l/C_hat_1, l = 2..{STEADY_LMAX}, equal to the last "
            f"snapshot from half its time on, {STEADY_NSIGMA:g} sigma): ")
    return test + "; ".join(parts)


_MATHTEXT = {"C_hat_l/C_hat_1": r"$\hat C_\ell/\hat C_1$", "C_hat_l": r"$\hat C_\ell$", "C_hat_1": r"$\hat C_1$",
             "noise_err_l": r"$\sigma_{\mathcal{N},\ell}$", "chi2/dof": r"$\chi^2$/dof", "t Omega": r"$t\Omega$",
             "l >=": r"$\ell \geq$", "l =": r"$\ell$ =", "sigma": r"$\sigma$"}
_MATHTEXT_RE = re.compile(r"(?<![\\\w])(" + "|".join(re.escape(k) for k in sorted(_MATHTEXT, key=len, reverse=True))
                          + r")(?!\w)")


def _mathtext(text: str) -> str:
    """The analysis' plain-text words for estimators in mathtext, for figure labels (one pass)."""
    return _MATHTEXT_RE.sub(lambda m: _MATHTEXT[m.group(1)], text)


def _shape_panel(ax, ds, name: str, times, colours, l_curve) -> None:
    """One panel of Fig. 3 (one gradient): points, relative part, BGK curves, the fit."""
    from matplotlib.lines import Line2D

    from .bgk import bgk_ratio

    d = ds.sel(gradient=name)
    t = np.asarray(ds["t_omega"].values, dtype=float)
    lmax = int(ds.sizes["ell"]) - 1
    ell = np.arange(1, lmax + 1)
    handles = []
    shown_min, shown_max = _shape_points(ax, d, t, times, colours, handles)
    if "cl_relative" in d and len(times):
        # The relative part (spectrum of dI - E[dI]) at the earliest time shown, where
        # the noise is lowest: what the ansatz's v_r(x) describes (docs/validation.md 5.1).
        k = times[0]
        rel = np.asarray(d["cl_relative"].values[k], dtype=float) - float(d["noise"].values[k])
        if rel[1] > 0:
            r_rel = rel[1:] / rel[1]
            ok = r_rel > 0
            ax.plot(ell[ok] * 1.0, r_rel[ok], ls="none", marker="D", ms=5, mfc="none", mec="0.1", mew=0.9,
                    zorder=3.5)
            handles.append(Line2D([], [], ls="none", marker="D", ms=5, mfc="none", mec="0.1",
                                  label=rf"relative part only ($dI - E[dI]$), $t\Omega$ = {t[k]:.3g}"))
            shown_min = min(shown_min, float(np.min(r_rel[ok])))
    for p in BGK_REFERENCE_P:
        ax.plot(l_curve, bgk_ratio(p, lmax)[l_curve - 1], color="0.25", lw=1.3, ls=_BGK_STYLES[p], zorder=2)
        handles.append(Line2D([], [], color="0.25", lw=1.3, ls=_BGK_STYLES[p],
                              label=f"BGK eq. 4.7, p = {_frac(p)}"))
    p_fit = float(d["p_fit"].values)
    if math.isfinite(p_fit) and 0 < p_fit <= 1:
        handles.extend(_draw_fit(ax, d, t, lmax, l_curve))
    else:
        handles.append(Line2D([], [], color="none", label="no BGK fit at the last snapshot:\n"
                              + _fit_status(ds, name)))
    handles.append(Line2D([], [], color="0.3", lw=0.8, drawstyle="steps-mid",
                          label=r"thin steps: noise $\sigma_\mathcal{N}(\ell)/\hat C_1$ (1$\sigma$) per time"))
    handles.append(_band_handle(r"below the noise level of the latest time"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(0.85, lmax * 1.15)
    bottom = max(min(shown_min, float(bgk_ratio(BGK_REFERENCE_P[0], lmax)[-1])) / 3.0, 1e-8)
    ax.set_ylim(bottom, shown_max * 2.0)
    ax.set_xlabel(r"multipole $\ell$")
    ax.set_ylabel(r"$\hat C_\ell / \hat C_1$,   $\hat C_\ell = \langle C_\ell\rangle - \mathcal{N}$")
    ax.set_title(_gradient_text(ds, name), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7.5,
              frameon=False)


def _shape_points(ax, d, t, times, colours, handles) -> tuple[float, float]:
    """``C_hat_l / C_hat_1`` with errors and the noise steps of each snapshot; appends
    legend handles; returns the smallest and largest value shown."""
    from matplotlib.lines import Line2D

    lmax = int(d.sizes["ell"]) - 1
    ell = np.arange(1, lmax + 1)
    cl_hat = np.asarray(d["cl_hat"].values, dtype=float)
    cl_err = np.asarray(d["cl_err"].values, dtype=float)
    nerr = np.asarray(d["noise_err"].values, dtype=float)
    shown_max, shown_min = 1.0, 1.0
    for n_t, (colour, k) in enumerate(zip(colours, times)):
        shift = 1.0 + 0.035 * (n_t - (len(times) - 1) / 2.0)  # side by side, not on top
        c1 = cl_hat[k, 1]
        label = rf"$t\Omega$ = {t[k]:.3g}"
        if not c1 > 0:
            handles.append(Line2D([], [], color=colour, marker="o", ls="none",
                                  label=label + r": $\hat C_1 \leq 0$, not shown"))
            continue
        ratio = cl_hat[k, 1:] / c1
        rerr = cl_err[k, 1:] / c1
        band = nerr[k, 1:] / c1
        pos = ratio > 0
        if k == times[-1]:  # shade below the latest noise level, outline the others
            floor = 1e-3 * np.nanmin(band[band > 0]) if np.any(band > 0) else 1e-12
            ax.fill_between(ell, floor, band, step="mid", color="0.5", alpha=0.18, lw=0, zorder=0.5)
        ax.step(ell, band, where="mid", color=colour, lw=0.8, alpha=0.9, zorder=1)
        lo = np.minimum(rerr, ratio - np.maximum(ratio - rerr, 0.02 * ratio))
        ax.errorbar(ell[pos] * shift, ratio[pos], yerr=[lo[pos], rerr[pos]], fmt="o", ms=4, color=colour,
                    mfc=colour, capsize=0, lw=1.0, zorder=3)
        n_neg = int(np.sum(~pos))
        if n_neg:
            label += f" ({n_neg} $\\ell$ with $\\hat C_\\ell \\leq 0$ not shown)"
        handles.append(Line2D([], [], color=colour, marker="o", ls="-", lw=1.0, ms=4, label=label))
        if np.any(pos):
            shown_max = max(shown_max, float(np.max(ratio[pos] + rerr[pos])))
            shown_min = min(shown_min, float(np.min(ratio[pos])))
    return shown_min, shown_max


def _fit_status(ds, name: str) -> str:
    """The analysis' fit status of one gradient, wrapped for a legend."""
    status = "see the analysis attribute fit_status"
    for part in str(ds.attrs.get("fit_status", "")).split("; "):
        if part.startswith(f"{name}: "):
            status = part[len(name) + 2:]
    return "\n".join(textwrap.wrap(_mathtext(status), 48, break_long_words=False))


def _draw_fit(ax, d, t, lmax: int, l_curve):
    """The stored BGK fit curve (thick over the fit range), its 1-sigma band; the legend handle.

    The line is the analysis' ``fit_curve`` itself (``fit_norm`` times eq. 4.7 with
    ``p_fit``), so the figure shows exactly the fitted curve; both lines carry the gid
    ``"bgk_fit"``. Returns the legend handles: the fit (with its interval, flagged where
    it is clipped at 0 or 1) and its band.
    """
    from matplotlib.lines import Line2D

    from .bgk import bgk_ratio

    def ratio(p):
        return bgk_ratio(min(max(p, 1e-6), 1.0 - 1e-9), lmax)[l_curve - 1]

    p_fit = float(d["p_fit"].values)
    p_err = float(d["p_err"].values)
    amp = float(d["fit_norm"].values)
    curve = np.asarray(d["fit_curve"].values, dtype=float)[l_curve]
    lo_fit = int(d["fit_lmin"].values)
    hi_fit = int(d["fit_lmax"].values)
    ax.plot(l_curve, curve, color="crimson", lw=1.2, ls="-", zorder=2.5, alpha=0.8, gid="bgk_fit")
    inside = (l_curve >= lo_fit) & (l_curve <= hi_fit)
    ax.plot(l_curve[inside], curve[inside], color="crimson", lw=3.0, zorder=2.6, alpha=0.8,
            solid_capstyle="butt", gid="bgk_fit")
    lo_p = float(d["p_lo"].values)
    hi_p = float(d["p_hi"].values)
    band = None
    if math.isfinite(lo_p) and math.isfinite(hi_p) and hi_p > lo_p:
        ax.fill_between(l_curve, amp * ratio(lo_p), amp * ratio(hi_p), color="crimson", alpha=0.15, lw=0,
                        zorder=1.5)
        band = _band_handle(r"1$\sigma$ range of p ($\chi^2 = \chi^2_{min} + 1$), same A", colour="crimson")
    flag = int(d["p_clipped"].values) if "p_clipped" in d else 0
    interval = p_interval_text(p_fit, lo_p, hi_p, bool(flag & 1), bool(flag & 2))
    chi2 = float(d["fit_chi2_dof"].values) if "fit_chi2_dof" in d else float("nan")
    label = (f"fit at $t\\Omega$ = {t[-1]:.3g}: {interval}\n"
             f"free norm. A = {amp:.2g}; thick: fitted $\\ell$ = {lo_fit}..{hi_fit}, $\\chi^2$/dof = {chi2:.2g}")
    del p_err
    handles = [Line2D([], [], color="crimson", lw=2.0, label=label)]
    return handles + ([band] if band is not None else [])


def _time_colours(n: int) -> list:
    if n <= len(_TIME_COLOURS):
        return list(_TIME_COLOURS[:n]) if n < 3 else list(_TIME_COLOURS)
    from matplotlib import colormaps

    return [colormaps["viridis"](v) for v in np.linspace(0, 0.9, n)]


def _frac(p: float) -> str:
    for text, value in (("1/3", 1 / 3), ("1/2", 0.5), ("2/3", 2 / 3)):
        if abs(p - value) < 1e-12:
            return text
    return f"{p:g}"


# ---------------------------------------------------------------------------------
# Sky maps
# ---------------------------------------------------------------------------------
#: Remap a HEALPix map from momentum to arrival directions (the analysis' helper).
arrival_map = arrival_direction_map


def plot_sky_maps(ds, gradient: str | None = None):
    """Mollweide maps of ``dI`` of one realisation at three times, in arrival directions.

    The maps are the analysis' ``skymap``: ``dI_i = [x_i(-T) - 3 K p_i(-T)] . g`` of
    realisation ``skymap_realisation`` at the snapshots ``map_t_omega``, with the
    ``K_map`` and ``g`` of the analysis. Each is remapped with :func:`arrival_map` so
    that each point of the sky shows the intensity arriving *from* that direction.
    Coordinates: the simulation frame, ``B0`` along ``+z`` at the north pole, ``+x`` at
    the centre (longitude 0), longitude increasing to the left (astronomical
    convention, as ``healpy.mollview``). Top row: ``dI`` minus its sky mean; bottom
    row: monopole and dipole removed (``healpy.remove_dipole``), the small-scale
    structure. Each panel has its own symmetric colour scale.

    Parameters
    ----------
    ds : xarray.Dataset
        An analysis.
    gradient : str, optional
        Gradient name; default ``"parallel"`` if present, else the first.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import healpy as hp

    names = _gradient_names(ds)
    if gradient is None:
        gradient = "parallel" if "parallel" in names else names[0]
    if gradient not in names:
        raise InputError(f"gradient {gradient!r} is not in the analysis (has {', '.join(names)})")
    realisation = int(ds.attrs["skymap_realisation"])
    t = np.asarray(ds["map_t_omega"].values, dtype=float)
    maps = np.asarray(ds["skymap"].sel(gradient=gradient).values, dtype=float)  # (map_time, npix)
    nside = hp.npix2nside(maps.shape[-1])
    times = range(t.size)

    n = len(times)
    fig = _new_figure(4.3 * n + 0.3, 6.6)
    proj = hp.projector.MollweideProj(xsize=700)
    vec2pix = partial(hp.vec2pix, nside)
    width = 0.96 / n
    for col, k in enumerate(times):
        sky = arrival_map(maps[k])
        mean = float(sky.mean())
        rows = [
            (sky - mean, r"$\delta I - \langle\delta I\rangle_\mathrm{sky}$", f"sky mean {mean:+.3g} removed"),
            (_without_dipole(sky), r"$\delta I$, $\ell \leq 1$ removed", "monopole + dipole removed"),
        ]
        for row, (m, cbar_label, note) in enumerate(rows):
            ax = fig.add_axes([0.02 + col * width, 0.53 - row * 0.45, width - 0.02, 0.33])
            _draw_mollweide(fig, ax, proj, m, vec2pix, cbar_label)
            title = rf"$t\Omega$ = {t[k]:.3g}" if row == 0 else ""
            ax.set_title(f"{title}\n{note}" if title else note, fontsize=9)
    fig.suptitle(f"Relative intensity $\\delta I$ in ARRIVAL directions $-\\hat p_i$; realisation {realisation}, "
                 f"{_gradient_text(ds, gradient)}", fontsize=10.5, y=0.985)
    fig.text(0.5, 0.925, "Mollweide, simulation frame: $\\mathbf{B}_0$ along +z (north pole), +x at the centre, "
             "longitude increasing to the left;  " + _run_label(ds), ha="center", fontsize=8, color="0.3")
    return fig


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _without_dipole(m) -> np.ndarray:
    """``m`` minus its least-squares monopole and dipole (``healpy.remove_dipole``)."""
    import healpy as hp

    with _quiet():
        return np.asarray(hp.remove_dipole(np.asarray(m, dtype=float), fitval=False), dtype=float)


def _draw_mollweide(fig, ax, proj, m, vec2pix, cbar_label: str) -> None:
    with _quiet():
        img = np.asarray(proj.projmap(np.asarray(m, dtype=float), vec2pix), dtype=float)
    img = np.ma.masked_invalid(np.where(np.isfinite(img), img, np.nan))
    vmax = float(np.nanmax(np.abs(m))) or 1.0
    im = ax.imshow(img, origin="lower", extent=proj.get_extent(), cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                   interpolation="nearest", aspect="equal")
    # graticule every 30 degrees and the outline
    for lat in (-60, -30, 0, 30, 60):
        lon = np.linspace(-180, 180, 181)
        x, y = proj.ang2xy(lon, np.full_like(lon, lat), lonlat=True)
        ax.plot(x, y, color="0.35", lw=0.4, alpha=0.6)
    for lon0 in range(-150, 181, 30):
        lat = np.linspace(-90, 90, 91)
        x, y = proj.ang2xy(np.full_like(lat, float(lon0)), lat, lonlat=True)
        ax.plot(x, y, color="0.35", lw=0.4, alpha=0.6 if lon0 not in (180, -180) else 0)
    lon = np.linspace(-180, 180, 361)
    for edge in (179.999, -179.999):
        x, y = proj.ang2xy(np.full(181, edge), np.linspace(-90, 90, 181), lonlat=True)
        ax.plot(x, y, color="black", lw=0.8)
    del lon
    ax.text(0.0, 1.04, "+z", ha="center", va="bottom", fontsize=7)
    ax.text(0.0, -1.04, "\u2212z", ha="center", va="top", fontsize=7)
    ax.text(0.0, 0.0, "+x", ha="center", va="center", fontsize=7, color="0.1")
    xl, yl = proj.ang2xy(90.0, 0.0, lonlat=True)
    ax.text(float(xl), float(yl), "+y", ha="center", va="center", fontsize=7, color="0.1")
    ax.set_xlim(-2.05, 2.05)
    ax.set_ylim(-1.12, 1.12)
    ax.set_axis_off()
    cbar = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.07, pad=0.02, aspect=30)
    cbar.set_label(cbar_label + r"  (dimensionless, $|\nabla n/n| = 1/L_c$)", fontsize=7.5)
    cbar.ax.tick_params(labelsize=7)
    cbar.formatter.set_powerlimits((-2, 3))
    cbar.update_ticks()


# ---------------------------------------------------------------------------------
# Diffusion coefficients
# ---------------------------------------------------------------------------------
def plot_diffusion(ds):
    """Running ``K_par(T)``, ``K_perp(T)`` and the relative ``K~`` (eq. 2.4), in ``L_c c``.

    Solid: ``K^s = <x x> / (2T)`` over all particles and realisations (``K_par = K_zz``,
    ``K_perp = (K_xx + K_yy)/2``); dashed: the relative diffusion coefficients ``K~^s``
    (pairs of one sky); bands: standard errors over realisations; grey: the ballistic
    limit ``T / 6`` of each component.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _new_figure(7.5, 5.6)
    ax = fig.add_axes([0.12, 0.11, 0.84, 0.69])
    t = np.asarray(ds["t_omega"].values, dtype=float)
    T = np.asarray(ds["T"].values, dtype=float)
    series = [("K_par", "tab:blue", "-", r"$K_\parallel = K^s_{zz}$"),
              ("K_perp", "tab:orange", "-", r"$K_\perp = (K^s_{xx} + K^s_{yy})/2$")]
    if "K_rel_par" in ds and "K_rel_perp" in ds:
        series += [("K_rel_par", "tab:blue", "--", r"relative $\tilde K_\parallel$ (eq. 2.4)"),
                   ("K_rel_perp", "tab:orange", "--", r"relative $\tilde K_\perp$ (eq. 2.4)")]
    for var, colour, ls, label in series:
        y = np.asarray(ds[var].values, dtype=float)
        ax.plot(t, y, color=colour, ls=ls, lw=1.8, label=label)
        if f"{var}_err" in ds:
            lo, hi = _positive_band(y, ds[f"{var}_err"].values)
            ax.fill_between(t, lo, hi, color=colour, alpha=0.2, lw=0)
    ax.plot(t, T / 6.0, color="0.5", ls=":", lw=1.2, label=r"ballistic limit $T/6$ (c = 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(t[0], t[-1])
    ymin = np.nanmin([np.nanmin(ds[v].values) for v, *_ in series])
    ymax = np.nanmax([np.nanmax(ds[v].values) for v, *_ in series])
    if np.isfinite(ymin) and np.isfinite(ymax) and ymin > 0:
        ax.set_ylim(ymin / 2.0, ymax * 3.0)
    ax.set_xlabel(r"backtracking time  $t\,\Omega$")
    ax.set_ylabel(r"running diffusion coefficient  $\langle x_i x_j\rangle/(2T)$   [$L_c\,c$]")
    marker = _steady_marker(ax, t)
    _add_time_axis(ax, _rl(ds))
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(_band_handle("standard error over realisations"))
    if marker:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.6", lw=0.8, ls="--",
                              label=rf"$t\Omega$ = {STEADY_STATE_T_OMEGA:g}: steady state reached in the paper"))
    ax.legend(handles=handles, loc="upper left", fontsize=8.5, framealpha=0.9)
    last = (f"at $t\\Omega$ = {t[-1]:.3g}: $K_\\parallel$ = {float(ds['K_par'][-1]):.3g} $\\pm$ "
            f"{float(ds['K_par_err'][-1]):.2g}, $K_\\perp$ = {float(ds['K_perp'][-1]):.3g} $\\pm$ "
            f"{float(ds['K_perp_err'][-1]):.2g}  $L_c c$")
    fig.suptitle("Diffusion coefficients against backtracking time", fontsize=11, y=0.985)
    fig.text(0.5, 0.935, _run_label(ds), ha="center", fontsize=8.5, color="0.3")
    fig.text(0.5, 0.905, last, ha="center", fontsize=8.5, color="0.15")
    return fig


# ---------------------------------------------------------------------------------
# Gyrotropy and the angle between gradient and B0
# ---------------------------------------------------------------------------------
_AXIS_STYLES = {"B0": ("-", "o", r"about $\mathbf{B}_0$"), "local": ("--", "s", r"about local $\mathbf{B}(0)$")}


def plot_gyrotropy(ds, max_rows: int = 4):
    """The gyrotropic (``m = 0``) share of ``<C_l>`` about ``B0`` and the local field.

    One row per gradient (the first ``max_rows``). Left: ``cl_gyro / <C_l>`` against
    ``l`` at three snapshots (:func:`select_times`) with the isotropic value
    ``1/(2l+1)``; middle: the same against ``t Omega`` for ``l = 1..4``; right:
    ``cl_gyro`` and ``cl_nongyro`` (``m != 0``) against ``l`` at the last snapshot.
    Solid: about ``B0``; dashed: about the local field ``B(0)`` of each realisation.
    Error bars and bands: standard errors over realisations.

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = _gradient_names(ds)[:max_rows]
    t = np.asarray(ds["t_omega"].values, dtype=float)
    ell = np.asarray(ds["ell"].values)
    lmax_show = int(min(ell[-1], 20))
    times, _ = select_times(t)
    colours = _time_colours(len(times))
    ell_colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    fig = _new_figure(13.0, 2.9 * len(names) + 1.2)
    gs = fig.add_gridspec(len(names), 3, left=0.06, right=0.985, bottom=0.9 / (2.9 * len(names) + 1.2),
                          top=1.0 - 0.95 / (2.9 * len(names) + 1.2), wspace=0.28, hspace=0.42)
    ls_iso = np.arange(1, lmax_show + 1)
    for row, name in enumerate(names):
        d = ds.sel(gradient=name)
        ax_l, ax_t, ax_p = (fig.add_subplot(gs[row, c]) for c in range(3))
        for axis in ds["axis"].values:
            ls, marker, label = _AXIS_STYLES.get(str(axis), ("-.", "^", str(axis)))
            f, fe = d["gyro_fraction"].sel(axis=axis), d["gyro_fraction_err"].sel(axis=axis)
            for k, ti in enumerate(times):
                ax_l.errorbar(ls_iso + (0.12 if ls == "--" else -0.12), f.values[ti, 1:lmax_show + 1],
                              yerr=fe.values[ti, 1:lmax_show + 1], color=colours[k], ls=ls, marker=marker, ms=3,
                              lw=1.0, capsize=1.5,
                              label=f"$t\\Omega$ = {t[ti]:.3g}, {label}" if row == 0 else None)
            for k, l in enumerate(range(1, min(4, int(ell[-1])) + 1)):
                y, e = f.values[:, l], np.nan_to_num(fe.values[:, l])
                ax_t.plot(t, y, color=ell_colours[k], ls=ls, lw=1.4,
                          label=f"$\\ell$ = {l}, {label}" if row == 0 else None)
                ax_t.fill_between(t, y - e, y + e, color=ell_colours[k], alpha=0.15, lw=0)
            for var, colour, what in (("cl_gyro", "tab:purple", "gyrotropic ($m=0$)"),
                                      ("cl_nongyro", "tab:green", r"non-gyrotropic ($m\neq0$)")):
                y = d[var].sel(axis=axis).values[-1, 1:lmax_show + 1]
                ax_p.errorbar(ls_iso, y, yerr=d[f"{var}_err"].sel(axis=axis).values[-1, 1:lmax_show + 1],
                              color=colour, ls=ls, marker=marker, ms=3, lw=1.0, capsize=1.5,
                              label=f"{what}, {label}" if row == 0 else None)
        ax_l.plot(ls_iso, 1.0 / (2 * ls_iso + 1), color="0.4", ls=":", lw=1.2,
                  label=r"isotropic sky: $1/(2\ell+1)$" if row == 0 else None)
        for k, l in enumerate(range(1, min(4, int(ell[-1])) + 1)):
            ax_t.axhline(1.0 / (2 * l + 1), color=ell_colours[k], ls=":", lw=0.8)
        ax_l.set_ylim(0, 1.05)
        ax_t.set_ylim(0, 1.3)  # room for the legend above the curves
        ax_t.set_xscale("log")
        ax_p.set_yscale("log")
        ax_l.set_xlabel(r"multipole $\ell$")
        ax_t.set_xlabel(r"backtracking time $t\Omega$")
        ax_p.set_xlabel(r"multipole $\ell$")
        ax_l.set_ylabel("gyrotropic fraction of $\\langle C_\\ell\\rangle$")
        ax_p.set_ylabel(f"power at $t\\Omega$ = {t[-1]:.3g}")
        ax_l.set_title(_gradient_text(ds, name), fontsize=9, loc="left")
        for ax in (ax_l, ax_t, ax_p):
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
        if row == 0:
            ax_l.legend(fontsize=6.5, loc="upper right", ncol=1, framealpha=0.85)
            ax_t.legend(fontsize=6.5, loc="upper left", ncol=2, framealpha=0.85)
            ax_p.legend(fontsize=6.5, loc="upper right", framealpha=0.85)
    fig.suptitle("Gyrotropy: the m = 0 power of each realisation's map about B0 and about the local field B(0) "
                 "(coherent part included)", fontsize=10.5, y=0.995)
    fig.text(0.5, 1.0 - 0.55 / (2.9 * len(names) + 1.2), _run_label(ds), ha="center", fontsize=8.5, color="0.3")
    return fig


def plot_angle_dependence(ds, time=None, ells=(2, 3, 4, 5)):
    """``<C_1>``, the standard dipole and ``C_hat_l / C_hat_1`` against the angle between
    gradient and ``B0`` (0..90 degrees, x-z plane), from the stored quadratic forms.

    Parameters
    ----------
    ds : xarray.Dataset
        A current analysis.
    time : float, optional
        ``t Omega`` of the snapshot (nearest); default the last.
    ells : sequence of int
        Multipoles of the shape panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .analysis.angles import angle_spectra

    a = angle_spectra(ds, np.linspace(0.0, 90.0, 91))
    k = -1 if time is None else int(np.argmin(np.abs(np.log(ds["t_omega"].values / float(time)))))
    t_sel = float(ds["t_omega"].values[k])
    angle = a["angle"].values
    fig = _new_figure(12.0, 4.9)
    ax_d = fig.add_axes([0.065, 0.12, 0.41, 0.7])
    ax_r = fig.add_axes([0.565, 0.12, 0.41, 0.7])
    c1, c1e = a["cl"].values[:, k, 1], np.nan_to_num(a["cl_err"].values[:, k, 1])
    ax_d.plot(angle, c1, color="k", lw=1.8, label=r"$\langle C_1\rangle$")
    ax_d.fill_between(angle, np.maximum(c1 - c1e, 1e-3 * c1), c1 + c1e, color="k", alpha=0.15, lw=0)
    ax_d.plot(angle, a["dipole_standard_unbiased"].values[:, k], color="tab:purple", lw=1.6,
              label=r"standard dipole $C_1(E[\delta I])$ (unbiased)")
    ax_d.plot(angle, a["dipole_standard_theory"].values[:, k], color="tab:purple", lw=1.0, ls="--",
              label=r"$4\pi|K g|^2$ (eq. 1.1)")
    ax_d.plot(angle, a["noise"].values[:, k], color="tab:red", lw=1.2, ls=":", label="shot noise $N$")
    ell_colours = _high_ell_colours(len(ells))
    for j, l in enumerate(ells):
        if l <= int(ds["ell"].values[-1]):
            ax_r.plot(angle, a["ratio"].values[:, k, l], color=ell_colours[j], lw=1.6,
                      label=f"$\\ell$ = {l}")
    # the analysed gradients that lie in the x-z plane with unit length: the same numbers, computed directly
    for name in _gradient_names(ds):
        g = np.asarray(ds["gradient_vector"].sel(gradient=name).values, dtype=float)
        if abs(g[1]) > 1e-12 or not math.isclose(float(np.linalg.norm(g)), 1.0, rel_tol=1e-9):
            continue
        deg = math.degrees(math.atan2(g[0], g[2]))
        if not 0.0 <= deg <= 90.0 + 1e-9:
            continue
        d = ds.sel(gradient=name)
        ax_d.plot(deg, float(d["cl"].values[k, 1]), "o", color="k", ms=5, mfc="none")
        ax_d.plot(deg, float(d["dipole_standard_unbiased"].values[k]), "s", color="tab:purple", ms=5, mfc="none")
        hat = d["cl_hat"].values[k]
        for j, l in enumerate(ells):
            if l <= int(ds["ell"].values[-1]):
                ax_r.plot(deg, hat[l] / hat[1], "o", color=ell_colours[j], ms=5, mfc="none")
    ax_d.set_yscale("log")
    _clip_bottom(ax_d, 6.0)
    ax_d.set_ylabel(f"power at $t\\Omega$ = {t_sel:.3g}  ($|g| = 1/L_c$)")
    ax_r.set_ylabel(r"$\hat C_\ell / \hat C_1$")
    shown = a["ratio"].values[:, k, [l for l in ells if l <= int(ds["ell"].values[-1])]]
    if np.any(np.isfinite(shown) & (shown > 0)):
        ax_r.set_yscale("log")
    else:  # a noise-dominated run: C_hat_l <= 0 everywhere, drawn on a linear axis
        ax_r.text(0.5, 0.5, r"no $\hat C_\ell / \hat C_1 > 0$: noise dominated", transform=ax_r.transAxes,
                  ha="center", fontsize=9, color="0.4")
    for ax in (ax_d, ax_r):
        ax.set_xlabel(r"angle between $\nabla n$ and $\mathbf{B}_0$  [degrees]")
        ax.set_xlim(0, 90)
        ax.set_xticks(np.arange(0, 91, 15))
        ax.grid(True, alpha=0.3)
    from matplotlib.lines import Line2D

    handles, _ = ax_d.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", marker="o", ls="none", mfc="none",
                          label="analysed gradients (direct)"))
    ax_d.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    ax_r.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.suptitle("Dependence on the angle between the density gradient and B0 (from the stored quadratic forms)",
                 fontsize=10.5, y=0.985)
    fig.text(0.5, 0.915, _run_label(ds), ha="center", fontsize=8.5, color="0.3")
    return fig


# ---------------------------------------------------------------------------------
# Observed spectra
# ---------------------------------------------------------------------------------
def _scale_to(model_ell, model, obs) -> float | None:
    """Amplitude ``A`` of ``A model`` fitted to the observed ``C_l`` on a log scale.

    Weighted least squares in ``ln C_l`` over the multipoles where both are positive,
    with the relative errors ``sigma_l / C_l`` (weights ``(C_l / sigma_l)^2``; equal
    weights if some error is zero): ``ln A = sum w (ln C_obs - ln C_model) / sum w``.
    A fit in linear ``C_l`` would be set by the few smallest absolute errors at high
    ``l`` and miss the low multipoles by orders of magnitude on the log axes shown.
    """
    lookup = dict(zip(np.asarray(model_ell).tolist(), np.asarray(model, dtype=float).tolist()))
    pairs = [(lookup[int(l)], c, e) for l, c, e in zip(obs.ell, obs.cl, obs.error)
             if int(l) in lookup and c > 0 and lookup[int(l)] > 0 and math.isfinite(lookup[int(l)])]
    if not pairs:
        return None
    s, o, e = (np.array(v, dtype=float) for v in zip(*pairs))
    w = (o / e) ** 2 if np.all(e > 0) else np.ones_like(o)
    return float(np.exp(np.sum(w * (np.log(o) - np.log(s))) / np.sum(w)))


def _draw_observed(ax, obs_list) -> list:
    """The measured spectra (and their noise levels); returns the legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    markers = ("o", "s", "D", "^", "v")
    obs_colours = ("black", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")
    for i, obs in enumerate(obs_list):
        colour, marker = obs_colours[i % 5], markers[i % 5]
        pos = obs.cl > 0
        lo = np.minimum(obs.sigma_low, obs.cl - 0.02 * obs.cl)  # asymmetric bars as given
        ax.errorbar(obs.ell[pos], obs.cl[pos], yerr=[lo[pos], obs.sigma_high[pos]], fmt=marker, ms=4.5,
                    color=colour, mfc="white" if i else colour, capsize=0, lw=1.0, zorder=4)
        label = f"observed: {obs.label}"
        if np.any(~pos):
            label += f"\n({int(np.sum(~pos))} $C_\\ell \\leq 0$ not shown)"
        handles.append(Line2D([], [], color=colour, marker=marker, ms=4.5, ls="-", lw=1.0,
                              mfc="white" if i else colour, label=label))
        if obs.noise is not None:
            ax.step(obs.ell, obs.noise, where="mid", color=colour, ls=":", lw=1.2)
            handles.append(Line2D([], [], color=colour, ls=":", lw=1.2, label=f"noise level {obs.label}"))
    return handles


#: Line style of every broken power law (dash-dot, unlike the dashed BGK curves).
_BPL_DASHES = (0, (5, 1.5, 1, 1.5))


def _draw_noise_levels(ax, obs_list, noise_levels) -> list:
    """A horizontal line at each given noise level ``N = f_sky 4 pi / N_CR``; the handles."""
    from matplotlib.lines import Line2D

    handles = []
    for i, (obs, level) in enumerate(zip(obs_list, noise_levels or [])):
        if level is None:
            continue
        colour = ("black", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")[i % 5]
        ax.axhline(level, color=colour, ls="-.", lw=1.0, zorder=1)
        handles.append(Line2D([], [], color=colour, ls="-.", lw=1.0,
                              label=f"noise $\\mathcal{{N}} = f_{{sky}} 4\\pi/N_{{CR}}$\n= {level:.2g} ({obs.label})"))
    return handles


def _draw_observed_fits(ax, fits: dict) -> list:
    """The BGK and broken-power-law fits to each observed spectrum (absolute); the handles."""
    from matplotlib.lines import Line2D

    from .bgk import bgk_ratio
    from .observed import broken_power_law

    handles = []
    for i, o in enumerate(fits["observed"]):
        b, bpl = o["bgk"], o["broken_power_law"]
        lo, hi = min(b["ell_min"], bpl["ell_min"]), max(b["ell_max"], bpl["ell_max"])
        l_curve = np.unique(np.geomspace(lo, hi, 200).round().astype(int))
        colour = ("darkorange", "goldenrod", "peru", "khaki", "gold")[i % 5]
        ratio = bgk_ratio(min(max(b["p"], 1e-9), 1.0 - 1e-9), hi)
        l_bgk = l_curve[l_curve >= b["ell_min"]]
        ax.plot(l_bgk, b["norm"] * ratio[l_bgk - 1], color=colour, ls="-", lw=1.8, zorder=3)
        handles.append(Line2D([], [], color=colour, ls="-", lw=1.8,
                              label=f"BGK fit to {o['label']}:\np = {b['p']:.2f} "
                              f"[{b['p_lo']:.2f}, {b['p_hi']:.2f}], $\\chi^2$/dof = {b['chi2_dof']:.2g}"))
        ax.plot(l_curve, broken_power_law(l_curve, bpl["amplitude"], bpl["ell_break"], bpl["slope_low"],
                                          bpl["slope_high"]), color=colour, ls=_BPL_DASHES, lw=1.4, zorder=3)
        handles.append(Line2D([], [], color=colour, ls=_BPL_DASHES, lw=1.4,
                              label=f"broken power law fit to {o['label']}:\n$\\ell_b$ = {bpl['ell_break']:.2g}, "
                              f"slopes {bpl['slope_low']:.2g} / {bpl['slope_high']:.2g},\n"
                              f"$\\chi^2$/dof = {bpl['chi2_dof']:.2g}"))
    return handles


def _draw_simulated(ax, ds, k: int, ref, fits=None) -> list:
    """Simulated ``C_hat_l`` of every gradient at snapshot ``k``, scaled to ``ref``, and the
    broken power law fitted to it (from ``fits``, scaled alike); the handles."""
    from matplotlib.lines import Line2D

    t = np.asarray(ds["t_omega"].values, dtype=float)
    lmax_sim = int(ds.sizes["ell"]) - 1
    handles = []
    sim_colours = ("tab:blue", "tab:red", "tab:green", "tab:orange")
    ell_sim = np.arange(1, lmax_sim + 1)
    for j, name in enumerate(_gradient_names(ds)):
        d = ds.sel(gradient=name)
        cl_hat = np.asarray(d["cl_hat"].values, dtype=float)[k, 1:]
        err = np.asarray(d["cl_err"].values, dtype=float)[k, 1:]
        amp = _scale_to(ell_sim, cl_hat, ref)
        colour = sim_colours[j % len(sim_colours)]
        short = {"parallel": r"$\nabla n \parallel \mathbf{B}_0$",
                 "perpendicular": r"$\nabla n \perp \mathbf{B}_0$"}.get(name, name)
        if amp is None:
            handles.append(Line2D([], [], color="none", label=f"simulated {name}: no common $\\ell$ > 0 "
                                  "with the data, not shown"))
            continue
        pos = cl_hat > 0
        lo = np.minimum(err, cl_hat - 0.02 * cl_hat)
        ax.errorbar(ell_sim[pos] * (1.0 + 0.04 * (j + 1)), amp * cl_hat[pos], yerr=amp * np.array([lo[pos], err[pos]]),
                    fmt="s", ms=3.5, color=colour, alpha=0.85, lw=0.8, capsize=0, zorder=3)
        handles.append(Line2D([], [], color=colour, marker="s", ms=3.5, ls="-", lw=0.8,
                              label=f"simulated $\\hat C_\\ell$, {short}\n"
                              f"$t\\Omega$ = {t[k]:.3g}, $\\times$ A = {amp:.2g}"))
        sim_fit = next((s["broken_power_law"] for s in (fits or {}).get("simulation", []) if s["gradient"] == name),
                       None)
        if sim_fit:
            from .observed import broken_power_law

            l_fit = np.unique(np.geomspace(sim_fit["ell_min"], sim_fit["ell_max"], 200).round().astype(int))
            ax.plot(l_fit, amp * broken_power_law(l_fit, sim_fit["amplitude"], sim_fit["ell_break"],
                                                  sim_fit["slope_low"], sim_fit["slope_high"]),
                    color=colour, ls=_BPL_DASHES, lw=1.1, zorder=3)
            handles.append(Line2D([], [], color=colour, ls=_BPL_DASHES, lw=1.1,
                                  label=f"broken power law fit, {short}:\n$\\ell_b$ = {sim_fit['ell_break']:.2g}, "
                                  f"slopes {sim_fit['slope_low']:.2g} / {sim_fit['slope_high']:.2g}"))
    return handles


def _draw_scaled_bgk(ax, ds, ref, lmax_all: int) -> list:
    """Eq. 4.7 for ``p = 1/2`` and the fitted ``p``, each scaled to ``ref``; the handles."""
    from matplotlib.lines import Line2D

    from .bgk import bgk_ratio

    handles = []
    l_curve = np.unique(np.geomspace(1, lmax_all, 400).round().astype(int))
    curves = [(0.5, "0.25", "-", "BGK p = 1/2")]
    p_fit = float(ds["p_fit"].values[0]) if "p_fit" in ds else float("nan")
    if math.isfinite(p_fit) and 0 < p_fit < 1:
        curves.append((p_fit, "crimson", "--", f"BGK, p = {p_fit:.2f} fitted to\nthe simulation ({_gradient_names(ds)[0]})"))
    for p, colour, ls, label in curves:
        ratio = bgk_ratio(min(p, 1.0 - 1e-9), lmax_all)
        amp = _scale_to(np.arange(1, lmax_all + 1), ratio, ref)
        if amp is None:
            continue
        ax.plot(l_curve, amp * ratio[l_curve - 1], color=colour, ls=ls, lw=1.4, zorder=2)
        handles.append(Line2D([], [], color=colour, ls=ls, lw=1.4, label=f"{label},\n$\\times$ A = {amp:.2g}"))
    return handles


def _no_positive_power(ax, obs_list) -> None:
    """Say so on the axes when no observed ``C_l`` is positive (a noise-subtracted
    spectrum may be): nothing can be drawn or scaled on a log axis, so the y range is
    set from the magnitudes of the values and errors instead of from the data drawn."""
    mags = np.concatenate([np.abs(np.concatenate([o.cl, o.error])) for o in obs_list])
    mags = mags[np.isfinite(mags) & (mags > 0)]
    lo, hi = (mags.min() / 10.0, mags.max() * 10.0) if mags.size else (1e-12, 1.0)
    ax.set_ylim(lo, hi)
    ax.text(0.5, 0.5, "no observed $C_\\ell > 0$: nothing to compare on a log scale",
            transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3")


def plot_observed(ds, observed, time=None, fits=None, noise_levels=None):
    """Measured spectra (absolute ``C_l``, as the paper's Fig. 1) with scaled simulation and BGK.

    The simulated power is that of ``|grad n / n| = 1 / L_c`` and a toy ``r_L / L_c``;
    its absolute level is not a prediction for the sky. Each simulated curve is therefore
    scaled by one amplitude ``A`` (:func:`_scale_to`: least squares in ``ln C_l`` with
    the observed relative errors, over the multipoles both have), which absorbs
    ``(|grad n / n| L_c)^2`` and the rest; the comparison is of the *shape*. Curves: the
    simulated ``C_hat_l`` of every gradient at one snapshot (default the last), and the BGK spectrum for ``p = 1/2`` and the fitted
    ``p`` scaled to the first observed spectrum over all its multipoles. Observed noise
    levels (if the file has them) are dotted steps, as in the paper's Fig. 1.

    Parameters
    ----------
    ds : xarray.Dataset
        An analysis.
    observed : ObservedSpectrum or sequence of them
        From :func:`crsky.observed.read_observed`.
    time : int, optional
        Snapshot index of the simulated spectrum; default the last.
    fits : dict, optional
        :func:`crsky.observed.comparison_record` of the same spectra and snapshot: adds
        the BGK and broken-power-law fits to each observed spectrum (absolute, as
        fitted) and the broken power law fitted to each simulated spectrum (scaled by
        that spectrum's ``A``).
    noise_levels : sequence of float or None, optional
        The noise level ``N = f_sky 4 pi / N_CR`` of each observed spectrum
        (:func:`crsky.observed.noise_level`), drawn as a horizontal line.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .observed import ObservedSpectrum

    obs_list = [observed] if isinstance(observed, ObservedSpectrum) else list(observed)
    if not obs_list:
        raise InputError("no observed spectrum given")
    t = np.asarray(ds["t_omega"].values, dtype=float)
    k = t.size - 1 if time is None else int(time)
    lmax_sim = int(ds.sizes["ell"]) - 1
    lmax_all = max(lmax_sim, max(int(o.ell.max()) for o in obs_list))

    fig = _new_figure(9.0, 6.0)
    ax = fig.add_axes([0.095, 0.11, 0.56, 0.77])
    ref = obs_list[0]
    handles = _draw_observed(ax, obs_list)
    handles += _draw_noise_levels(ax, obs_list, noise_levels)
    handles += _draw_simulated(ax, ds, k, ref, fits)
    handles += _draw_scaled_bgk(ax, ds, ref, lmax_all)
    if fits is not None:
        handles += _draw_observed_fits(ax, fits)
    ax.set_xscale("log")
    if not any(np.any(o.cl > 0) for o in obs_list):
        _no_positive_power(ax, obs_list)
    ax.set_yscale("log")
    ax.set_xlim(0.8, lmax_all * 1.25)
    _clip_bottom(ax, 8.0)
    ax.set_xlabel(r"multipole $\ell$")
    ax.set_ylabel(r"angular power $C_\ell$ of the relative intensity $\delta I$")
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.675, 0.885), fontsize=7.8, frameon=False)
    note = (f"Simulated curves: power for |grad n/n| = 1/L_c, scaled to {ref.label} by one amplitude A each "
            "(least squares in log C_l with the observed relative errors, common l only): the comparison is "
            "of the shape, not of the absolute level.")
    fig.text(0.68, 0.11, "\n".join(textwrap.wrap(note, 40)), fontsize=7.8, color="0.25", va="bottom")
    fig.suptitle("Observed angular power spectra and the simulation (cf. Mertsch & Ahlers 2015, Fig. 1)",
                 fontsize=11, y=0.985)
    fig.text(0.5, 0.935, _run_label(ds), ha="center", fontsize=8.5, color="0.3")
    return fig


# ---------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------
def make_figures(run_dir, observed=None, *, formats=("png", "pdf"), observed_noise=None,
                 fit_observed: bool = True) -> list[Path]:
    """Write all figures of a run to ``RUN_DIR/figures/`` (PNG and PDF by default).

    Parameters
    ----------
    run_dir : path
        A run directory with its current analysis (``crsky analyze`` first; see
        :func:`crsky.analysis.load_current_analysis`). Only ``analysis.nc`` is read.
    observed : path, ObservedSpectrum or sequence of them, optional
        Observed spectra (CSV, :func:`crsky.observed.read_observed`); adds
        ``observed_comparison``. Read and validated before anything is written.
    formats : sequence of str
        Matplotlib output formats.
    observed_noise : float or sequence of (float or None), optional
        Noise level ``N = f_sky 4 pi / N_CR`` of each observed spectrum
        (:func:`crsky.observed.noise_level`; one value applies to all): drawn, and the
        fits use the multipoles above it (else the file's ``noise`` column, if any).
    fit_observed : bool, optional
        Fit the observed spectra (:func:`crsky.observed.fit_observed`, default True):
        the fits are drawn and stored in ``figures/observed_fit.json`` (written
        atomically; ``analysis.nc`` is not touched). Bad input for a fit (an error
        ``<= 0`` among the multipoles used, too few multipoles) stops before anything is
        written.

    Returns
    -------
    list of pathlib.Path
        Every file written: ``fig2_spectrum_evolution``, ``fig3_spectrum_shape``,
        ``skymaps_<gradient>`` (``parallel`` when analysed), ``diffusion_coefficients``
        and, with ``observed``, ``observed_comparison``, each in every format, and
        ``observed_fit.json`` when fitted. The
        figure set is replaced: files of the stems crsky writes (:data:`FIGURE_STEMS`,
        ``skymaps_*``) in PNG, PDF or ``formats`` that this call did not write (an
        ``observed_comparison`` of an earlier ``--observed`` call) are removed, after the
        new files are in place; nothing else in the directory is touched.

    Raises
    ------
    ValueError
        Bad observed file (one line naming it and the problem).
    crsky.store.RunDirError
        Not a run directory.
    crsky.analysis.AnalysisNotCurrentError
        No current analysis of the run (missing, of an older crsky, of other
        realisations or another configuration): run ``crsky analyze RUN_DIR`` first.
    """
    from . import observed as obs_mod

    obs_list = fits = noise_levels = None
    if observed is not None:
        items = [observed] if isinstance(observed, (str, os.PathLike, obs_mod.ObservedSpectrum)) else list(observed)
        obs_list = [o if isinstance(o, obs_mod.ObservedSpectrum) else obs_mod.read_observed(o) for o in items]
        noise_levels = ([observed_noise] * len(obs_list) if observed_noise is None or np.ndim(observed_noise) == 0
                        else list(observed_noise))
        if len(noise_levels) != len(obs_list):
            raise InputError(f"{len(noise_levels)} noise levels for {len(obs_list)} observed spectra")
        if fit_observed:  # bad input for a fit stops here, before any file is written
            fits = [obs_mod.fit_observed(o, noise=n, noise_source=None if n is None else "f_sky 4 pi / N_CR")
                    for o, n in zip(obs_list, noise_levels)]
    _use_agg()
    ds = load_current_analysis(run_dir)
    out_dir = Path(run_dir) / FIGURES_DIR
    written: list[Path] = []

    def emit(fig, stem):
        try:
            written.extend(save_figure(fig, out_dir, stem, formats))
        finally:
            fig.clear()

    with _quiet_numpy():
        emit(plot_spectrum_evolution(ds), "fig2_spectrum_evolution")
        emit(plot_spectrum_shape(ds), "fig3_spectrum_shape")
        names = _gradient_names(ds)
        gname = "parallel" if "parallel" in names else names[0]
        emit(plot_sky_maps(ds, gradient=gname), f"skymaps_{gname}")
        emit(plot_diffusion(ds), "diffusion_coefficients")
        emit(plot_gyrotropy(ds), "gyrotropy")
        emit(plot_angle_dependence(ds), "angle_dependence")
        if obs_list:
            record = None if fits is None else obs_mod.comparison_record(ds, fits)
            emit(plot_observed(ds, obs_list, fits=record, noise_levels=noise_levels), "observed_comparison")
            if record is not None:
                fit_path = out_dir / obs_mod.FIT_FILE
                atomic_write_bytes(fit_path, (json.dumps(record, indent=1) + "\n").encode())
                written.append(fit_path)
    _remove_stale(out_dir, written, formats)
    return written


def _remove_stale(out_dir: Path, written, formats) -> list[Path]:
    """Remove the files of crsky's figure stems that this call did not write; return them."""
    keep = {Path(p).name for p in written}
    suffixes = {f".{fmt}" for fmt in (*_DEFAULT_FORMATS, *formats)}
    removed = []
    for path in sorted(out_dir.iterdir()):
        stem, suffix = path.stem, path.suffix
        owned = (stem in FIGURE_STEMS or stem.startswith(_SKYMAP_PREFIX)) and suffix in suffixes
        owned = owned or path.name == _FIT_FILE  # the fits of an earlier --observed call
        if owned and path.name not in keep and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def _quiet_numpy():
    with np.errstate(invalid="ignore", divide="ignore"):
        yield


# ---------------------------------------------------------------------------------
# The observatory forward model
# ---------------------------------------------------------------------------------
def plot_observatory(ds_obs, fits: dict | None = None):
    """Full-sky ``C_hat_l`` against the observatory's pseudo-``C_l`` of the same realisations.

    Top: the full-sky estimate ``<C_l> - N`` and the observatory's ``(<C~_l> - N T_l) /
    f_sky`` (:mod:`crsky.analysis.observatory`) with their standard errors, the noise
    levels ``N`` and ``N T_l / f_sky``, and the broken power laws fitted to both
    (``fits`` as returned by ``observatory._shape_fits``). Bottom: their ratio per ``l``
    (error paired over realisations), what the band and the lost ``m = 0`` modes do to
    each multipole.

    Parameters
    ----------
    ds_obs : xarray.Dataset
        :func:`crsky.analysis.observatory.observatory_dataset`.
    fits : dict, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    a = ds_obs.attrs
    ell = np.asarray(ds_obs["ell"].values)[1:]
    full, full_err = ds_obs["cl_full_hat"].values[1:], ds_obs["cl_full_err"].values[1:]
    obs, obs_err = ds_obs["pcl_hat"].values[1:], ds_obs["pcl_err"].values[1:]
    fig = _new_figure(8.0, 7.0)
    ax = fig.add_axes([0.11, 0.36, 0.85, 0.52])
    ax_r = fig.add_axes([0.11, 0.08, 0.85, 0.2], sharex=ax)
    m0 = "m = 0 removed" if a["remove_m0"] else "m = 0 kept"
    for values, err, colour, marker, shift, label in (
            (full, full_err, "tab:blue", "o", 1.0, r"full sky $\langle C_\ell\rangle - \mathcal{N}$"),
            (obs, obs_err, "tab:red", "s", 1.04, f"observatory {a['band']} ({m0}):\n"
             r"$(\langle \tilde C_\ell\rangle - \mathcal{N} T_\ell) / f_{sky}$, " f"$f_{{sky}}$ = {a['f_sky']:.2f}")):
        pos = values > 0
        ax.errorbar(ell[pos] * shift, values[pos], yerr=err[pos], fmt=marker, ms=3.5, color=colour, lw=0.9,
                    capsize=0, label=label)
    ax.axhline(a["noise"], color="tab:blue", ls=":", lw=1.2, label=r"shot noise $\mathcal{N}$ (full sky)")
    ax.step(ell, a["noise"] * ds_obs["noise_transfer"].values[1:] / a["f_sky"], where="mid", color="tab:red",
            ls=":", lw=1.2, label=r"observatory noise $\mathcal{N} T_\ell / f_{sky}$")
    from .observed import broken_power_law

    for key, colour in (("full sky", "tab:blue"), ("observatory", "tab:red")):
        fit = (fits or {}).get(key, (None, ""))[0]
        if fit is None:
            continue
        l_fit = np.geomspace(fit.ell_min, fit.ell_max, 200)
        ax.plot(l_fit, broken_power_law(l_fit, fit.amplitude, fit.ell_break, fit.slope_low, fit.slope_high),
                color=colour, ls="--", lw=1.0,
                label=f"broken power law, {key}: slopes {fit.slope_low:.2g} / {fit.slope_high:.2g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _clip_bottom(ax, 4.0)
    ax.set_ylabel(r"$C_\ell$ of $\delta I$ (gradient $1/L_c$)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left", frameon=False)
    ax.tick_params(labelbottom=False)
    ratio, ratio_err = ds_obs["ratio"].values[1:], ds_obs["ratio_err"].values[1:]
    # only where both estimates stand 2 standard errors above zero: elsewhere the ratio is noise
    ok = np.isfinite(ratio) & (full > 2 * full_err) & (obs > 2 * obs_err)
    ax_r.errorbar(ell[ok], ratio[ok], yerr=np.minimum(ratio_err[ok], 0.9 * ratio[ok]), fmt="s", ms=3,
                  color="tab:red", lw=0.8, capsize=0, label="observatory / full sky (paired over realisations; where both > 2 standard errors)")
    ax_r.axhline(1.0, color="0.4", lw=0.8)
    ax_r.set_xscale("log")
    ax_r.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax_r.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_r.yaxis.set_minor_formatter(NullFormatter())
    ax_r.set_xlabel(r"multipole $\ell$")
    ax_r.set_ylabel("ratio")
    ax_r.grid(True, which="major", alpha=0.3)
    ax_r.legend(fontsize=7.5, loc="lower right", frameon=False)
    fig.suptitle("The simulated sky as a ground-based observatory reports it", fontsize=11, y=0.985)
    fig.text(0.5, 0.935, f"band {a['band']}: dec {a['dec_min']:g}..{a['dec_max']:g} deg, angle(B0, gradient) = "
             f"{a['theta_deg']:.1f} deg, t$\\Omega$ = {a['t_omega']:.4g}, {a['n_realisations']} realisations; "
             f"B0 {a['frame']} {a['b0']}, gradient {a['gradient']}", ha="center", fontsize=8, color="0.3")
    return fig
