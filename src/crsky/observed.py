"""Reader of observed angular power spectra (``crsky plot --observed FILE.csv``).

File format (CSV, one multipole per row)::

    # synthetic example, not a measurement         <- comment lines start with '#'
    ell,C_ell,error,noise                          <- header row, required
    1,2.1e-07,0.4e-07,2.5e-11
    2,3.0e-08,0.3e-08,2.5e-11                      # trailing comments are allowed
    ...

or, with asymmetric errors, ``ell,C_ell,error_low,error_high[,noise]``.

- ``ell``: multipole, an integer from 1 to 10000 (written ``3`` or ``3.0``), each at
  most once.
- ``C_ell``: the measured power of the relative intensity ``dI``, dimensionless (any
  sign: a noise-subtracted estimate can be negative; such rows cannot appear on a
  logarithmic axis and are left out of the plot, not out of the data).
- ``error``: its 1-sigma uncertainty, ``>= 0`` (where one is 0 the comparison
  weights all multipoles equally; a fit, :func:`fit_observed`, needs every error
  of the multipoles it uses ``> 0``).
- ``error_low``, ``error_high`` (instead of ``error``): asymmetric 1-sigma errors below
  and above ``C_ell`` (``>= 0``; the interval is ``[C_ell - error_low, C_ell +
  error_high]``). A fit divides each residual by the error on the side of the model
  (:func:`crsky.bgk.sided_weights`). A file has either ``error`` or both of these.
- ``noise`` (optional column): the statistical noise level ``N`` of that multipole
  (``>= 0``), e.g. ``f_sky 4 pi / N_CR`` as in Fig. 1 of Mertsch & Ahlers (2015).

Column names are matched case-insensitively after stripping blanks; other columns are
ignored. The file is checked whole before anything uses it: every problem raises
:class:`~crsky.errors.InputError` (a :class:`ValueError`) with a one-line message
naming the file, the line and the column (the command line turns it into exit code 2).
A file larger than 16 MiB is refused unread.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["ObservedSpectrum", "read_observed", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS", "MAX_ELL"]

#: Columns every file must have (header names, case-insensitive); the errors are
#: ``error`` or both of :data:`ASYMMETRIC_ERROR_COLUMNS`.
REQUIRED_COLUMNS = ("ell", "C_ell", "error")
#: The columns of asymmetric errors, the alternative to ``error``.
ASYMMETRIC_ERROR_COLUMNS = ("error_low", "error_high")
#: Columns a file may have.
OPTIONAL_COLUMNS = ("noise",) + ASYMMETRIC_ERROR_COLUMNS
#: Largest multipole accepted: far beyond any measured cosmic-ray spectrum (l <~ 100)
#: and any simulated one (3 nside - 1), small enough for the comparison's curves.
MAX_ELL = 10_000
#: Largest file read (bytes); a spectrum of MAX_ELL rows is ~ 1 MiB.
MAX_FILE_BYTES = 16 << 20


@dataclass(frozen=True)
class ObservedSpectrum:
    """A measured angular power spectrum.

    Attributes
    ----------
    ell : numpy.ndarray of int64
        Multipoles, strictly increasing, in ``[1, MAX_ELL]``.
    cl : numpy.ndarray of float64
        ``C_ell`` of the relative intensity (dimensionless).
    error : numpy.ndarray of float64
        1-sigma uncertainty of ``cl`` (``>= 0``); with asymmetric errors the mean
        ``(error_low + error_high) / 2`` (used to weight the log-scale amplitude of the
        comparison figure).
    noise : numpy.ndarray of float64 or None
        Noise level per multipole when the file has a ``noise`` column.
    label : str
        Name for legends: the file name without its suffix.
    path : pathlib.Path
        The file read.
    error_low, error_high : numpy.ndarray of float64 or None
        Asymmetric errors below and above ``cl`` when the file has them, else None
        (use :attr:`sigma_low` / :attr:`sigma_high`, which fall back to ``error``).
    lines : numpy.ndarray of int64 or None
        The file's line number of each row (for messages), None when not read from a file.
    """

    ell: np.ndarray
    cl: np.ndarray
    error: np.ndarray
    noise: np.ndarray | None
    label: str
    path: Path
    error_low: np.ndarray | None = None
    error_high: np.ndarray | None = None
    lines: np.ndarray | None = None

    @property
    def asymmetric(self) -> bool:
        """Whether the errors are asymmetric (columns ``error_low``, ``error_high``)."""
        return self.error_low is not None

    @property
    def sigma_low(self) -> np.ndarray:
        """1-sigma error below ``cl``."""
        return self.error if self.error_low is None else self.error_low

    @property
    def sigma_high(self) -> np.ndarray:
        """1-sigma error above ``cl``."""
        return self.error if self.error_high is None else self.error_high


def _strip_comment(line: str) -> str:
    """The line without a ``#`` comment (``#`` inside double quotes is kept)."""
    quoted = False
    for k, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:k]
    return line


def _number(text: str, path: Path, lineno: int, column: str) -> float:
    value_text = text.strip()
    try:
        value = float(value_text)
    except ValueError:
        shown = value_text if value_text else "(empty)"
        raise InputError(f"observed spectrum {path}: line {lineno}, column {column}: {shown!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"observed spectrum {path}: line {lineno}, column {column}: {value_text!r} is not a finite number")
    return value


def read_observed(path, label: str | None = None) -> ObservedSpectrum:
    """Read and validate an observed spectrum (format in the module docstring).

    Parameters
    ----------
    path : path-like
        The CSV file.
    label : str, optional
        Legend label; default the file name without its suffix.

    Returns
    -------
    ObservedSpectrum
        Rows sorted by ``ell``.

    Raises
    ------
    InputError
        One line naming the file and the problem: missing or unreadable file, empty
        file (no header or no data rows), missing header row, missing columns, rows
        with the wrong number of fields, non-numeric or non-finite values, negative
        errors or noise, ``ell`` that is not an integer in
        ``[1, MAX_ELL]``, repeated ``ell``, a file larger than 16 MiB or not UTF-8.
    """
    path = Path(path)
    rows = _rows(path, _read_text(path))
    header_line, header = rows[0]
    index = _column_index(path, header_line, header)
    if len(rows) == 1:
        raise InputError(f"observed spectrum {path}: no data rows after the header")
    ell, cl, err, noise, lines = [], [], [], [], []
    seen: dict[int, int] = {}
    for lineno, fields in rows[1:]:
        if len(fields) != len(header):
            raise InputError(f"observed spectrum {path}: line {lineno}: {len(fields)} fields, the header has {len(header)}")
        ell_int, c_value, e_value, n_value = _parse_row(path, lineno, fields, index)
        if ell_int in seen:
            raise InputError(f"observed spectrum {path}: line {lineno}, column ell: ell = {ell_int} repeats "
                             f"line {seen[ell_int]}")
        seen[ell_int] = lineno
        ell.append(ell_int)
        cl.append(c_value)
        err.append(e_value)
        noise.append(n_value)
        lines.append(lineno)

    order = np.argsort(ell, kind="stable")
    errors = np.asarray(err, dtype=np.float64)[order]  # (n,) symmetric or (n, 2) low, high
    asymmetric = errors.ndim == 2
    return ObservedSpectrum(
        ell=np.asarray(ell, dtype=np.int64)[order],
        cl=np.asarray(cl, dtype=np.float64)[order],
        error=errors.mean(axis=1) if asymmetric else errors,
        noise=np.asarray(noise, dtype=np.float64)[order] if "noise" in index else None,
        label=label if label is not None else path.stem,
        path=path,
        error_low=errors[:, 0].copy() if asymmetric else None,
        error_high=errors[:, 1].copy() if asymmetric else None,
        lines=np.asarray(lines, dtype=np.int64)[order],
    )


def _read_text(path: Path) -> str:
    """The file's text: a regular UTF-8 file (a BOM is allowed) of at most 16 MiB."""
    if not path.exists():
        raise InputError(f"observed spectrum {path}: no such file")
    if not path.is_file():
        raise InputError(f"observed spectrum {path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"observed spectrum {path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"observed spectrum {path}: larger than {MAX_FILE_BYTES >> 20} MiB, not a spectrum")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"observed spectrum {path}: line {line}: not a UTF-8 text file "
                         f"(byte 0x{data[exc.start]:02x})") from None


def _rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank, non-comment line; at least one."""
    rows = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        fields = next(csv.reader(io.StringIO(line), skipinitialspace=True))
        rows.append((lineno, [f.strip() for f in fields]))
    if not rows:
        raise InputError(f"observed spectrum {path}: empty file (expected a header row "
                         f"{','.join(REQUIRED_COLUMNS)}[,noise] and data rows)")
    return rows


def _column_index(path: Path, header_line: int, header: list[str]) -> dict[str, int]:
    """Field index of each known column (lower-case names) from the header row."""
    names = [h.lower() for h in header]
    wanted = {c.lower(): c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    if all(_is_number(h) for h in header if h):
        raise InputError(f"observed spectrum {path}: line {header_line}: missing header row (expected column names "
                         f"{','.join(REQUIRED_COLUMNS)}[,noise], found numbers)")
    duplicated = sorted({n for n in names if n in wanted and names.count(n) > 1})
    if duplicated:
        raise InputError(f"observed spectrum {path}: line {header_line}: column {wanted[duplicated[0]]} appears more than once")
    asymmetric = [c for c in ASYMMETRIC_ERROR_COLUMNS if c in names]
    if "error" in names and asymmetric:
        raise InputError(f"observed spectrum {path}: line {header_line}: columns error and {', '.join(asymmetric)}: "
                         "give either error (symmetric) or error_low,error_high (asymmetric), not both")
    if len(asymmetric) == 1:
        other = [c for c in ASYMMETRIC_ERROR_COLUMNS if c not in names][0]
        raise InputError(f"observed spectrum {path}: column {asymmetric[0]} without column {other} "
                         "(asymmetric errors need both)")
    required = REQUIRED_COLUMNS if not asymmetric else ("ell", "C_ell") + ASYMMETRIC_ERROR_COLUMNS
    missing = [c for c in required if c.lower() not in names]
    if missing:
        raise InputError(f"observed spectrum {path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(header has {', '.join(header) if any(header) else 'no names'})")
    return {key: names.index(key) for key in wanted if key in names}


def _parse_row(path: Path, lineno: int, fields: list[str], index: dict[str, int]):
    """``(ell, C_ell, error or (error_low, error_high), noise or None)`` of one data row, each checked."""
    where = f"observed spectrum {path}: line {lineno}, column"
    ell_text = fields[index["ell"]]
    ell_value = _number(ell_text, path, lineno, "ell")
    if ell_value != int(ell_value) or ell_value < 1:
        raise InputError(f"{where} ell: ell = {ell_text} is not a positive integer")
    if ell_value > MAX_ELL:
        raise InputError(f"{where} ell: ell = {ell_text} is larger than {MAX_ELL}, the largest multipole accepted")
    c_value = _number(fields[index["c_ell"]], path, lineno, "C_ell")
    error_columns = ("error",) if "error" in index else ASYMMETRIC_ERROR_COLUMNS
    errors = []
    for column in error_columns:
        value = _number(fields[index[column]], path, lineno, column)
        if value < 0:
            raise InputError(f"{where} {column}: negative error {fields[index[column]]} (must be >= 0)")
        errors.append(value)
    e_value = errors[0] if len(errors) == 1 else tuple(errors)
    n_value = None
    if "noise" in index:
        n_value = _number(fields[index["noise"]], path, lineno, "noise")
        if n_value < 0:
            raise InputError(f"{where} noise: negative noise {fields[index['noise']]} (must be >= 0)")
    return int(ell_value), c_value, e_value, n_value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------
# Fits: the BGK shape and a broken power law
# ---------------------------------------------------------------------------------
#: Parameters of the broken power law (amplitude, break multipole, two slopes).
BROKEN_POWER_LAW_PARAMETERS = 4
#: Fewest multipoles a broken-power-law fit accepts (one degree of freedom).
BROKEN_POWER_LAW_MIN_POINTS = BROKEN_POWER_LAW_PARAMETERS + 1
#: Smallest multipole of the BGK fit to data: as in the simulation's fit
#: (:func:`crsky.analysis.estimators.fit_bgk`), the dipole is left out, because the
#: ansatz describes the small-scale part and the dipole holds the standard-diffusion
#: (coherent) part the ansatz does not describe.
BGK_LMIN = 2
#: Name of the stored fit results in the figures directory.
FIT_FILE = "observed_fit.json"
ERROR_TREATMENT = ("asymmetric errors: each residual is divided by the error on the side of the model "
                   "(error_high where the model lies above the data, error_low elsewhere)")


def noise_level(n_cr, f_sky) -> float:
    """The statistical noise level ``N = f_sky 4 pi / N_CR`` of an observed ``C_l``.

    Mertsch & Ahlers (2015), Fig. 1: an observatory that collected ``N_CR`` events on
    the effective sky fraction ``f_sky`` measures isotropic (Poisson) power ``N`` at
    every ``l``.

    Parameters
    ----------
    n_cr : float
        Number of cosmic-ray events (> 0).
    f_sky : float
        Effective fraction of the sky holding them, in ``(0, 1]``.

    Returns
    -------
    float
        ``N`` (dimensionless, the units of ``C_l`` of the relative intensity).
    """
    n_cr = _finite_option("--n-cr (number of events N_CR)", n_cr)
    f_sky = _finite_option("--f-sky (sky fraction f_sky)", f_sky)
    if not n_cr > 0:
        raise InputError(f"--n-cr (number of events N_CR) must be > 0, got {n_cr:g}")
    if not 0 < f_sky <= 1:
        raise InputError(f"--f-sky (sky fraction f_sky) must be in (0, 1], got {f_sky:g}")
    return f_sky * 4.0 * math.pi / n_cr


def _finite_option(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class BrokenPowerLawFit:
    """Result of :func:`fit_broken_power_law` (all dimensionless).

    The model is ``C_l = A (l / l_b)^s_low`` for ``l < l_b`` and ``A (l / l_b)^s_high``
    for ``l >= l_b`` (continuous at the break; the slopes are ``d ln C_l / d ln l``,
    negative for a falling spectrum). Errors are 1-sigma from the curvature of
    ``chi^2`` at the minimum (``(J^T J)^-1`` of the weighted residuals), which is a
    local, symmetric approximation; ``break_at_edge`` says the break leaves fewer than
    two of the fitted multipoles on one side: that slope and the break are then not
    determined by the data, the covariance is singular and every error is NaN (stored as null).
    """

    amplitude: float
    amplitude_err: float
    ell_break: float
    ell_break_err: float
    slope_low: float
    slope_low_err: float
    slope_high: float
    slope_high_err: float
    chi2: float
    dof: int
    chi2_dof: float
    ell_min: int
    ell_max: int
    n_points: int
    break_at_edge: bool = False

    def curve(self, ell) -> np.ndarray:
        """The fitted ``C_l`` at the multipoles ``ell``."""
        return broken_power_law(ell, self.amplitude, self.ell_break, self.slope_low, self.slope_high)

    def record(self) -> dict:
        """JSON-ready dict of the fields."""
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in self.__dict__.items()}


def broken_power_law(ell, amplitude: float, ell_break: float, slope_low: float, slope_high: float) -> np.ndarray:
    """``A (l / l_b)^s_low`` below the break ``l_b``, ``A (l / l_b)^s_high`` at and above it."""
    x = np.asarray(ell, dtype=float) / ell_break
    return amplitude * np.where(x < 1.0, x ** slope_low, x ** slope_high)


def _line_fit(x, y, w) -> tuple[float, float]:
    """Weighted straight line ``y = a + b x``; ``(a, b)`` (``b = -2`` with fewer than 2 points)."""
    if x.size < 2 or np.ptp(x) == 0:
        return (float(np.mean(y)) if y.size else 0.0), -2.0
    b, a = np.polyfit(x, y, 1, w=np.sqrt(w))
    return float(a), float(b)


def fit_broken_power_law(ell, cl, err_low, err_high=None) -> BrokenPowerLawFit:
    """Fit a broken power law (amplitude, break multipole, two slopes) to a spectrum.

    Least squares in linear ``C_l`` with the given errors (``err_low``/``err_high``:
    the error on the side of the model, :func:`crsky.bgk.sided_weights`; symmetric
    when ``err_high`` is None), so negative or noise-level points enter with their
    errors instead of being dropped. The break is continuous in ``[l_min, l_max]``;
    the fit starts from a break between every pair of neighbouring multipoles (slopes
    from straight-line fits of ``ln C_l`` on either side) and keeps the lowest
    ``chi^2`` (``scipy.optimize.least_squares``): ``chi^2`` is not convex in the break.

    Parameters
    ----------
    ell : array_like of int
        Multipoles (>= 1, distinct).
    cl : array_like
        ``C_l`` (dimensionless).
    err_low, err_high : array_like
        1-sigma errors below and above ``cl`` (> 0); ``err_high`` None: symmetric.

    Returns
    -------
    BrokenPowerLawFit

    Raises
    ------
    InputError
        Fewer than :data:`BROKEN_POWER_LAW_MIN_POINTS` multipoles, non-finite values,
        errors ``<= 0``, repeated multipoles.
    """
    from scipy import optimize

    from .bgk import sided_weights

    ell = np.asarray(ell, dtype=float)
    cl = np.asarray(cl, dtype=float)
    lo = np.asarray(err_low, dtype=float)
    hi = lo if err_high is None else np.asarray(err_high, dtype=float)
    if ell.size < BROKEN_POWER_LAW_MIN_POINTS:
        raise InputError(f"a broken power law ({BROKEN_POWER_LAW_PARAMETERS} parameters) needs at least "
                         f"{BROKEN_POWER_LAW_MIN_POINTS} multipoles, got {ell.size}")
    if not (ell.shape == cl.shape == lo.shape == hi.shape) or ell.ndim != 1:
        raise InputError("ell, C_l and errors must be 1-D arrays of one length")
    if not (np.all(np.isfinite(ell)) and np.all(np.isfinite(cl)) and np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise InputError("ell, C_l and errors must be finite")
    if np.any(lo <= 0) or np.any(hi <= 0):
        raise InputError("every error of a broken-power-law fit must be > 0")
    order = np.argsort(ell)
    ell, cl, lo, hi = ell[order], cl[order], lo[order], hi[order]
    if np.any(np.diff(ell) == 0) or ell[0] < 1:
        raise InputError("ell must be distinct multipoles >= 1")

    def residuals(theta):
        model = broken_power_law(ell, math.exp(theta[0]), math.exp(theta[1]), theta[2], theta[3])
        return (model - cl) * np.sqrt(sided_weights(model, cl, lo, hi))

    log_ell = np.log(ell)
    positive = cl > 0
    weights = (cl / np.maximum(lo, hi)) ** 2
    bounds = ([-np.inf, log_ell[0], -np.inf, -np.inf], [np.inf, log_ell[-1], np.inf, np.inf])
    best = None
    for i in range(1, ell.size - 2):  # at least two points on either side of the first guess
        log_break = 0.5 * (log_ell[i] + log_ell[i + 1])
        below, above = positive & (ell < math.exp(log_break)), positive & (ell > math.exp(log_break))
        a1, s1 = _line_fit(log_ell[below] - log_break, np.log(np.abs(cl[below])), weights[below])
        a2, s2 = _line_fit(log_ell[above] - log_break, np.log(np.abs(cl[above])), weights[above])
        start = np.array([0.5 * (a1 + a2), log_break, s1, s2])
        try:
            res = optimize.least_squares(residuals, start, bounds=bounds, method="trf", x_scale="jac",
                                         xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
        except ValueError:  # a start the bounds reject (cannot happen by construction); try the next
            continue
        if best is None or res.cost < best.cost:
            best = res
    theta = best.x
    jac = best.jac
    amplitude, ell_break = math.exp(theta[0]), math.exp(theta[1])
    # A slope needs two multipoles on its side of the break; with fewer, that slope and
    # the break are not determined and (J^T J) is singular: their errors are NaN.
    n_below, n_above = int(np.sum(ell < ell_break)), int(np.sum(ell >= ell_break))
    edge = bool(n_below < 2 or n_above < 2)
    errs = np.full(4, np.nan)
    if not edge:
        with contextlib.suppress(np.linalg.LinAlgError):
            cov = np.linalg.inv(jac.T @ jac)
            if np.all(np.diag(cov) > 0):
                errs = np.sqrt(np.diag(cov))
    chi2 = float(2.0 * best.cost)
    dof = int(ell.size - BROKEN_POWER_LAW_PARAMETERS)
    return BrokenPowerLawFit(
        amplitude=amplitude, amplitude_err=amplitude * float(errs[0]),
        ell_break=ell_break, ell_break_err=ell_break * float(errs[1]),
        slope_low=float(theta[2]), slope_low_err=float(errs[2]),
        slope_high=float(theta[3]), slope_high_err=float(errs[3]),
        chi2=chi2, dof=dof, chi2_dof=chi2 / dof, ell_min=int(ell[0]), ell_max=int(ell[-1]), n_points=int(ell.size),
        break_at_edge=edge,
    )


@dataclass(frozen=True)
class ObservedFit:
    """Fits of one observed spectrum (:func:`fit_observed`).

    Attributes
    ----------
    spectrum : ObservedSpectrum
    used : numpy.ndarray of bool
        The rows fitted (``l <= lmax`` and ``C_l`` above the noise level).
    noise : numpy.ndarray or None
        Noise level per row used to choose them (dimensionless), or None.
    noise_source : str
        Where the noise level came from, in words.
    bgk : crsky.bgk.BGKFit
        ``A C_l/C_1`` of eq. 4.7 with a free normalisation ``A`` (so ``A`` is the
        fitted ``C_1``), multipoles ``l >= BGK_LMIN``.
    broken : BrokenPowerLawFit
        The broken power law, every multipole used.
    """

    spectrum: ObservedSpectrum
    used: np.ndarray
    noise: np.ndarray | None
    noise_source: str
    bgk: object
    broken: BrokenPowerLawFit


def fit_observed(spectrum: ObservedSpectrum, *, noise=None, noise_source: str | None = None,
                 lmax: int | None = None, bgk_lmin: int = BGK_LMIN) -> ObservedFit:
    """Fit an observed spectrum with its errors: the BGK shape and a broken power law.

    Which multipoles: ``l <= lmax`` (default all) whose ``C_l`` lies above the noise
    level ``N`` (``noise``, else the file's ``noise`` column; without either, all).
    Published spectra are not noise-subtracted; below ``N`` a measured ``C_l`` is
    isotropic noise, not a signal to fit. The BGK fit (:func:`crsky.bgk.fit_p` with a
    free normalisation, ``l >= bgk_lmin``; the same fitter as the simulation's) gives
    the best ``p``, its ``delta chi^2 = 1`` interval and ``chi^2/dof``; the broken
    power law (:func:`fit_broken_power_law`) uses every selected multipole. Asymmetric
    errors: :data:`ERROR_TREATMENT`.

    Parameters
    ----------
    spectrum : ObservedSpectrum
    noise : float or array_like, optional
        Noise level ``N`` (e.g. :func:`noise_level`), one value or one per row.
    noise_source : str, optional
        How ``noise`` was obtained (stored with the result).
    lmax : int, optional
        Largest multipole fitted.
    bgk_lmin : int, optional
        Smallest multipole of the BGK fit (default 2).

    Returns
    -------
    ObservedFit

    Raises
    ------
    InputError
        A used row with an error ``<= 0`` (one line naming the file and line), fewer
        than 3 multipoles ``l >= bgk_lmin`` or fewer than
        :data:`BROKEN_POWER_LAW_MIN_POINTS` multipoles to fit.
    """
    from .bgk import fit_p

    where = f"observed spectrum {spectrum.path}"
    if noise is None and spectrum.noise is not None:
        noise, noise_source = spectrum.noise, "the file's noise column"
    if noise is not None:
        noise = np.broadcast_to(np.asarray(noise, dtype=float), spectrum.cl.shape).copy()
        noise_source = noise_source or "given"
    used = np.ones(spectrum.ell.size, dtype=bool)
    if lmax is not None:
        used &= spectrum.ell <= int(lmax)
    if noise is not None:
        used &= spectrum.cl > noise
    lo, hi = spectrum.sigma_low, spectrum.sigma_high
    bad = used & ((lo <= 0) | (hi <= 0))
    if np.any(bad):
        k = int(np.nonzero(bad)[0][0])
        line = f"line {int(spectrum.lines[k])}: " if spectrum.lines is not None else ""
        raise InputError(f"{where}: {line}error 0 at ell = {int(spectrum.ell[k])}; a fit needs errors > 0 "
                         "at every multipole it uses (draw without fitting: --no-fit)")
    above = "" if noise is None else " above the noise level"
    n_used = int(used.sum())
    n_bgk = int((used & (spectrum.ell >= bgk_lmin)).sum())
    if n_bgk < 3:
        raise InputError(f"{where}: the BGK fit (p and a normalisation) needs at least 3 multipoles "
                         f"l >= {bgk_lmin}{above}, got {n_bgk}")
    if n_used < BROKEN_POWER_LAW_MIN_POINTS:
        raise InputError(f"{where}: the broken power law ({BROKEN_POWER_LAW_PARAMETERS} parameters) needs at least "
                         f"{BROKEN_POWER_LAW_MIN_POINTS} multipoles{above}, got {n_used}")
    ell, cl = spectrum.ell[used], spectrum.cl[used]
    high = hi[used] if spectrum.asymmetric else None
    bgk = fit_p(ell, cl, lo[used], ratio_err_high=high, lmin=bgk_lmin, free_norm=True)
    broken = fit_broken_power_law(ell, cl, lo[used], high)
    return ObservedFit(spectrum, used, noise, noise_source or "none", bgk, broken)


def fit_simulated(ds, gradient: str, time_index: int, nsigma: float | None = None) -> tuple[BrokenPowerLawFit | None, str]:
    """Broken power law fitted to the simulation's ``C_hat_l`` of one gradient and snapshot.

    The errors are the analysis' ``cl_err`` (standard error of ``<C_l>`` over the
    realisations); the multipoles are ``l = 1`` up to the last one before ``C_hat_l``
    drops below ``nsigma`` times the noise error (:func:`crsky.analysis.estimators.fit_range`,
    the range of the simulation's BGK fit).

    Returns
    -------
    fit : BrokenPowerLawFit or None
        None when there are too few multipoles or errors (a fact about the run, reported,
        not an input error).
    status : str
        What was fitted, or why not.
    """
    from .analysis import estimators as est

    nsigma = est.FIT_NSIGMA if nsigma is None else nsigma
    d = ds.sel(gradient=gradient)
    cl_hat = np.asarray(d["cl_hat"].values, dtype=float)[time_index]
    err = np.asarray(d["cl_err"].values, dtype=float)[time_index]
    noise_err = np.asarray(d["noise_err"].values, dtype=float)[time_index]
    lmax_fit = est.fit_range(cl_hat, noise_err, nsigma)
    ell = np.arange(1, lmax_fit + 1)
    if ell.size < BROKEN_POWER_LAW_MIN_POINTS:
        return None, (f"no fit: {ell.size} multipoles above {nsigma:g} sigma of the noise, "
                      f"{BROKEN_POWER_LAW_MIN_POINTS} needed")
    if not np.all(np.isfinite(err[ell])) or np.any(err[ell] <= 0):
        return None, "no fit: no errors (a single realisation has no standard error)"
    fit = fit_broken_power_law(ell, cl_hat[ell], err[ell])
    return fit, f"fitted l = 1..{lmax_fit}, chi2/dof = {fit.chi2_dof:.3g}"


def _bgk_record(fit) -> dict:
    keys = ("p", "p_err", "p_lo", "p_hi", "norm", "chi2", "dof", "chi2_dof", "ell_min", "ell_max", "n_points",
            "at_boundary", "interval_clipped", "model")
    return {k: getattr(fit, k) for k in keys}


def comparison_record(ds, fits: list[ObservedFit], time_index: int | None = None) -> dict:
    """The JSON record of :func:`fit_observed` results and the simulation's broken power laws.

    Parameters
    ----------
    ds : xarray.Dataset
        The run's analysis.
    fits : list of ObservedFit
    time_index : int, optional
        Snapshot of the simulated spectrum; default the last.

    Returns
    -------
    dict
        ``{"t_omega", "time_index", "observed": [...], "simulation": [...],
        "error_treatment", "bgk_model"}``; every number a plain float or int.
    """
    t = np.asarray(ds["t_omega"].values, dtype=float)
    k = t.size - 1 if time_index is None else int(time_index)
    observed = []
    for f in fits:
        s = f.spectrum
        observed.append({
            "label": s.label, "file": str(s.path), "asymmetric_errors": bool(s.asymmetric),
            "noise_level": None if f.noise is None else [float(v) for v in f.noise[f.used]],
            "noise_source": f.noise_source, "ell_used": [int(v) for v in s.ell[f.used]],
            "bgk": _bgk_record(f.bgk), "broken_power_law": f.broken.record(),
        })
    simulation = []
    for name in [str(g) for g in ds["gradient"].values]:
        fit, status = fit_simulated(ds, name, k)
        simulation.append({"gradient": name, "status": status,
                           "broken_power_law": None if fit is None else fit.record()})
    return {"t_omega": float(t[k]), "time_index": k, "observed": observed, "simulation": simulation,
            "error_treatment": ERROR_TREATMENT,
            "bgk_model": "A C_l/C_1 of Mertsch & Ahlers (2015), eq. 4.7, free normalisation A (= fitted C_1)"}


def _bpl_text(b: dict) -> str:
    def g(v, fmt=".2g"):
        return "n/a" if v is None else format(v, fmt)

    edge = " (fewer than 2 multipoles on one side of the break: not determined)" if b["break_at_edge"] else ""
    return (f"l_break = {g(b['ell_break'], '.3g')} +- {g(b['ell_break_err'])}{edge}, slopes "
            f"{g(b['slope_low'], '.3g')} +- {g(b['slope_low_err'])} / {g(b['slope_high'], '.3g')} +- "
            f"{g(b['slope_high_err'])}, A = {g(b['amplitude'], '.3g')}, chi2/dof = {g(b['chi2_dof'], '.3g')} "
            f"({b['dof']} dof, l = {b['ell_min']}..{b['ell_max']})")


def format_comparison(record: dict) -> str:
    """The fit results of :func:`comparison_record` as one block of text."""
    lines = [f"fits to the observed spectra (simulation at t Omega = {record['t_omega']:.4g}; slopes are "
             "d ln C_l / d ln l)"]
    for o in record["observed"]:
        b = o["bgk"]
        noise = "no noise level" if o["noise_level"] is None else f"noise level from {o['noise_source']}"
        lines.append(f"  {o['label']}: {len(o['ell_used'])} multipoles fitted ({noise}"
                     f"{', asymmetric errors' if o['asymmetric_errors'] else ''})")
        bound = " (p at the boundary of (0, 1))" if b["at_boundary"] else ""
        lines.append(f"    BGK eq. 4.7:        p = {b['p']:.3f} [{b['p_lo']:.3f}, {b['p_hi']:.3f}]{bound}, "
                     f"C_1 = {b['norm']:.3g}, chi2/dof = {b['chi2_dof']:.3g} ({b['dof']} dof, "
                     f"l = {b['ell_min']}..{b['ell_max']})")
        lines.append(f"    broken power law:   {_bpl_text(o['broken_power_law'])}")
    for s in record["simulation"]:
        text = _bpl_text(s["broken_power_law"]) if s["broken_power_law"] else s["status"]
        lines.append(f"  simulation {s['gradient']}, broken power law: {text}")
    return "\n".join(lines)
