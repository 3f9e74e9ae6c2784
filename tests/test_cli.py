"""The command line: exit codes and one-line messages."""

import json
import subprocess
import sys

import pytest

from crsky.cli import main

TINY_TOML = """
[turbulence]
n_modes = 8
[particles]
nside = 1
[integration]
t_max = 2.0
n_snapshots = 3
[ensemble]
realisations = 2
"""


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_then_resume(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML)
    out = tmp_path / "run"
    code, stdout, _ = run_cli([ "run", str(cfg), "--out", str(out), "--backend", "cpu", "--quiet"], capsys)
    assert code == 0 and "2/2 realisations complete" in stdout
    assert (out / "realisations" / "r000001.nc").exists()
    code, stdout, _ = run_cli(["run", str(cfg), "--out", str(out), "--backend", "cpu", "--quiet"], capsys)
    assert code == 0
    assert json.loads((out / "manifest.json").read_text())["sessions"][-1]["pending"] == 0


BAD_ARGS = [
    (["run", "--out", "X", "--preset", "huge"], "invalid choice"),
    (["run", "CFG", "--out", "X", "--workers", "0"], "must be >= 1"),
    (["run", "missing.toml", "--out", "X"], "does not exist"),
    (["frobnicate"], "invalid choice"),
    (["run", "CFG"], "--out"),
]


@pytest.mark.parametrize("args, message", BAD_ARGS)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "CFG").write_text(TINY_TOML)
    args = [str(tmp_path / a) if a in ("CFG", "X", "missing.toml") else a for a in args]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[particles]\nnside = 3\n", "[particles] nside = 3: must be a power of 2"),
        ("[particles]\nnside = \n", "malformed TOML"),
        ("[extra]\nfoo = 1\n", "unknown section [extra]"),
        ("[integration]\ndt = 'small'\n", "[integration] dt = 'small': must be a number"),
    ],
)
def test_bad_config_exit_2(tmp_path, capsys, toml, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    code, _, err = run_cli(["run", str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # validated before any work or any file


def test_cuda_without_gpu_is_an_error_not_a_cpu_run(tmp_path, capsys, monkeypatch):
    import crsky.backends as backends

    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    code, _, err = run_cli(["run", "--out", str(tmp_path / "r"), "--backend", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err
    assert not (tmp_path / "r").exists()


def test_other_config_on_existing_run_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML)
    out = str(tmp_path / "run")
    assert run_cli(["run", str(cfg), "--out", out, "--backend", "cpu", "--quiet"], capsys)[0] == 0
    cfg.write_text(TINY_TOML.replace("n_modes = 8", "n_modes = 9"))
    code, _, err = run_cli(["run", str(cfg), "--out", out, "--backend", "cpu", "--quiet"], capsys)
    assert code == 2 and "different configuration" in err and "--force" in err


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["run", "--out", str(blocker / "run"), "--backend", "cpu"], capsys)
    assert code == 2 and "cannot write run directory" in err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "crsky.cli", "run", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--preset" in result.stdout


def _break_bgk(monkeypatch):
    import crsky.bgk

    def broken(*args, **kwargs):
        raise ValueError("internal inconsistency")

    monkeypatch.setattr(crsky.bgk, "bgk_ratio", broken)


def test_internal_value_error_is_a_failure_in_one_line(capsys, monkeypatch):
    """Only :class:`crsky.errors.InputError` means bad input (exit 2); a ValueError
    from inside crsky is a failure (exit 1): one line, the traceback with --debug."""
    _break_bgk(monkeypatch)
    code, _, err = run_cli(["bgk", "--p", "0.5", "--lmax", "4"], capsys)
    assert code == 1
    assert err.strip() == "crsky: failed: ValueError: internal inconsistency (--debug for the traceback)"


@pytest.mark.parametrize("args", [["--debug", "bgk", "--p", "0.5", "--lmax", "4"],
                                  ["bgk", "--p", "0.5", "--lmax", "4", "--debug"]])
def test_debug_shows_the_traceback(capsys, monkeypatch, args):
    _break_bgk(monkeypatch)
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert "Traceback" in err and err.strip().splitlines()[-1] == "crsky: failed: ValueError: internal inconsistency"


def test_debug_flag_does_not_change_bad_input_handling(capsys):
    code, _, err = run_cli(["bgk", "--p", "1.5", "--lmax", "4"], capsys)
    assert code == 2 and "Traceback" not in err
    code, _, err = run_cli(["--debug", "bgk", "--p", "1.5", "--lmax", "4"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("crsky: error: p must be")


def test_too_long_output_name_is_bad_input(tmp_path, capsys):
    out = tmp_path / ("r" * 300)  # NAME_MAX is 255 on common file systems
    code, _, err = run_cli(["run", "--out", str(out), "--backend", "cpu"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "cannot use path" in err and "File name too long" in err
    assert list(tmp_path.iterdir()) == []


def test_large_run_prints_its_estimate_first(tmp_path, capsys, monkeypatch):
    """A run of more than 1 GiB states its size on the first line, before any work.
    (The size threshold is lowered so that a tiny run counts as large.)"""
    import crsky.config

    monkeypatch.setattr(crsky.config, "LARGE_RUN_BYTES", 1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML)
    code, _, err = run_cli(["run", str(cfg), "--out", str(tmp_path / "run"), "--backend", "cpu", "--quiet"], capsys)
    assert code == 0
    assert err.splitlines()[0].startswith("crsky run: about ") and "on disk" in err.splitlines()[0]


def test_bad_bgk_argument_is_input_error(capsys):
    code, _, err = run_cli(["bgk", "--p", "1.5", "--lmax", "4"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
