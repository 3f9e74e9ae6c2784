"""The run directory: atomic per-realisation files, a manifest, a lock, verified reads.

Layout::

    RUN_DIR/
      config.toml              the resolved configuration (code units)
      manifest.json            provenance and the record of completed realisations
      crsky.lock               the run's lock file (who holds or last held it)
      realisations/r000000.nc  one netCDF4 (HDF5) file per realisation, xarray-readable
      extending/r000000.nc     while ``crsky run --extend`` runs: the extended realisations
      analysis.nc, summary.json, figures/   written by ``crsky analyze`` / ``crsky plot``

Every file is first serialised in memory, then written under a temporary name in its
directory, flushed, given the umask's permissions and renamed into place
(:func:`atomic_write_bytes`), so a file under its final name is never half-written and
a failed write (full disk, read-only file system, file size limit) is a Python
:class:`OSError`, reported as :class:`StorageError`, never a crash inside HDF5.

The driver alone writes the manifest. A run directory is guarded by an OS file lock
(:meth:`RunStore.lock`): one writer (``crsky run``) or any number of readers
(``crsky analyze``, ``crsky plot``); the OS releases it when its process ends, so a
killed run never leaves a stale lock. Temporary files are removed on start-up only
while the exclusive lock proves that no other crsky process can be writing them.

Every read of a realisation (:meth:`RunStore.read_realisation`,
:meth:`RunStore.iter_realisations`) checks the file against its manifest record
(a regular file, size, SHA-256 of exactly the bytes that are parsed) and its
attributes against the run (configuration digest, realisation index); a damaged,
foreign, symlinked or missing file is refused with the fix. On resume such a file is
moved aside (``*.bad-*``) and recomputed. A complete file that the manifest does not
list yet (the driver was killed between the worker's rename and its own record) is
adopted only if its attributes name this configuration and index and the SHA-256 of
its arrays matches the digest stored inside it (``data_sha256``).

Extending a finished run (``crsky run --extend``) writes each extended realisation
into ``extending/`` and records it under the manifest's ``extension`` key while the
run itself (config.toml, manifest records, realisation files) stays as it was; once
all are there, the extension is committed (:meth:`RunStore.commit_extension`): the
new files replace the old ones, config.toml and the manifest switch to the extended
configuration. A commit that was killed is finished by the next ``--extend`` and
refused by every reader meanwhile.

See docs/rundir.md for what a run directory guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import xarray as xr

from . import __version__
from .config import ConfigError, RunConfig, config_from_toml_text
from .errors import InputError, StorageError

__all__ = [
    "RunDirError", "RunLockedError", "RealisationError", "StorageError", "RunStore",
    "realisation_dataset", "atomic_write_bytes", "atomic_write_netcdf", "new_analysis_id",
    "ANALYSIS_ID",
]

MANIFEST = "manifest.json"
CONFIG = "config.toml"
REALISATIONS = "realisations"
#: Directory of the realisations of an extension in progress (docs/rundir.md).
EXTENDING = "extending"
LOCK = "crsky.lock"
ANALYSIS = "analysis.nc"
SUMMARY = "summary.json"
FIGURES = "figures"
#: Attribute of ``analysis.nc`` and key of ``summary.json`` that ties the pair together.
ANALYSIS_ID = "analysis_id"
_FORMAT = 1

# Names of what crsky writes, so that --force and start-up clean-up touch nothing else.
_TOP_FILES = (CONFIG, MANIFEST, ANALYSIS, SUMMARY)
_TOP_TEMP = re.compile(r"^(config\.toml|manifest\.json|analysis\.nc|summary\.json)\.[^/]+\.tmp$")
_REALISATION = re.compile(r"^r(\d{6})\.nc$")
_REALISATION_OWN = re.compile(r"^r\d{6}\.nc(\.bad-[0-9A-Za-z-]+|\.[^/]+\.tmp)?$")
_FIGURE = re.compile(
    r"^(fig2_spectrum_evolution|fig3_spectrum_shape|skymaps_\w+|diffusion_coefficients|observed_comparison)"
    r"\.(png|pdf|svg|eps|ps)$")
_FIGURE_TEMP = re.compile(r"^\.[\w.-]+\.\d+\.[0-9a-f]{12}\.tmp$")
# The marker matplotlib writes from crsky's figure metadata (plots.save_figure).
_FIGURE_MARKERS = {"png": b"Software\x00crsky", "pdf": b"/Creator (crsky)"}


class RunDirError(InputError):
    """The run directory cannot be used as asked (other config, not a run, locked, damaged)."""


class RunLockedError(RunDirError):
    """Another process holds the run directory's lock."""


class RealisationError(RunDirError):
    """A realisation file is missing, damaged, foreign or not a regular file."""


def _default_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _mib(n: int) -> str:
    """A size for people: KiB below 1 MiB, else MiB."""
    return f"{n / 2**10:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def storage_error(exc: OSError, path, needed: int | None = None) -> StorageError:
    """One-line :class:`StorageError` for a failed write of ``path`` (``needed`` bytes)."""
    path = Path(path)
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        need = f"needs {_mib(needed)}" if needed is not None else "needs more space"
        have = f", {_mib(free)} free" if free is not None else ""
        return StorageError(f"cannot write {path}: {reason} ({need}{have}); free some space and run again")
    if exc.errno == errno.EFBIG:
        size = f" of {_mib(needed)}" if needed is not None else ""
        return StorageError(f"cannot write {path}: {reason} (a file{size} exceeds the file size limit, "
                            "see `ulimit -f`)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {path}: {reason} (write the output elsewhere)")
    return StorageError(f"cannot write {path}: {reason}")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path, data, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, with the umask's permissions.

    The bytes go to a temporary file ``<name>.<random>.tmp`` in the same directory,
    which is flushed to disk, given the permissions a new file gets under the umask
    and renamed into place; on any failure the temporary file is removed.

    Parameters
    ----------
    path : path
        Final file name.
    data : bytes-like
        The complete contents.
    overwrite : bool
        ``False``: never replace an existing ``path`` (a hard link, which fails if the
        name exists); raises :class:`FileExistsError` then.

    Raises
    ------
    StorageError
        Any :class:`OSError` of the write (no space, read-only, permission, file too
        large), naming ``path`` and, for a full disk, the space needed.
    FileExistsError
        ``overwrite=False`` and ``path`` exists.
    """
    path = Path(path)
    data = memoryview(data).cast("B")
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path, data.nbytes) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            written = 0
            while written < data.nbytes:  # os.write: a failure is an OSError, never a crash
                written += os.write(fh.fileno(), data[written:])
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_into_place(tmp, path)
        _fsync_dir(path.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        raise storage_error(exc, path, data.nbytes) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_into_place(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists (then FileExistsError)."""
    try:
        os.link(tmp, path)  # atomic, and fails rather than overwrite
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)


def netcdf_bytes(ds: xr.Dataset) -> memoryview:
    """``ds`` serialised as netCDF4 (HDF5, engine h5netcdf) in memory."""
    import dask

    # In a dask.distributed worker xarray would guard the write with a cluster-wide
    # lock named after the target, which an in-memory target does not have; the
    # arrays are in memory, so the synchronous scheduler is exact and enough.
    with dask.config.set(scheduler="synchronous"):
        return ds.to_netcdf(engine="h5netcdf")


def atomic_write_netcdf(ds: xr.Dataset, path, *, overwrite: bool = True) -> dict:
    """Write ``ds`` as a netCDF4 file atomically; the one netCDF writer of crsky.

    The file is serialised in memory first and then written with
    :func:`atomic_write_bytes`: HDF5 never writes to the disk itself, so a full disk
    or a file size limit is a one-line :class:`StorageError`, not a crash inside
    HDF5, and the file gets the umask's permissions.

    Returns
    -------
    dict
        ``{"bytes": size, "sha256": hex digest}`` of the file written.
    """
    data = netcdf_bytes(ds)
    atomic_write_bytes(path, data, overwrite=overwrite)
    return {"bytes": data.nbytes, "sha256": hashlib.sha256(data).hexdigest()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _data_sha256(ds: xr.Dataset) -> str:
    """SHA-256 of a realisation's arrays (t_omega, x, p as little-endian bytes)."""
    digest = hashlib.sha256()
    for name in ("t_omega", "x", "p"):
        a = np.asarray(ds[name].values)
        digest.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def new_analysis_id() -> str:
    """A fresh identifier for one analysis (``analysis.nc`` attribute and ``summary.json`` key)."""
    return uuid.uuid4().hex


def realisation_dataset(config: RunConfig, index: int, t_omega, x, p, attrs: dict | None = None) -> xr.Dataset:
    """The xarray Dataset stored for one realisation.

    Dimensions ``time`` (snapshots), ``pixel`` (HEALPix RING index of the direction
    ``p(0)``) and ``component`` (x, y, z). The ``pixel`` coordinate and the file's
    attributes say so (``healpix_ordering``, ``healpix_nside``, ``pixel_direction``,
    ``pixel_convention``: :func:`crsky.analysis.map_attributes`).
    """
    from .analysis.sky import map_attributes  # analysis imports the store: import on use

    pixels = map_attributes(config.particles.nside)
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
            "pixel": ("pixel", np.arange(np.shape(x)[1]),
                      {"long_name": "HEALPix pixel (RING) of the momentum direction p at T = 0", **pixels}),
            "component": ["x", "y", "z"],
        },
        attrs={
            "realisation": int(index),
            "seed": int(config.ensemble.seed),
            "nside": int(config.particles.nside),
            "config": config.to_json(),
            "config_sha256": config.digest(),
            "crsky_version": __version__,
            **pixels,
            **(attrs or {}),
        },
    )
    return ds


# ---------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------
class _Held:
    """One OS lock held by this process (re-entrant across RunStore objects)."""

    def __init__(self, fd: int | None, exclusive: bool):
        self.fd, self.exclusive, self.count = fd, exclusive, 1


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


def _holder_record(exclusive: bool) -> dict:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("cli.py", "__main__.py"):  # python -m crsky.cli
        program = "crsky"
    return {"pid": os.getpid(), "host": platform.node(), "mode": "write" if exclusive else "read",
            "since": _now(), "command": " ".join([program, *sys.argv[1:]])[:300]}


def _read_holders(lock_path: Path) -> list[dict]:
    try:
        lines = lock_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("pid"), int):
                holders.append(record)
    return holders


def _alive(record: dict) -> bool:
    """Whether the process of a holder record may still run (unknowable on another host)."""
    if record.get("host") != platform.node():
        return True
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(record: dict) -> str:
    return (f"pid {record['pid']} on host {record.get('host', '?')} since {record.get('since', '?')} "
            f"(`{record.get('command', '?')}`)")


class RunStore:
    """A run directory on disk.

    Use :meth:`open` to create or resume one (the writer) and :meth:`existing` to read
    one; the constructor does no I/O. Hold :meth:`lock` around a whole command.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        #: Files --force found in the directory, did not write and therefore kept.
        self.foreign_files: list[str] = []

    # -- the lock ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, exclusive: bool = True, create_dir: bool = False, clean: bool = False):
        """Hold the run directory's OS lock (``fcntl.flock`` on ``crsky.lock``).

        ``exclusive=True`` (``crsky run``): no other crsky process may use the
        directory. ``exclusive=False`` (``crsky analyze``, ``crsky plot``): readers share the lock,
        a writer excludes them. The lock file records who holds it (pid, host,
        command), so that a refusal names the holder. The OS releases the lock when
        the process ends, however it ends. Re-entrant within a process.

        On a directory where the lock file cannot be created (a read-only, archived
        run), a shared lock uses an existing lock file read-only, or reads without a
        lock: no crsky writer can be active where no lock file could be made.

        Parameters
        ----------
        exclusive : bool
            Writer (``True``) or reader (``False``).
        clean : bool
            Remove crsky's abandoned temporary files once the lock proves them
            abandoned: the exclusive lock, or (reader) a momentary exclusive lock
            before sharing; only for a process that holds the lock for a whole
            command, since library callers may write without it.
        create_dir : bool
            Create the directory if missing (writer). A lock file created here is
            removed again on exit unless the directory then holds a crsky run, and a
            directory created here if it is then empty, so a refused start leaves no
            trace.

        Raises
        ------
        RunLockedError
            Another process holds the lock (the message names it).
        RunDirError
            The directory is missing, not a crsky run and not empty, or cannot hold a
            lock for writing (read-only).
        """
        key = os.path.realpath(self.path)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                if exclusive and not held.exclusive:
                    raise RunDirError(f"run directory {self.path} is open for reading in this process; "
                                      "cannot write it at the same time")
                held.count += 1
        if held is not None:
            try:
                yield self
            finally:
                with _HELD_GUARD:
                    held.count -= 1
            return
        created_dir, created_lock, fd = self._acquire(exclusive, create_dir, clean)
        held = _Held(fd, exclusive)
        with _HELD_GUARD:
            _HELD[key] = held
        try:
            yield self
        finally:
            with _HELD_GUARD:
                del _HELD[key]
            self._release(fd, created_dir, created_lock)

    def holds_lock(self, exclusive: bool = True) -> bool:
        """Whether this process holds the directory's lock (exclusively, if asked)."""
        held = _HELD.get(os.path.realpath(self.path))
        return held is not None and (held.exclusive or not exclusive)

    def _acquire(self, exclusive: bool, create_dir: bool, clean: bool):
        p = self.path
        lock_path = p / LOCK
        created_dir = False
        if not p.exists():
            if not create_dir:
                raise RunDirError(f"run directory {p} does not exist")
            missing = p
            while not missing.parent.exists():
                missing = missing.parent
            try:
                p.mkdir(parents=True)
            except OSError as exc:
                raise RunDirError(f"cannot write run directory {p}: {exc.strerror or exc}") from None
            created_dir = missing
        elif not p.is_dir():
            raise RunDirError(f"output {p} exists and is not a directory")
        elif (exclusive and not os.path.lexists(lock_path) and not (p / CONFIG).exists()
              and not (p / MANIFEST).exists() and _entries(p)):
            raise RunDirError(
                f"output {p} exists, is not empty and is not a crsky run directory (no config.toml); "
                "crsky writes nothing there, not even with --force: choose another --out")
        for _attempt in range(10):
            created_lock = not lock_path.exists()
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                if exclusive:
                    raise RunDirError(
                        f"run directory {p} cannot be written ({exc.strerror} creating {LOCK}); a read-only "
                        "run can be analysed (`crsky analyze RUN --out DIR`) but not resumed: copy it to a "
                        "writable place first") from None
                try:  # a read-only (archived) run: an existing lock file still excludes writers
                    fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return created_dir, False, None  # no lock file: no crsky writer can be active
                created_lock = False
            try:
                if clean and not exclusive:
                    try:  # alone for a moment? then every temporary file is abandoned
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        self._clean_temporaries()
                    except BlockingIOError:
                        pass
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._locked_error(exclusive) from None
            # The file we locked must still be the one under the name (not unlinked meanwhile).
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - only under a pathological race
            raise RunDirError(f"cannot lock run directory {p}: {LOCK} keeps changing")
        record = _holder_record(exclusive)
        with contextlib.suppress(OSError):
            if exclusive:
                os.ftruncate(fd, 0)  # alone: the previous holders are gone
            os.write(fd, (json.dumps(record) + "\n").encode())
        if exclusive and clean:
            self._clean_temporaries()
        return created_dir, created_lock, fd

    def _locked_error(self, exclusive: bool) -> RunLockedError:
        holders = _read_holders(self.path / LOCK)
        # An exclusive holder truncates the file: the records after the last writer's
        # are readers that came after it (so that writer is gone); none: it still writes.
        last_writer = max((i for i, h in enumerate(holders) if h.get("mode") == "write"), default=None)
        if last_writer is not None:
            holders = holders[last_writer + 1:] or holders[last_writer:]
        current = [h for h in holders if _alive(h) and h["pid"] != os.getpid()] or holders
        writers = [h for h in current if h.get("mode") == "write"]
        if not exclusive and writers:
            return RunLockedError(
                f"run directory {self.path} is being written by {_describe(writers[-1])}; wait for it to "
                "finish (or analyse a copy of the directory)")
        if current:
            names = "; ".join(_describe(h) for h in current[-3:])
            return RunLockedError(f"run directory {self.path} is in use by {names}; wait for it to finish")
        return RunLockedError(f"run directory {self.path} is locked by another crsky process; wait for it "
                              "to finish")

    def _release(self, fd: int | None, created_dir, created_lock: bool) -> None:
        # Leave no trace of a refused start: a lock file made here goes unless the
        # directory now holds a crsky run; it goes while still locked, and every
        # locker checks after locking that its file is still the one under the name.
        if fd is not None and created_lock and self._not_a_run_reason() is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path / LOCK)
        if fd is not None:
            os.close(fd)  # releases the lock
        if created_dir:
            with contextlib.suppress(OSError):  # only empty directories, innermost first
                d = self.path
                while True:
                    d.rmdir()
                    if d == created_dir:
                        break
                    d = d.parent

    # -- creation and resume -------------------------------------------------
    @classmethod
    def open(cls, path, config: RunConfig, force: bool = False) -> "RunStore":
        """Create ``path`` for ``config``, or resume the run it holds (the writer).

        Takes the exclusive lock for its own work (re-entrant: hold :meth:`lock` around
        the whole run to keep other processes out until it ends).

        Parameters
        ----------
        path : path
            Run directory: missing, empty, or a crsky run.
        config : RunConfig
            The configuration to run.
        force : bool
            Start over: on a crsky run (``manifest.json`` of this format whose
            ``config_sha256`` is the digest of ``config.toml``) remove exactly the files
            crsky wrote there (:meth:`remove_own_files`); files crsky did not write
            are kept and listed in :attr:`foreign_files`. Anything else is refused.

        Raises
        ------
        RunDirError
            ``path`` holds a run of another configuration (without ``force``), is not a
            crsky run and not empty, holds an invalid manifest, is locked by another
            process, or cannot be written.
        StorageError
            A write failed (full disk, ...).
        """
        store = cls(path)
        p = store.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"output {p} exists and is not a directory")
        if force and p.is_dir() and _entries(p):
            reason = store._not_a_run_reason()
            if reason:
                raise RunDirError(
                    f"--force refused: {p} is not a crsky run directory ({reason}); --force deletes only "
                    "runs crsky wrote. Choose another --out (or move the directory aside yourself)")
        with store.lock(exclusive=True, create_dir=True):
            if force and _entries(p):
                reason = store._not_a_run_reason()  # again, now that nobody else can write
                if reason:
                    raise RunDirError(f"--force refused: {p} is not a crsky run directory ({reason})")
                store.foreign_files = store.remove_own_files()
            elif not (p / CONFIG).exists() and _entries(p):
                raise RunDirError(
                    f"output {p} exists, is not empty and is not a crsky run directory "
                    "(no config.toml); choose another --out")
            if os.path.lexists(p / MANIFEST):
                store._refuse_interrupted_commit(store.manifest())
            if (p / CONFIG).exists():
                stored = store.config()
                if stored.digest() != config.digest():
                    diff = config_difference(stored, config)
                    raise RunDirError(
                        f"run directory {p} holds a run of a different configuration ({diff}); "
                        "use another --out, or --force to delete that run and start over")
            if os.path.lexists(p / MANIFEST):  # a damaged manifest is refused, never overwritten
                recorded = store.manifest()["config_sha256"]
                if recorded != config.digest():
                    raise RunDirError(f"{p / MANIFEST} belongs to another configuration than {p / CONFIG}; "
                                      "the run directory has been edited: restore the original files")
            # config.toml first: a start killed at any point leaves either nothing but
            # the lock file, or a config.toml that the next start resumes from.
            if not (p / CONFIG).exists():
                atomic_write_bytes(p / CONFIG, config.to_toml().encode())
            if not (p / MANIFEST).exists():
                # New run, or a manifest moved aside: realisation files that prove
                # themselves (see _reconcile) are adopted into the new record.
                store._write_manifest(
                    {"format": _FORMAT, "crsky_version": __version__, "config_sha256": config.digest(),
                     "created": _now(), "realisations": {}, "sessions": []}
                )
            try:
                (p / REALISATIONS).mkdir(exist_ok=True)
            except OSError as exc:
                raise storage_error(exc, p / REALISATIONS) from None
            store._clean_temporaries()  # abandoned: we hold the exclusive lock
            store._reconcile(config)
        return store

    @classmethod
    def existing(cls, path) -> "RunStore":
        """Open a run directory for reading; it must hold a valid crsky run.

        Raises
        ------
        RunDirError
            Missing directory, no or invalid ``config.toml`` / ``manifest.json``, or a
            manifest of another configuration.
        """
        store = cls(path)
        if not store.path.is_dir():
            raise RunDirError(f"run directory {store.path} does not exist")
        if not (store.path / CONFIG).exists() or not (store.path / MANIFEST).exists():
            raise RunDirError(f"{store.path} is not a crsky run directory (no config.toml / manifest.json)")
        manifest = store.manifest()
        store._refuse_interrupted_commit(manifest)
        digest = store.config().digest()
        if manifest["config_sha256"] != digest:
            raise RunDirError(
                f"{store.path / MANIFEST} belongs to another configuration than {store.path / CONFIG} "
                f"(config_sha256 {manifest['config_sha256'][:12]}..., config.toml {digest[:12]}...); "
                "the run directory has been edited: restore the original config.toml")
        return store

    def _not_a_run_reason(self) -> str | None:
        """Why the directory is not provably a crsky run, or ``None`` if it is."""
        if not (self.path / MANIFEST).is_file():
            return "no manifest.json"
        if not (self.path / CONFIG).is_file():
            return "no config.toml"
        try:
            manifest = self.manifest()
            digest = self.config().digest()
        except RunDirError:
            return "invalid config.toml or manifest.json"
        if manifest["config_sha256"] != digest:
            return "manifest.json does not belong to config.toml"
        return None

    def remove_own_files(self) -> list[str]:
        """Remove what crsky wrote here; return (sorted, relative) what it did not write.

        Removed: ``config.toml``, ``manifest.json``, ``analysis.nc``, ``summary.json``
        and their temporary files; in ``realisations/`` the realisation files
        ``rNNNNNN.nc``, their quarantined ``.bad-*`` copies and temporary files; in
        ``figures/`` the figures crsky names and marks (PNG ``Software: crsky``, PDF
        ``Creator (crsky)``) and their temporary files; in ``extending/`` what
        ``realisations/`` may hold; then the sub-directories if empty. The lock
        file stays (it is held). Call with the exclusive lock held.
        """
        if not self.holds_lock(exclusive=True):
            raise RuntimeError("remove_own_files needs the exclusive lock")
        p = self.path
        kept = []
        for entry in sorted(p.iterdir()):
            name = entry.name
            if name in _TOP_FILES or _TOP_TEMP.match(name):
                _unlink_file(entry) or kept.append(name)
            elif name == LOCK:
                continue
            elif name in (REALISATIONS, EXTENDING, FIGURES) and entry.is_dir() and not entry.is_symlink():
                for sub in sorted(entry.iterdir()):
                    own = (_REALISATION_OWN.match(sub.name) if name in (REALISATIONS, EXTENDING)
                           else _FIGURE_TEMP.match(sub.name) or _is_crsky_figure(sub))
                    if not (own and _unlink_file(sub)):
                        kept.append(f"{name}/{sub.name}")
                with contextlib.suppress(OSError):
                    entry.rmdir()
            else:
                kept.append(name)
        return kept

    # -- metadata ------------------------------------------------------------
    def config(self) -> RunConfig:
        """The resolved configuration stored in the run directory."""
        path = self.path / CONFIG
        try:
            return config_from_toml_text(path.read_text())
        except (ConfigError, ValueError) as exc:  # tomllib and UnicodeDecodeError are ValueErrors
            raise RunDirError(f"{path} is not a valid crsky configuration: {str(exc).splitlines()[0]}") from None
        except OSError as exc:
            raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None

    def manifest(self) -> dict:
        """The manifest, validated (format, configuration digest, realisation records).

        Raises
        ------
        RunDirError
            Unreadable, not JSON, or not a crsky manifest; the message names the file,
            the problem and the fix.
        """
        path = self.path / MANIFEST
        try:
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing: run `crsky run CONFIG --out {self.path}` again with this "
                              "run's configuration to rebuild it from the realisation files") from None
        except OSError as exc:
            raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            problem = f"not valid JSON ({str(exc).splitlines()[0][:80]})"
            manifest = None
        else:
            problem = _manifest_problem(manifest)
        if problem:
            raise RunDirError(
                f"{path} is not a valid crsky manifest: {problem}; move it aside (e.g. `mv {path} {path}.broken`) "
                f"and run `crsky run CONFIG --out {self.path}` with this run's configuration to rebuild it from "
                "the realisation files that verify")
        return manifest

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def realisation_path(self, index: int) -> Path:
        return self.path / REALISATIONS / f"r{index:06d}.nc"

    def extension_path(self, index: int) -> Path:
        """Where an extension in progress writes realisation ``index``."""
        return self.path / EXTENDING / f"r{index:06d}.nc"

    def completed(self) -> list[int]:
        """Indices recorded as complete in the manifest, sorted."""
        return sorted(int(k) for k in self.manifest()["realisations"])

    def pending(self, n_realisations: int) -> list[int]:
        done = set(self.completed())
        return [j for j in range(n_realisations) if j not in done]

    # -- writing -------------------------------------------------------------
    def write_realisation(self, ds: xr.Dataset, index: int, extension: bool = False) -> dict:
        """Write one realisation atomically; return its record for the manifest.

        ``extension=True``: into ``extending/`` (an extension in progress), where
        it is recorded with :meth:`record_extended`.

        Safe to call from worker processes: it touches only its own file. The file is
        serialised in memory (with the SHA-256 of its arrays as ``data_sha256``) and
        appears under its final name only complete (a hard link of a flushed temporary
        file, which never replaces an existing file). If a complete file is already
        there (an earlier attempt of the same task, e.g. on a worker that died before
        reporting) its record is returned and nothing is overwritten.

        Raises
        ------
        StorageError
            The write failed (full disk, ...); nothing is left under the final name.
        RunDirError
            Something that is not this complete realisation is under the final name.
        """
        final = self.extension_path(index) if extension else self.realisation_path(index)
        existing = self.complete_record(index, ds.attrs.get("config_sha256"), final)
        if existing is not None:
            return existing
        if os.path.lexists(final):
            raise RunDirError(f"{final} already exists and is not a complete realisation; refusing to overwrite it")
        ds = ds.assign_attrs(data_sha256=_data_sha256(ds))
        try:
            written = atomic_write_netcdf(ds, final, overwrite=False)
        except FileExistsError:
            existing = self.complete_record(index, ds.attrs.get("config_sha256"), final)
            if existing is None:
                raise RunDirError(f"{final} appeared meanwhile and is not complete; refusing to overwrite it") from None
            return existing
        return {"file": str(final.relative_to(self.path)), **written, "written": _now(), "host": platform.node()}

    def complete_record(self, index: int, config_sha256: str | None, path: Path | None = None) -> dict | None:
        """The record of realisation ``index`` if its file (``path``, default its place
        in ``realisations/``) is a regular file that reads back whole, belongs to the
        configuration ``config_sha256`` and matches its own ``data_sha256``;
        otherwise ``None``."""
        path = self.realisation_path(index) if path is None else path
        if not path.is_file() or path.is_symlink() or not self._looks_complete(path, config_sha256, index):
            return None
        return self._file_record(path)

    def _file_record(self, path: Path) -> dict:
        return {"file": str(path.relative_to(self.path)), "bytes": path.stat().st_size,
                "sha256": _sha256(path), "written": _now(), "host": platform.node()}

    def record(self, index: int, record: dict) -> None:
        """Record realisation ``index`` as complete (driver only)."""
        with self.lock(exclusive=True):
            manifest = self.manifest()
            manifest["realisations"][str(index)] = record
            self._write_manifest(manifest)

    def record_session(self, session: dict) -> None:
        with self.lock(exclusive=True):
            manifest = self.manifest()
            manifest["sessions"].append(session)
            self._write_manifest(manifest)

    # -- extension -------------------------------------------------------------
    def extension(self) -> dict | None:
        """The manifest's record of an extension in progress (``None`` if there is none)."""
        return self.manifest().get("extension")

    def begin_extension(self, config: RunConfig) -> list[int]:
        """Start, or resume, the extension of this (complete) run to ``config``.

        Records the extension in the manifest (``extension``: the new configuration
        and its digest, the old digest, the two ``t_max``) unless it is already there;
        on resume, a recorded file in ``extending/`` that fails its check is set aside
        and a complete, unrecorded one that proves itself (configuration, index,
        ``data_sha256``) is adopted, as :meth:`open` does for ``realisations/``.
        Nothing of the run itself changes until :meth:`commit_extension`.

        Parameters
        ----------
        config : RunConfig
            The extended configuration (:func:`crsky.simulate.extend_config`).

        Returns
        -------
        list of int
            The realisations still to extend.

        Raises
        ------
        RunDirError
            Another extension (to another ``t_max``) is in progress.
        """
        digest = config.digest()
        with self.lock(exclusive=True):
            manifest = self.manifest()
            extension = manifest.get("extension")
            if extension is not None and extension["config_sha256"] != digest:
                raise self.extension_in_progress_error(extension)
            if extension is None:
                extension = {"config_sha256": digest, "config": config.to_toml(),
                             "from_config_sha256": manifest["config_sha256"],
                             "from_t_max": self.config().integration.t_max, "t_max": config.integration.t_max,
                             "started": _now(), "committing": False, "realisations": {}}
                manifest["extension"] = extension
                self._write_manifest(manifest)
            try:
                (self.path / EXTENDING).mkdir(exist_ok=True)
            except OSError as exc:
                raise storage_error(exc, self.path / EXTENDING) from None
            self._clean_temporaries()
            recorded = extension["realisations"]
            changed = False
            for key, record in list(recorded.items()):
                index = int(key)
                if self._open_checked(self.extension_path(index), index, record, digest, load=False)[1]:
                    del recorded[key]
                    self._quarantine(index, self.extension_path(index))
                    changed = True
            for path in _listdir(self.path / EXTENDING):
                match = _REALISATION.match(path.name)
                if not match or str(int(match.group(1))) in recorded:
                    continue
                index = int(match.group(1))
                if (index < config.ensemble.realisations and path.is_file() and not path.is_symlink()
                        and self._looks_complete(path, digest, index)):
                    recorded[str(index)] = {**self._file_record(path), "adopted": True}
                else:
                    self._quarantine(index, path)
                changed = True
            if changed:
                self._write_manifest(manifest)
            return [j for j in range(config.ensemble.realisations) if str(j) not in recorded]

    def extension_in_progress_error(self, extension: dict) -> RunDirError:
        """The refusal of another extension while ``extension`` is in progress."""
        return RunDirError(
            f"an extension of {self.path} to t_max = {extension['t_max']:g} is in progress; finish it first "
            f"(`crsky run --out {self.path} --extend {extension['t_max']:g}`), then extend further")

    def record_extended(self, index: int, record: dict) -> None:
        """Record realisation ``index`` of the extension in progress as written (driver only)."""
        with self.lock(exclusive=True):
            manifest = self.manifest()
            manifest["extension"]["realisations"][str(index)] = record
            self._write_manifest(manifest)

    def commit_extension(self) -> dict:
        """Make the extension in progress the run: every realisation must be recorded.

        In this order, each step atomic: the manifest marks the extension
        ``committing`` (from here it is finished, never undone); each file of
        ``extending/`` replaces its realisation in ``realisations/``; config.toml
        becomes the extended configuration; the manifest takes its digest and the new
        records, and appends the extension to its ``extensions`` history. Killed
        anywhere in between, the next call finishes the same steps; readers
        (:meth:`existing`, :meth:`open`) refuse the directory meanwhile.

        Returns
        -------
        dict
            The history entry: old and new configuration digest and ``t_max``, the
            number of snapshots added, when it started and was committed.
        """
        with self.lock(exclusive=True):
            manifest = self.manifest()
            extension = manifest["extension"]
            config = config_from_toml_text(extension["config"])
            recorded = extension["realisations"]
            missing = [j for j in range(config.ensemble.realisations) if str(j) not in recorded]
            if missing:
                raise RuntimeError(f"commit_extension: realisations {missing[:5]} are not extended yet")
            if not extension.get("committing"):
                extension["committing"] = True
                self._write_manifest(manifest)
            for key in sorted(recorded, key=int):
                staged, final = self.extension_path(int(key)), self.realisation_path(int(key))
                if os.path.lexists(staged):  # else moved by a commit that was killed
                    try:
                        os.replace(staged, final)
                    except OSError as exc:
                        raise storage_error(exc, final) from None
            _fsync_dir(self.path / REALISATIONS)
            try:
                current = (self.path / CONFIG).read_text()
            except OSError:
                current = None
            if current != extension["config"]:
                atomic_write_bytes(self.path / CONFIG, extension["config"].encode())
            before = config.integration.extended_from[-1]
            entry = {"from_config_sha256": extension["from_config_sha256"],
                     "config_sha256": extension["config_sha256"],
                     "from_t_max": extension["from_t_max"], "t_max": extension["t_max"],
                     "snapshots_added": config.integration.n_snapshots - before["n_snapshots"],
                     "started": extension["started"], "committed": _now(), "host": platform.node()}
            manifest["config_sha256"] = extension["config_sha256"]
            manifest["realisations"] = {
                key: {**record, "file": f"{REALISATIONS}/{self.realisation_path(int(key)).name}"}
                for key, record in recorded.items()}
            manifest.setdefault("extensions", []).append(entry)
            del manifest["extension"]
            self._write_manifest(manifest)
            with contextlib.suppress(OSError):  # kept if something else is in it (a .bad-* file)
                (self.path / EXTENDING).rmdir()
            return entry

    def _refuse_interrupted_commit(self, manifest: dict) -> None:
        """A run whose extension was killed while being committed is neither the old
        run nor the new one: refuse it, naming the command that finishes the commit."""
        extension = manifest.get("extension")
        if extension is not None and extension.get("committing"):
            raise RunDirError(
                f"the extension of {self.path} to t_max = {extension['t_max']:g} was interrupted while being "
                f"committed; run `crsky run --out {self.path} --extend {extension['t_max']:g}` to finish it")

    # -- reading -------------------------------------------------------------
    def read_realisation(self, index: int) -> xr.Dataset:
        """Load one verified realisation into memory (an :class:`xarray.Dataset`).

        The file must be a regular file with the size and SHA-256 of its manifest
        record (the hashed bytes are the ones parsed) and carry this run's
        configuration digest and index ``index``.

        Raises
        ------
        RealisationError
            Not recorded, missing, a symbolic link, damaged or foreign; the message
            names the file and the fix.
        """
        manifest = self.manifest()
        return self._read_verified(index, manifest["realisations"].get(str(index)), manifest["config_sha256"])

    def iter_realisations(self):
        """Yield ``(index, Dataset)`` for the completed realisations, one at a time,
        each verified as in :meth:`read_realisation` (streaming, low memory).

        A run being written is refused (:class:`RunLockedError`, naming the writer):
        the shared lock is taken to read the manifest. Hold :meth:`lock` around the
        whole analysis (as ``crsky analyze`` does) to keep writers out until it ends;
        a generator left suspended must not keep the lock.
        """
        with self.lock(exclusive=False):
            manifest = self.manifest()
        for key in sorted(manifest["realisations"], key=int):
            index = int(key)
            yield index, self._read_verified(index, manifest["realisations"][key], manifest["config_sha256"])

    def _read_verified(self, index: int, record: dict | None, config_sha256: str) -> xr.Dataset:
        path = self.realisation_path(index)
        if record is None:
            raise RealisationError(f"realisation {index} is not recorded as complete in {self.path / MANIFEST}")
        ds, problem = self._open_checked(path, index, record, config_sha256, load=True)
        if problem:
            raise RealisationError(self._problem_message(index, path, problem))
        return ds

    def _problem_message(self, index: int, path: Path, problem: str) -> str:
        return (f"realisation {index} {problem} ({path}): run `crsky run CONFIG --out {self.path}` again "
                "with this run's configuration to set it aside and recompute it")

    def _open_checked(self, path: Path, index: int, record: dict, config_sha256: str, load: bool):
        """``(Dataset or None, problem or None)``: ``path`` checked against ``record``."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, ("is missing (a dangling symbolic link)" if os.path.islink(path) else "is missing")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                if not os.path.exists(path):
                    return None, "is missing (a dangling symbolic link)"
                return None, "is a symbolic link; a realisation must be a regular file"
            return None, f"cannot be read: {exc.strerror}"
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None, "is not a regular file"
            if st.st_size != record["bytes"]:
                return None, f"has {st.st_size} bytes, not the {record['bytes']} recorded (truncated or replaced)"
            digest = hashlib.sha256()
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
            fh.seek(0)
            identity = self._identity_problem(fh, index, config_sha256, load)
            if digest.hexdigest() != record["sha256"]:
                if isinstance(identity, str):
                    return None, identity
                return None, "is damaged (its SHA-256 differs from the manifest record)"
            if isinstance(identity, str):
                return None, identity
            return identity, None

    @staticmethod
    def _identity_problem(fh, index: int, config_sha256: str, load: bool):
        """The loaded Dataset if ``fh`` is realisation ``index`` of this run, else a problem."""
        try:
            with xr.open_dataset(fh, engine="h5netcdf") as ds:
                digest, found = ds.attrs.get("config_sha256"), ds.attrs.get("realisation")
                if digest != config_sha256:
                    return f"belongs to another run (configuration {str(digest)[:12]}..., this run {config_sha256[:12]}...)"
                if found != index:
                    return f"holds realisation {found}, not {index}"
                return ds.load() if load else True
        except Exception:  # noqa: BLE001 - unreadable bytes: damaged
            return "is damaged (cannot be read as netCDF)"

    # -- integrity -----------------------------------------------------------
    def verify(self, index: int, record: dict) -> bool:
        """True if the file of ``index`` is a regular file with the recorded size and
        SHA-256 and this run's configuration digest and index."""
        try:
            digest = self.manifest()["config_sha256"]
        except RunDirError:
            return False
        return self._open_checked(self.realisation_path(index), index, record, digest, load=False)[1] is None

    def _clean_temporaries(self) -> None:
        """Remove crsky's temporary files (call with the exclusive lock: then they are abandoned)."""
        p = self.path
        candidates = [e for e in _listdir(p) if _TOP_TEMP.match(e.name)]
        candidates += [e for d in (REALISATIONS, EXTENDING) for e in _listdir(p / d)
                       if e.name.endswith(".tmp") and _REALISATION_OWN.match(e.name)]
        candidates += [e for e in _listdir(p / FIGURES) if _FIGURE_TEMP.match(e.name)]
        for tmp in candidates:
            _unlink_file(tmp)

    def _reconcile(self, config: RunConfig) -> None:
        """Set aside recorded files that fail their check; adopt unrecorded files that
        prove themselves; set aside anything else under a realisation's name."""
        manifest = self.manifest()
        digest = config.digest()
        changed = False
        for key, record in list(manifest["realisations"].items()):
            index = int(key)
            if self._open_checked(self.realisation_path(index), index, record, digest, load=False)[1]:
                del manifest["realisations"][key]
                self._quarantine(index)
                changed = True
        for path in _listdir(self.path / REALISATIONS):
            match = _REALISATION.match(path.name)
            if not match or str(int(match.group(1))) in manifest["realisations"]:
                continue
            index = int(match.group(1))
            if path.is_file() and not path.is_symlink() and self._looks_complete(path, digest, index):
                manifest["realisations"][str(index)] = {**self._file_record(path), "adopted": True}
            else:
                self._quarantine(index)
            changed = True
        if changed:
            self._write_manifest(manifest)

    def _quarantine(self, index: int, path: Path | None = None) -> None:
        """Move a bad realisation file (or symbolic link; default: its place in
        ``realisations/``) aside: kept for inspection, never read."""
        path = self.realisation_path(index) if path is None else path
        if os.path.lexists(path):
            aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
            try:
                os.replace(path, aside)
            except OSError as exc:
                raise storage_error(exc, aside) from None

    @staticmethod
    def _looks_complete(path: Path, config_sha256: str | None, index: int) -> bool:
        """Whether an unrecorded file proves to be realisation ``index`` of this run:
        its attributes name the configuration and index, and its arrays read back
        whole with the SHA-256 stored in it at writing (``data_sha256``)."""
        try:
            with xr.open_dataset(path, engine="h5netcdf") as ds:
                ok = (
                    ds.attrs.get("config_sha256") == config_sha256
                    and ds.attrs.get("realisation") == index
                    and ds["x"].shape == (ds.sizes["time"], 12 * ds.attrs["nside"] ** 2, 3)
                    and ds.attrs.get("data_sha256") == _data_sha256(ds)
                )
            return bool(ok)
        except Exception:  # noqa: BLE001 - anything unreadable is not complete
            return False


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a parsed manifest, or ``None``."""
    if not isinstance(manifest, dict):
        return f"the top level is a JSON {type(manifest).__name__}, not an object"
    if manifest.get("format") != _FORMAT:
        return f"format = {manifest.get('format')!r}, expected {_FORMAT}"
    digest = manifest.get("config_sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return "config_sha256 is missing or not a SHA-256 hex digest"
    realisations = manifest.get("realisations")
    if not isinstance(realisations, dict):
        return "realisations is missing or not an object"
    for key, record in realisations.items():
        if not key.isdigit():
            return f"realisations key {key!r} is not an index"
        if (not isinstance(record, dict) or not isinstance(record.get("bytes"), int)
                or not isinstance(record.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", record["sha256"])):
            return f"the record of realisation {key} lacks bytes / sha256"
    if not isinstance(manifest.get("sessions"), list):
        return "sessions is missing or not a list"
    extension = manifest.get("extension")
    if extension is not None:
        if (not isinstance(extension, dict) or not isinstance(extension.get("config"), str)
                or not isinstance(extension.get("t_max"), (int, float))
                or not re.fullmatch(r"[0-9a-f]{64}", str(extension.get("config_sha256")))
                or not isinstance(extension.get("realisations"), dict)):
            return "the record of the extension in progress is incomplete"
        problem = _manifest_problem({**manifest, "realisations": extension["realisations"], "extension": None})
        if problem:
            return f"extension: {problem}"
    return None


def _listdir(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def _entries(directory: Path) -> list[str]:
    """Names in ``directory`` other than the lock file."""
    return [e.name for e in _listdir(directory) if e.name != LOCK]


def _unlink_file(path: Path) -> bool:
    """Remove a file or symbolic link (never a directory); True if it is gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            return False
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _is_crsky_figure(path: Path) -> bool:
    """A figure crsky names (:mod:`crsky.plots`) and marks in its metadata."""
    match = _FIGURE.match(path.name)
    if not match or not path.is_file() or path.is_symlink():
        return False
    marker = _FIGURE_MARKERS.get(match.group(2), b"crsky")
    try:
        return marker in path.read_bytes()
    except OSError:
        return False


def config_difference(a: RunConfig, b: RunConfig) -> str:
    """The first keys in which ``b`` (requested) differs from ``a`` (stored), one line."""
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
