"""The run directory: atomic per-realisation files, a manifest, resume.

Layout::

    RUN_DIR/
      config.toml              the resolved configuration (code units)
      manifest.json            provenance and the record of completed realisations
      realisations/r000000.nc  one netCDF4 (HDF5) file per realisation, xarray-readable

A realisation file is written under a temporary name in the same directory and
renamed into place (``os.replace``) only once complete and flushed to disk, so a file
under its final name is never half-written. The driver alone writes the manifest
(again through a temporary file and a rename). On resume every recorded realisation
is checked against its size and SHA-256; one that fails (truncated, corrupted,
missing) is recomputed. A complete file that the manifest does not list yet (the
driver was killed between the worker's rename and its own record) is adopted after
its contents are checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from . import __version__
from .config import ConfigError, RunConfig, config_from_toml_text
from .errors import InputError

__all__ = ["RunDirError", "RunStore", "realisation_dataset", "atomic_write_bytes"]

MANIFEST = "manifest.json"
CONFIG = "config.toml"
REALISATIONS = "realisations"
_FORMAT = 1


class RunDirError(InputError):
    """The run directory cannot be used as asked (other config, not a run, unwritable)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _default_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def realisation_dataset(config: RunConfig, index: int, t_omega, x, p, attrs: dict | None = None) -> xr.Dataset:
    """The xarray Dataset stored for one realisation.

    Dimensions ``time`` (snapshots), ``pixel`` (HEALPix RING index of the direction
    ``p(0)``) and ``component`` (x, y, z).
    """
    dtype = np.dtype(config.output.precision)
    ds = xr.Dataset(
        {
            "x": (("time", "pixel", "component"), np.asarray(x, dtype=dtype),
                  {"long_name": "position x(-T)", "units": "L_c"}),
            "p": (("time", "pixel", "component"), np.asarray(p, dtype=dtype),
                  {"long_name": "momentum direction p(-T)", "units": "1"}),
        },
        coords={
            "t_omega": ("time", np.asarray(t_omega, dtype=np.float64), {"long_name": "Omega T", "units": "1"}),
            "pixel": np.arange(np.shape(x)[1]),
            "component": ["x", "y", "z"],
        },
        attrs={
            "realisation": int(index),
            "seed": int(config.ensemble.seed),
            "nside": int(config.particles.nside),
            "config": config.to_json(),
            "config_sha256": config.digest(),
            "crsky_version": __version__,
            **(attrs or {}),
        },
    )
    return ds


class RunStore:
    """A run directory on disk.

    Use :meth:`open` to create or resume one; the constructor does no I/O.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- creation and resume -------------------------------------------------
    @classmethod
    def open(cls, path, config: RunConfig, force: bool = False) -> "RunStore":
        """Create ``path`` for ``config``, or resume the run it holds.

        Raises
        ------
        RunDirError
            If ``path`` holds a run of another configuration (unless ``force``, which
            deletes its results and starts over), is not a crsky run directory, or
            cannot be written.
        """
        store = cls(path)
        p = store.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"output {p} exists and is not a directory")
        if p.exists() and force:
            for name in (MANIFEST, CONFIG):
                with contextlib.suppress(FileNotFoundError):
                    (p / name).unlink()
            shutil.rmtree(p / REALISATIONS, ignore_errors=True)
        if p.exists() and (p / CONFIG).exists():
            stored = store.config()
            if stored.digest() != config.digest():
                diff = _config_difference(stored, config)
                raise RunDirError(
                    f"run directory {p} holds a run of a different configuration ({diff}); "
                    "use another --out, or --force to delete it and start over"
                )
        elif p.exists() and any(p.iterdir()):
            raise RunDirError(
                f"output {p} exists, is not empty and is not a crsky run directory "
                "(no config.toml); choose another --out"
            )
        try:
            (p / REALISATIONS).mkdir(parents=True, exist_ok=True)
            if not (p / CONFIG).exists():
                atomic_write_bytes(p / CONFIG, config.to_toml().encode())
            if not (p / MANIFEST).exists():
                store._write_manifest(
                    {"format": _FORMAT, "crsky_version": __version__, "config_sha256": config.digest(),
                     "created": _now(), "realisations": {}, "sessions": []}
                )
        except OSError as exc:
            raise RunDirError(f"cannot write run directory {p}: {exc.strerror or exc}") from None
        store._clean_temporaries()
        store._reconcile(config)
        return store

    @classmethod
    def existing(cls, path) -> "RunStore":
        """Open a run directory for reading; it must exist and hold a run."""
        store = cls(path)
        if not store.path.is_dir():
            raise RunDirError(f"run directory {store.path} does not exist")
        if not (store.path / CONFIG).exists() or not (store.path / MANIFEST).exists():
            raise RunDirError(f"{store.path} is not a crsky run directory (no config.toml / manifest.json)")
        return store

    # -- metadata ------------------------------------------------------------
    def config(self) -> RunConfig:
        """The resolved configuration stored in the run directory."""
        try:
            return config_from_toml_text((self.path / CONFIG).read_text())
        except (ConfigError, ValueError) as exc:
            raise RunDirError(f"{self.path / CONFIG} is not a valid crsky configuration: {exc}") from None

    def manifest(self) -> dict:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"cannot read {self.path / MANIFEST}: {exc}") from None

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def realisation_path(self, index: int) -> Path:
        return self.path / REALISATIONS / f"r{index:06d}.nc"

    def completed(self) -> list[int]:
        """Indices recorded as complete in the manifest, sorted."""
        return sorted(int(k) for k in self.manifest()["realisations"])

    def pending(self, n_realisations: int) -> list[int]:
        done = set(self.completed())
        return [j for j in range(n_realisations) if j not in done]

    # -- writing -------------------------------------------------------------
    def write_realisation(self, ds: xr.Dataset, index: int) -> dict:
        """Write one realisation atomically; return its record for the manifest.

        Safe to call from worker processes: it touches only its own file. The file
        appears under its final name only complete (``os.link`` of a flushed
        temporary file, which never replaces an existing file). If a complete file is
        already there (an earlier attempt of the same task, e.g. on a worker that died
        before reporting) its record is returned and nothing is overwritten.
        """
        final = self.realisation_path(index)
        existing = self.complete_record(index, ds.attrs.get("config_sha256"))
        if existing is not None:
            return existing
        if final.exists():
            raise RunDirError(f"{final} already exists and is not a complete realisation; refusing to overwrite it")
        fd, tmp = tempfile.mkstemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent)
        os.close(fd)
        try:
            ds.to_netcdf(tmp, engine="h5netcdf")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, _default_mode())
            try:
                os.link(tmp, final)  # atomic, and fails rather than overwrite
            except FileExistsError:
                existing = self.complete_record(index, ds.attrs.get("config_sha256"))
                if existing is None:
                    raise RunDirError(f"{final} appeared meanwhile and is not complete; refusing to overwrite it") from None
                return existing
            except OSError:  # file systems without hard links
                os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return self._file_record(final)

    def complete_record(self, index: int, config_sha256: str | None) -> dict | None:
        """The record of realisation ``index`` if its file exists, reads back whole and
        belongs to the configuration ``config_sha256``; otherwise ``None``."""
        path = self.realisation_path(index)
        if not path.exists() or not self._looks_complete(path, config_sha256, index):
            return None
        return self._file_record(path)

    def _file_record(self, path: Path) -> dict:
        return {"file": str(path.relative_to(self.path)), "bytes": path.stat().st_size,
                "sha256": _sha256(path), "written": _now(), "host": platform.node()}

    def record(self, index: int, record: dict) -> None:
        """Record realisation ``index`` as complete (driver only)."""
        manifest = self.manifest()
        manifest["realisations"][str(index)] = record
        self._write_manifest(manifest)

    def record_session(self, session: dict) -> None:
        manifest = self.manifest()
        manifest["sessions"].append(session)
        self._write_manifest(manifest)

    # -- reading -------------------------------------------------------------
    def read_realisation(self, index: int) -> xr.Dataset:
        """Load one realisation into memory (an :class:`xarray.Dataset`)."""
        with xr.open_dataset(self.realisation_path(index), engine="h5netcdf") as ds:
            return ds.load()

    def iter_realisations(self):
        """Yield the completed realisations one at a time (streaming, low memory)."""
        for index in self.completed():
            yield index, self.read_realisation(index)

    # -- integrity -----------------------------------------------------------
    def verify(self, index: int, record: dict) -> bool:
        """True if the file of ``index`` exists with the recorded size and SHA-256."""
        path = self.realisation_path(index)
        try:
            return path.stat().st_size == record["bytes"] and _sha256(path) == record["sha256"]
        except (OSError, KeyError):
            return False

    def _clean_temporaries(self) -> None:
        for tmp in (self.path / REALISATIONS).glob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _reconcile(self, config: RunConfig) -> None:
        """Drop records whose file fails its check; adopt complete unrecorded files."""
        manifest = self.manifest()
        changed = False
        for key, record in list(manifest["realisations"].items()):
            if not self.verify(int(key), record):
                del manifest["realisations"][key]
                self._quarantine(int(key))
                changed = True
        for path in sorted((self.path / REALISATIONS).glob("r*.nc")):
            index = int(path.stem[1:])
            if str(index) in manifest["realisations"]:
                continue
            if self._looks_complete(path, config.digest(), index):
                manifest["realisations"][str(index)] = {**self._file_record(path), "adopted": True}
            else:
                self._quarantine(index)
            changed = True
        if changed:
            self._write_manifest(manifest)

    def _quarantine(self, index: int) -> None:
        """Move a bad realisation file aside (kept for inspection, never read)."""
        path = self.realisation_path(index)
        if path.exists():
            os.replace(path, path.with_name(path.name + f".bad-{int(time.time())}"))

    @staticmethod
    def _looks_complete(path: Path, config_sha256: str | None, index: int) -> bool:
        try:
            with xr.open_dataset(path, engine="h5netcdf") as ds:
                ok = (
                    ds.attrs.get("config_sha256") == config_sha256
                    and ds.attrs.get("realisation") == index
                    and ds["x"].shape == (ds.sizes["time"], 12 * ds.attrs["nside"] ** 2, 3)
                )
                ds["x"].values, ds["p"].values  # noqa: B018 - reading every chunk checks it
            return bool(ok)
        except Exception:
            return False


def _config_difference(a: RunConfig, b: RunConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    diffs = []
    for section in da:
        for key in sorted(set(da[section]) | set(db.get(section, {}))):
            va, vb = da[section].get(key), db.get(section, {}).get(key)
            if va != vb:
                diffs.append(f"[{section}] {key}: stored {va!r}, requested {vb!r}")
    return "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "") if diffs else "different digest"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
