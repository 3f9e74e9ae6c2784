"""The observed-spectrum reader refuses, up front, everything the comparison figure
cannot draw: one line naming the file, the line and the column."""

import pytest

from crsky.errors import InputError
from crsky.observed import MAX_ELL, read_observed

HEADER = "ell,C_ell,error,noise\n"


@pytest.mark.parametrize("rows, message", [
    ("1,2e-7,2e-8,0\n2,3e-8,3e-9,0\n1e30,1e-9,1e-10,0\n", "line 4, column ell: ell = 1e30 is larger than 10000"),
    (f"{MAX_ELL + 1},2e-7,2e-8,0\n", f"line 2, column ell: ell = {MAX_ELL + 1} is larger than"),
    ("2.5,2e-7,2e-8,0\n", "line 2, column ell: ell = 2.5 is not a positive integer"),
    ("0,2e-7,2e-8,0\n", "line 2, column ell: ell = 0 is not a positive integer"),
    ("nan,2e-7,2e-8,0\n", "line 2, column ell: 'nan' is not a finite number"),
    ("1,2e-7,2e-8,0\n1.0,3e-8,2e-9,0\n", "line 3, column ell: ell = 1 repeats line 2"),
    ("1,nan,2e-8,0\n", "line 2, column C_ell: 'nan' is not a finite number"),
    ("1,2e-7,-1e-8,0\n", "line 2, column error: negative error -1e-8 (must be >= 0)"),
    ("1,2e-7,2e-8,-inf\n", "line 2, column noise: '-inf' is not a finite number"),
    ("1,2e-7,2e-8,-1\n", "line 2, column noise: negative noise -1"),
])
def test_bad_rows_name_line_and_column(tmp_path, rows, message):
    path = tmp_path / "spectrum.csv"
    path.write_text(HEADER + rows)
    with pytest.raises(InputError) as info:
        read_observed(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_every_c_ell_negative_is_read(tmp_path):
    """Noise-subtracted estimates may all be negative: the reader keeps them (the
    figure leaves them out of its logarithmic axis)."""
    path = tmp_path / "negative.csv"
    path.write_text(HEADER + "1,-2e-7,2e-8,1e-11\n2,-3e-8,3e-9,1e-11\n")
    obs = read_observed(path)
    assert list(obs.ell) == [1, 2] and (obs.cl < 0).all()


def test_largest_multipole_and_bom_are_accepted(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_bytes(("\ufeff" + HEADER + f"{MAX_ELL}.0,1e-9,1e-10,0\n3,1e-8,1e-9,0\n").encode())
    obs = read_observed(path)
    assert list(obs.ell) == [3, MAX_ELL]


def test_large_and_non_utf8_files_are_refused_unread(tmp_path):
    big = tmp_path / "big.csv"
    big.write_bytes(HEADER.encode() + b"1,2e-7,2e-8,0 #" + b"x" * (16 << 20) + b"\n")
    with pytest.raises(InputError, match="larger than 16 MiB"):
        read_observed(big)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"# Aartsen caf\xe9\n" + HEADER.encode() + b"1,2e-7,2e-8,0\n")
    with pytest.raises(InputError, match=r"line 1: not a UTF-8 text file \(byte 0xe9\)"):
        read_observed(latin1)


def test_cli_plot_refuses_bad_observed_before_any_figure(tmp_path, capsys):
    """`crsky plot RUN --observed bad.csv` on a real (tiny) run: exit 2, one line,
    and no figure written."""
    from crsky.cli import main

    (tmp_path / "c.toml").write_text("[turbulence]\nn_modes = 4\n[particles]\nnside = 1\n[integration]\n"
                                     "t_max = 0.3\nn_snapshots = 2\n[ensemble]\nrealisations = 1\n")
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu", "--quiet"]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "1,2e-7,2e-8,0\n1e30,1e-9,1e-10,0\n")
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "run"), "--observed", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 3, column ell: ell = 1e30 is larger than" in err
    assert not (tmp_path / "run" / "figures").exists()
