"""Reader of observed angular power spectra (``crsky plot --observed FILE.csv``).

File format (CSV, one multipole per row)::

    # IceCube, 20 TeV, Aartsen et al. (2013)      <- comment lines start with '#'
    ell,C_ell,error,noise                          <- header row, required
    1,2.1e-07,0.4e-07,2.5e-11
    2,3.0e-08,0.3e-08,2.5e-11                      # trailing comments are allowed
    ...

- ``ell``: multipole, an integer from 1 to 10000 (written ``3`` or ``3.0``), each at
  most once.
- ``C_ell``: the measured power of the relative intensity ``dI``, dimensionless (any
  sign: a noise-subtracted estimate can be negative; such rows cannot appear on a
  logarithmic axis and are left out of the plot, not out of the data).
- ``error``: its 1-sigma uncertainty, ``>= 0`` (where one is 0 the comparison
  weights all multipoles equally).
- ``noise`` (optional column): the statistical noise level ``N`` of that multipole
  (``>= 0``), e.g. ``f_sky 4 pi / N_CR`` as in Fig. 1 of Mertsch & Ahlers (2015).

Column names are matched case-insensitively after stripping blanks; other columns are
ignored. The file is checked whole before anything uses it: every problem raises
:class:`~crsky.errors.InputError` (a :class:`ValueError`) with a one-line message
naming the file, the line and the column (the command line turns it into exit code 2).
A file larger than 16 MiB is refused unread.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["ObservedSpectrum", "read_observed", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS", "MAX_ELL"]

#: Columns every file must have (header names, case-insensitive).
REQUIRED_COLUMNS = ("ell", "C_ell", "error")
#: Columns a file may have.
OPTIONAL_COLUMNS = ("noise",)
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
        1-sigma uncertainty of ``cl`` (``>= 0``).
    noise : numpy.ndarray of float64 or None
        Noise level per multipole when the file has a ``noise`` column.
    label : str
        Name for legends: the file name without its suffix.
    path : pathlib.Path
        The file read.
    """

    ell: np.ndarray
    cl: np.ndarray
    error: np.ndarray
    noise: np.ndarray | None
    label: str
    path: Path


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
    ell, cl, err, noise = [], [], [], []
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

    order = np.argsort(ell, kind="stable")
    return ObservedSpectrum(
        ell=np.asarray(ell, dtype=np.int64)[order],
        cl=np.asarray(cl, dtype=np.float64)[order],
        error=np.asarray(err, dtype=np.float64)[order],
        noise=np.asarray(noise, dtype=np.float64)[order] if "noise" in index else None,
        label=label if label is not None else path.stem,
        path=path,
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
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in names]
    if missing:
        raise InputError(f"observed spectrum {path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(header has {', '.join(header) if any(header) else 'no names'})")
    return {key: names.index(key) for key in wanted if key in names}


def _parse_row(path: Path, lineno: int, fields: list[str], index: dict[str, int]):
    """``(ell, C_ell, error, noise or None)`` of one data row, each checked."""
    where = f"observed spectrum {path}: line {lineno}, column"
    ell_text = fields[index["ell"]]
    ell_value = _number(ell_text, path, lineno, "ell")
    if ell_value != int(ell_value) or ell_value < 1:
        raise InputError(f"{where} ell: ell = {ell_text} is not a positive integer")
    if ell_value > MAX_ELL:
        raise InputError(f"{where} ell: ell = {ell_text} is larger than {MAX_ELL}, the largest multipole accepted")
    c_value = _number(fields[index["c_ell"]], path, lineno, "C_ell")
    e_value = _number(fields[index["error"]], path, lineno, "error")
    if e_value < 0:
        raise InputError(f"{where} error: negative error {fields[index['error']]} (must be >= 0)")
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
