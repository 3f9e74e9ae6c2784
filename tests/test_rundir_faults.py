"""The run directory under misuse, damage, concurrency and failing writes.

Every fault here is real: other processes hold the lock, files are damaged on disk,
writes fail because of a real file size limit (``RLIMIT_FSIZE``) or a real full or
read-only file system (a small tmpfs, where this test may mount one).
"""

import json
import re
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crsky.cli import main
from crsky.store import (
    ANALYSIS_ID, LOCK, RealisationError, RunDirError, RunStore,
    atomic_write_bytes, atomic_write_netcdf,
)

TINY_TOML = """
[turbulence]
n_modes = 8
[particles]
nside = 1
[integration]
t_max = 2.0
n_snapshots = 3
[ensemble]
realisations = 4
"""
CLI = [sys.executable, "-m", "crsky.cli"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The one error line of ``err``, besides the physics warnings that a run of the
    tiny test configuration prints before it starts (its t_max is far too short for
    a steady state, on purpose)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("crsky run: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture
def run(tmp_path, config_file, capsys):
    """A complete tiny run (4 realisations), made in this process."""
    out = tmp_path / "run"
    code, _, err = run_cli(["run", config_file, "--out", out, "--backend", "cpu", "--quiet"], capsys)
    assert code == 0, err
    return out


def tree(path: Path) -> dict:
    """Every entry under ``path`` with its bytes (or link target) and mtime."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(path))] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p.relative_to(path))] = (p.read_bytes(), p.stat().st_mtime_ns)
        else:
            out[str(p.relative_to(path))] = "dir"
    return out


def arrays(run_dir: Path) -> list:
    store = RunStore.existing(run_dir)
    return [(ds["x"].values, ds["p"].values) for _, ds in store.iter_realisations()]


# ---------------------------------------------------------------------------------
# --force deletes only what crsky wrote
# ---------------------------------------------------------------------------------
def test_force_on_an_analysed_run_removes_exactly_its_files(run, tmp_path, config_file, capsys):
    from crsky.plots import _new_figure, save_figure

    assert run_cli(["analyze", run], capsys)[0] == 0
    fig = _new_figure(2, 2)
    save_figure(fig, run / "figures", "fig3_spectrum_shape")  # crsky's, marked
    (run / "figures" / "fig2_spectrum_evolution.png").write_bytes(b"\x89PNG a user's own figure")  # unmarked
    (run / "notes.txt").write_text("my notes")
    (run / "realisations" / "README").write_text("user file")
    (run / "realisations" / "r000002.nc.bad-20240101T000000-abcdef").write_bytes(b"quarantined")
    other = tmp_path / "other.toml"
    other.write_text(TINY_TOML.replace("n_modes = 8", "n_modes = 9"))
    code, stdout, err = run_cli(["run", other, "--out", run, "--backend", "cpu", "--quiet"], capsys)
    assert code == 2 and "different configuration" in err and "--force" in err
    code, stdout, err = run_cli(["run", other, "--out", run, "--backend", "cpu", "--quiet", "--force"], capsys)
    assert code == 0, err
    assert "4/4 realisations complete" in stdout
    warning = one_line(err)
    assert "kept 3 files crsky did not write" in warning
    for name in ("notes.txt", "realisations/README", "figures/fig2_spectrum_evolution.png"):
        assert name in warning and (run / name).exists()
    assert not (run / "analysis.nc").exists() and not (run / "summary.json").exists()
    assert not list(run.glob("figures/fig3_spectrum_shape.*"))
    assert not list(run.glob("realisations/*.bad-*"))
    assert RunStore.existing(run).config().turbulence.n_modes == 9


def test_force_on_a_run_without_foreign_files_leaves_only_the_new_run(run, tmp_path, capsys):
    other = tmp_path / "other.toml"
    other.write_text(TINY_TOML.replace("realisations = 4", "realisations = 2"))
    code, _, err = run_cli(["run", other, "--out", run, "--backend", "cpu", "--quiet", "--force"], capsys)
    assert code == 0 and all(line.startswith("crsky run: warning:") for line in err.splitlines())
    assert sorted(p.name for p in (run / "realisations").iterdir()) == ["r000000.nc", "r000001.nc"]
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK, "config.toml", "manifest.json", "realisations"])


@pytest.mark.parametrize("layout", ["realisations", "manifest", "garbage_manifest", "config_mismatch"])
def test_force_refuses_a_directory_crsky_did_not_write_and_touches_nothing(tmp_path, config_file, capsys, layout, run):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    if layout == "realisations":
        (user / "realisations").mkdir()
        (user / "realisations" / "r000000.nc").write_bytes(b"my data")
    elif layout == "manifest":
        (user / "manifest.json").write_text('{"my": "manifest"}')
    elif layout == "garbage_manifest":
        shutil.copy(run / "config.toml", user / "config.toml")
        (user / "manifest.json").write_bytes(b"\x00\xffgarbage")
    else:  # a real manifest next to a config.toml it does not belong to
        shutil.copy(run / "manifest.json", user / "manifest.json")
        (user / "config.toml").write_text(
            (run / "config.toml").read_text().replace("n_modes = 8", "n_modes = 9"))
    before = tree(user)
    code, _, err = run_cli(["run", config_file, "--out", user, "--backend", "cpu", "--quiet", "--force"], capsys)
    assert code == 2
    line = one_line(err)
    assert str(user) in line and ("not a crsky run" in line or "not a valid crsky" in line)
    assert tree(user) == before  # not one byte changed, no lock file left


def test_missing_output_is_not_created_when_the_run_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[particles]\nnside = 3\n")
    code, _, err = run_cli(["run", bad, "--out", tmp_path / "new" / "run"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------
# The lock: real processes
# ---------------------------------------------------------------------------------
HOLDER = """
import sys, time
from crsky.store import RunStore
with RunStore(sys.argv[1]).lock(exclusive=sys.argv[2] == "write"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    procs = []

    def start(run_dir, mode):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), mode],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_writer_lock_refuses_run_and_analyze_naming_the_holder(run, config_file, holder, capsys):
    import platform

    proc = holder(run, "write")
    for args in (["run", config_file, "--out", run, "--backend", "cpu", "--quiet"], ["analyze", run, "--json"],
                 ["plot", run]):
        code, _, err = run_cli(args, capsys)
        assert code == 2, err
        line = one_line(err)
        assert f"pid {proc.pid} on host {platform.node()}" in line and "wait for it to finish" in line
    os.kill(proc.pid, signal.SIGKILL)  # the OS releases the lock of a killed process
    proc.wait()
    code, _, err = run_cli(["analyze", run], capsys)
    assert code == 0, err


def test_readers_share_the_lock_and_exclude_a_writer(run, config_file, holder, capsys):
    proc = holder(run, "read")
    code, _, err = run_cli(["analyze", run], capsys)
    assert code == 0, err
    code, _, err = run_cli(["run", config_file, "--out", run, "--backend", "cpu", "--quiet"], capsys)
    assert code == 2 and f"in use by pid {proc.pid}" in one_line(err)


def test_two_crsky_runs_on_one_directory(tmp_path, config_file, same_build_env):
    """The second run is refused while the first runs; the first finishes untouched."""
    out = tmp_path / "run"
    cmd = [*CLI, "run", str(config_file), "--out", str(out), "--backend", "cpu", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=same_build_env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and f'"pid": {first.pid}' not in _read(out / LOCK):
            assert first.poll() is None, first.communicate()
            time.sleep(0.01)
        # Hold the first run still (SIGSTOP) while the second starts: deterministic on a busy machine.
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(cmd, capture_output=True, text=True, env=same_build_env, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert f"is in use by pid {first.pid}" in one_line(second.stderr)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "4/4 realisations complete" in stdout
    assert RunStore.existing(out).completed() == list(range(4))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------
# Reading verifies every realisation
# ---------------------------------------------------------------------------------
def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _foreign(path: Path, tmp_path: Path, capsys) -> None:
    """Replace with realisation of the same index from a run of another seed."""
    cfg = tmp_path / "seed.toml"
    cfg.write_text(TINY_TOML + "seed = 5\n")
    other = tmp_path / "seed5"
    assert run_cli(["run", cfg, "--out", other, "--backend", "cpu", "--quiet"], capsys)[0] == 0
    shutil.copy(other / "realisations" / path.name, path)


DAMAGE = {
    "flipped_bit": (lambda p, t, c: _flip_bit(p), "is damaged"),
    "truncated": (lambda p, t, c: p.write_bytes(p.read_bytes()[:-100]), "has"),
    "foreign": (_foreign, "belongs to another run"),
    "symlink": (lambda p, t, c: (p.unlink(), p.symlink_to(p.with_name("r000000.nc"))), "is a symbolic link"),
    "missing": (lambda p, t, c: p.unlink(), "is missing"),
    "dangling_symlink": (lambda p, t, c: (p.unlink(), p.symlink_to(t / "nowhere.nc")), "is missing (a dangling symbolic link)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_analyze_refuses_a_bad_realisation_and_run_recomputes_it(run, tmp_path, config_file, capsys, damage):
    reference = arrays(run)
    mtimes = {j: RunStore(run).realisation_path(j).stat().st_mtime_ns for j in (0, 1, 3)}
    apply, message = DAMAGE[damage]
    path = RunStore(run).realisation_path(2)
    apply(path, tmp_path, capsys)
    code, _, err = run_cli(["analyze", run, "--json"], capsys)
    assert code == 2, err
    line = one_line(err)
    assert f"realisation 2 {message}" in line and str(path) in line
    assert f"run `crsky run CONFIG --out {run}` again" in line
    with pytest.raises(RealisationError, match=re.escape(f"realisation 2 {message}")):
        RunStore.existing(run).read_realisation(2)
    # Resume sets the bad file (or link) aside and recomputes exactly that realisation.
    code, stdout, err = run_cli(["run", config_file, "--out", run, "--backend", "cpu", "--quiet"], capsys)
    assert code == 0 and "4/4" in stdout, err
    assert not path.is_symlink()
    for j, mtime in mtimes.items():
        assert RunStore(run).realisation_path(j).stat().st_mtime_ns == mtime
    for (x0, p0), (x1, p1) in zip(reference, arrays(run)):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(p0, p1)
    assert run_cli(["analyze", run], capsys)[0] == 0


def test_a_foreign_file_with_a_matching_record_is_still_refused(run, tmp_path, capsys):
    """Even a manifest record edited to fit another run's file does not make it ours."""
    path = RunStore(run).realisation_path(1)
    _foreign(path, tmp_path, capsys)
    manifest = json.loads((run / "manifest.json").read_text())
    record = RunStore(run)._file_record(path)
    manifest["realisations"]["1"].update(bytes=record["bytes"], sha256=record["sha256"])
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RealisationError, match="realisation 1 belongs to another run"):
        RunStore.existing(run).read_realisation(1)
    shutil.copy(RunStore(run).realisation_path(0), path)  # realisation 0 under the name of 1
    record = RunStore(run)._file_record(path)
    manifest["realisations"]["1"].update(bytes=record["bytes"], sha256=record["sha256"])
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RealisationError, match="realisation 1 holds realisation 0, not 1"):
        list(RunStore.existing(run).iter_realisations())


def test_an_unrecorded_file_is_adopted_only_if_its_data_digest_matches(run, config_file, capsys):
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["realisations"]["1"], manifest["realisations"]["2"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    _flip_bit(RunStore(run).realisation_path(2))  # in the data: only data_sha256 can tell
    code, _, err = run_cli(["run", config_file, "--out", run, "--backend", "cpu", "--quiet"], capsys)
    assert code == 0, err
    realisations = json.loads((run / "manifest.json").read_text())["realisations"]
    assert realisations["1"].get("adopted") is True
    assert "adopted" not in realisations["2"]  # recomputed, the damaged file set aside
    assert len(list((run / "realisations").glob("r000002.nc.bad-*"))) == 1


# ---------------------------------------------------------------------------------
# Damaged manifests
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content, problem", [
    (b"[]", "the top level is a JSON list"),
    (b"{}", "format = None"),
    (b"\x00\xff garbage", "not valid JSON"),
    (b'{"format": 1, "config_sha256": "00"}', "config_sha256 is missing or not"),
    (b"", "not valid JSON"),
])
def test_damaged_manifest_is_one_line_and_rebuilt_only_when_moved_aside(run, config_file, capsys, content, problem):
    manifest = run / "manifest.json"
    mtimes = {p.name: p.stat().st_mtime_ns for p in (run / "realisations").iterdir()}
    manifest.write_bytes(content)
    for args in (["run", config_file, "--out", run, "--backend", "cpu", "--quiet"], ["analyze", run, "--json"],
                 ["plot", run]):
        code, _, err = run_cli(args, capsys)
        assert code == 2, err
        line = one_line(err)
        assert f"{manifest} is not a valid crsky manifest: {problem}" in line and "mv " in line
    assert manifest.read_bytes() == content  # never overwritten
    manifest.rename(run / "manifest.json.broken")
    code, stdout, err = run_cli(["run", config_file, "--out", run, "--backend", "cpu", "--quiet"], capsys)
    assert code == 0 and "4/4" in stdout, err
    assert {p.name: p.stat().st_mtime_ns for p in (run / "realisations").iterdir()} == mtimes  # adopted
    assert all(r["adopted"] for r in json.loads(manifest.read_text())["realisations"].values())


# ---------------------------------------------------------------------------------
# Temporary files
# ---------------------------------------------------------------------------------
TEMPORARIES = ["manifest.json.k2j3h.tmp", "analysis.nc.abc123.tmp", "summary.json.x_1.tmp",
               "realisations/r000001.nc.q9w8.tmp", "figures/.fig2_spectrum_evolution.png.4242.0123456789ab.tmp"]


def _make_temporaries(run: Path) -> None:
    (run / "figures").mkdir(exist_ok=True)
    for name in TEMPORARIES:
        (run / name).write_bytes(b"half written")
    (run / "figures" / "mine.tmp").write_text("a user's file that merely ends in .tmp")


def test_abandoned_temporaries_are_removed_only_under_the_exclusive_lock(run, config_file, holder, capsys):
    _make_temporaries(run)
    proc = holder(run, "read")  # another reader: the temporaries might be its own
    assert run_cli(["analyze", run], capsys)[0] == 0
    assert all((run / name).exists() for name in TEMPORARIES if not name.startswith("analysis")
               and not name.startswith("summary"))
    proc.kill()
    proc.wait()
    code, _, err = run_cli(["run", config_file, "--out", run, "--backend", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert not any((run / name).exists() for name in TEMPORARIES)
    assert (run / "figures" / "mine.tmp").exists()


def test_analyze_alone_removes_abandoned_temporaries(run, capsys):
    _make_temporaries(run)
    assert run_cli(["analyze", run], capsys)[0] == 0
    assert not any((run / name).exists() for name in TEMPORARIES)
    assert (run / "figures" / "mine.tmp").exists()


# ---------------------------------------------------------------------------------
# Permissions
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_every_file_gets_the_umask_permissions(tmp_path, config_file, capsys, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert run_cli(["run", config_file, "--out", out, "--backend", "cpu", "--quiet"], capsys)[0] == 0
        assert run_cli(["analyze", out], capsys)[0] == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"analysis.nc", "summary.json", "manifest.json", "config.toml", LOCK, "r000000.nc"} <= {
        p.name for p in files}
    for p in files:
        assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~umask), p


# ---------------------------------------------------------------------------------
# Failing writes: a real file size limit (EFBIG), a real full or read-only file system
# ---------------------------------------------------------------------------------
def _limit_file_size(limit_bytes: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return preexec


def test_file_size_limit_during_run_is_one_line_and_records_nothing_incomplete(tmp_path, config_file,
                                                                                same_build_env, capsys):
    out = tmp_path / "run"
    cmd = [*CLI, "run", str(config_file), "--out", str(out), "--backend", "cpu", "--quiet"]
    # 8 KiB: config.toml and manifest.json fit, a realisation (~13 KiB) does not.
    result = subprocess.run(cmd, capture_output=True, text=True, env=same_build_env,
                            preexec_fn=_limit_file_size(8192), timeout=300)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "cannot write" in line and "r000000.nc" in line and "file size limit" in line
    assert RunStore.existing(out).completed() == []
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("r0")]
    code, _, err = run_cli(cmd[3:], capsys)  # without the limit: resumes and completes
    assert code == 0, err
    assert RunStore.existing(out).completed() == [0, 1, 2, 3]


def test_full_numba_cache_is_named_not_a_bare_errno(run, tmp_path):
    """An empty numba cache directory under a 16 KiB file size limit: numba's save of the
    analysis' compiled field code fails first; the one line says so and what to do."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba_cache")}
    result = subprocess.run([*CLI, "analyze", str(run), "--json"], capture_output=True, text=True, env=env,
                            preexec_fn=_limit_file_size(16384), timeout=300)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "numba could not write its cache of compiled kernels" in line and "NUMBA_CACHE_DIR" in line, line
    assert not (run / "analysis.nc").exists() and not list(run.glob("*.tmp"))


def test_file_size_limit_during_analyze_leaves_no_analysis(run):
    # The limit is for the analysis' outputs: numba's on-disk cache of the analysis'
    # field code is written first (by an unlimited analysis of a copy), as after any
    # first analysis on a machine; a parallel test worker may not have written it yet.
    import shutil

    warm = run.parent / "warm"
    shutil.copytree(run, warm)
    subprocess.run([*CLI, "analyze", str(warm)], check=True, capture_output=True, timeout=300)
    result = subprocess.run([*CLI, "analyze", str(run), "--json"], capture_output=True, text=True,
                            preexec_fn=_limit_file_size(16384), timeout=300)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"cannot write {run / 'analysis.nc'}" in line
    assert not (run / "analysis.nc").exists() and not (run / "summary.json").exists()
    assert not list(run.glob("*.tmp"))


@pytest.fixture
def tmpfs(tmp_path):
    """A real 1 MiB tmpfs (needs root and permission to mount; skipped otherwise)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave_bytes: int) -> None:
    free = shutil.disk_usage(mount).free
    with open(mount / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


def test_full_disk_during_run_and_analyze(tmpfs, config_file, capsys):
    out = tmpfs / "run"
    # tmpfs counts 4 KiB pages: room for the lock file, config.toml, manifest.json and
    # its temporary copy, not for a realisation (~13 KiB)
    # A disk too full for the run's estimated size is refused before anything is
    # written (exit 2, the estimate named); a write that fails later is exit 1 (the
    # file size limit tests above, and analyze below).
    _fill(tmpfs, 24 * 1024)
    code, _, err = run_cli(["run", config_file, "--out", out, "--backend", "cpu", "--quiet"], capsys)
    assert code == 2
    assert "disk" in one_line(err)
    assert not out.exists()
    (tmpfs / "filler").unlink()
    assert run_cli(["run", config_file, "--out", out, "--backend", "cpu", "--quiet"], capsys)[0] == 0
    _fill(tmpfs, 20 * 1024)
    code, _, err = run_cli(["analyze", out, "--json"], capsys)
    assert code == 1 and f"cannot write {out / 'analysis.nc'}: No space left" in one_line(err)
    assert not (out / "analysis.nc").exists() and not list(out.glob("*.tmp"))


@pytest.fixture(params=["with_lock_file", "without_lock_file"])
def read_only_run(run, tmpfs, request):
    """The tiny run on a file system remounted read-only (an archived run), with its
    lock file (used read-only) or without (archives may leave it out)."""
    archived = tmpfs / "archived"
    shutil.copytree(run, archived)
    if request.param == "without_lock_file":
        (archived / LOCK).unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    return archived


def test_read_only_run_analyze_prints_summary_and_writes_to_out(read_only_run, tmp_path, config_file, capsys):
    code, stdout, err = run_cli(["analyze", read_only_run], capsys)
    assert code == 1
    assert "Diffusion tensor" in stdout  # the summary is printed all the same
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("crsky: error: cannot write") and "read-only" in last and "--out DIR" in last
    code, stdout, err = run_cli(["analyze", read_only_run, "--out", tmp_path / "results"], capsys)
    assert code == 0, err
    assert (tmp_path / "results" / "analysis.nc").is_file() and (tmp_path / "results" / "summary.json").is_file()
    code, _, err = run_cli(["run", config_file, "--out", read_only_run, "--backend", "cpu", "--quiet"], capsys)
    assert code == 2
    assert "cannot be written" in one_line(err) and "copy it" in err


# ---------------------------------------------------------------------------------
# The analysis pair and the writers
# ---------------------------------------------------------------------------------
def test_atomic_write_never_overwrites_when_asked(tmp_path):
    target = tmp_path / "f"
    atomic_write_bytes(target, b"one", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"two", overwrite=False)
    assert target.read_bytes() == b"one" and os.listdir(tmp_path) == ["f"]


def test_library_reads_verify_too(run):
    _flip_bit(RunStore(run).realisation_path(3))
    store = RunStore.existing(run)
    with pytest.raises(RunDirError, match="realisation 3 is damaged"):
        for _ in store.iter_realisations():
            pass
