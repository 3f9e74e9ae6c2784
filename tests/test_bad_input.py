"""Bad input through the command line: one line naming the problem, exit code 2, no
traceback, and no output written (a table of bad inputs, one case per row)."""

import pytest

from crsky.cli import main

GOOD = """
[turbulence]
n_modes = 8
[particles]
nside = 1
[integration]
t_max = 2.0
n_snapshots = 3
[ensemble]
realisations = 1
"""

# (config text or None, extra arguments, expected fragment of the message)
CONFIG_CASES = [
    ("[particles]\nnside = 12\n", "[particles] nside = 12: must be a power of 2"),
    ("[particles]\nnside = 8.5\n", "[particles] nside = 8.5: must be an integer"),
    ("[particles]\nnside = '8'\n", "[particles] nside = '8': must be an integer"),
    ("[particles]\nrl = -0.1\n", "[particles] rl = -0.1: must be > 0"),
    ("[particles]\nrl = 'small'\n", "[particles] rl = 'small': must be a number"),
    ("[particles]\ncharge = 0\n", "[particles] charge = 0: must be a non-zero integer"),
    ("[particles]\nenergy_tev = 10.0\n", "b0_microgauss, lc_pc missing"),
    ("[particles]\nrl = 0.1\nenergy_tev = 1.0\nb0_microgauss = 1.0\nlc_pc = 1.0\n", "either rl or"),
    ("[turbulence]\nn_modes = 0\n", "[turbulence] n_modes = 0: must be >= 1"),
    ("[turbulence]\nn_modes = true\n", "[turbulence] n_modes = True: must be an integer"),
    ("[turbulence]\nlambda_min = 0\n", "[turbulence] lambda_min = 0.0: must be > 0"),
    ("[turbulence]\nlambda_min = 2.0\nlambda_max = 1.0\n", "[turbulence] lambda_max = 1.0: must be > lambda_min"),
    ("[turbulence]\nsigma2 = -0.5\n", "[turbulence] sigma2 = -0.5: must be in [0, 10000]"),
    ("[turbulence]\ngeometry = 'helical'\n", "[turbulence] geometry = 'helical': must be one of"),
    ("[turbulence]\ngeometry = 'composite'\nslab_fraction = -0.1\n", "[turbulence] slab_fraction = -0.1: must be in [0, 1]"),
    ("[turbulence]\ngamma = nan\n", "[turbulence] gamma = nan: must be a finite number"),
    ("[integration]\ndt = 0\n", "[integration] dt = 0.0: must be > 0"),
    ("[integration]\nt_max = -5\n", "[integration] t_max = -5.0: must be > 0"),
    ("[integration]\nn_snapshots = 0\n", "[integration] n_snapshots = 0: must be >= 1"),
    ("[ensemble]\nrealisations = 0\n", "[ensemble] realisations = 0: must be >= 1"),
    ("[ensemble]\nseed = -1\n", "[ensemble] seed = -1: must be an integer in"),
    ("[output]\nprecision = 'half'\n", "[output] precision = 'half': must be one of"),
    ("[particles]\nnsid = 8\n", "unknown key [particles] nsid"),
    ("[ensemble]\nrealisations = 1\n[runs]\nn = 1\n", "unknown section [runs]"),
    ("particles = 3\n", "particles in"),
    ("[particles]\nnside = = 8\n", "malformed TOML"),
    ("[particles\nnside = 8\n", "line 1"),
    ("[particles]\ncharge = 0\nenergy_tev = 10.0\nb0_microgauss = 3.0\nlc_pc = 30.0\n",
     "[particles] charge = 0: must be a non-zero integer"),
    ("[particles]\ncharge = 'two'\nenergy_tev = 10.0\nb0_microgauss = 3.0\nlc_pc = 30.0\n",
     "[particles] charge = 'two': must be an integer"),
    ("[particles]\nenergy_tev = 'big'\nb0_microgauss = 3.0\nlc_pc = 30.0\n",
     "[particles] energy_tev = 'big': must be a number"),
    ("[particles]\nenergy_tev = -1.0\nb0_microgauss = 3.0\nlc_pc = 30.0\n",
     "[particles] energy_tev = -1.0: must be a finite number > 0 (in TeV)"),
    ("[particles]\nenergy_tev = 10.0\nb0_microgauss = nan\nlc_pc = 30.0\n",
     "[particles] b0_microgauss = nan: must be a finite number"),
    ("[particles]\nenergy_tev = 10.0\nb0_microgauss = 3.0\nlc_pc = inf\n", "[particles] lc_pc = inf: must be a finite number"),
    ("[turbulence]\nsigma2 = 1e300\n", "[turbulence] sigma2 = 1e+300: must be in [0, 10000]"),
    ("[turbulence]\nslab_fraction = 0.5\n", "[turbulence] slab_fraction = 0.5: used only by geometry = 'composite'"),
    ("[integration]\nt_max = 1e30\ndt = 1e-10\nt_min = 1e-9\n", "t_max / dt = 1e+30 / 1e-10 = 1e+40 steps"),
    ("[integration]\nt_min = 0.5\nt_max = 1.0\nn_snapshots = 10\n", "[integration] n_snapshots = 10: must be <= 6"),
    ("[integration]\nt_max = 1.05\n", "[integration] t_max = 1.05: must be a whole number of steps"),
    ("[turbulence]\nn_modes = 1000000000000\n", "run too large for this machine: about 146 TiB of memory to run"),
    ("[ensemble]\nrealisations = 1000000000000\n", "run too large for this machine"),
    ("[particles]\nnside = 8192\n", "run too large for this machine"),
    ("[particles]\nrl = 0.001\n",
     "[turbulence] lambda_min = 0.01 is larger than the gyration scale 2 pi r_L = 0.006283 L_c"),
    ("[particles]\nrl = 0.01\n", "[turbulence] lambda_min = 0.01 resolves the resonant wavelengths"),
    ("[particles]\nrl = 20.0\n", "[turbulence] lambda_max = 100.0: the gyration scale 2 pi r_L = 125.7 L_c"),
    ("[turbulence]\nallow_unresolved = 1\n", "[turbulence] allow_unresolved = 1: must be true or false"),
]


@pytest.mark.parametrize("toml, message", CONFIG_CASES)
def test_bad_config(tmp_path, capsys, toml, message):
    (tmp_path / "c.toml").write_text(toml)
    code = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _good_run(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(GOOD)
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu",
                 "--quiet"]) == 0
    capsys.readouterr()


def _cases(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    (tmp_path / "other.toml").write_text(GOOD.replace("n_modes = 8", "n_modes = 9"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    run = str(tmp_path / "run")
    (tmp_path / "observed.csv").write_text("ell,C_ell,error\n1,1e-6,-2e-7\n")
    (tmp_path / "no_columns.csv").write_text("l,power\n1,2\n")
    return [
        (["plot", run, "--observed", str(tmp_path / "observed.csv")], "observed spectrum"),
        (["plot", run, "--observed", str(tmp_path / "no_columns.csv")], "observed spectrum"),
        (["plot", run, "--observed", str(tmp_path / "absent.csv")], "observed spectrum"),
        (["run", "--out", str(blocker / "run"), "--backend", "cpu"], "cannot write run directory"),
        (["run", "--out", str(blocker), "--backend", "cpu"], "is not a directory"),
        (["run", str(tmp_path / "other.toml"), "--out", run, "--backend", "cpu"], "different configuration"),
        (["run", "--out", str(tmp_path / "notes"), "--backend", "cpu"], "not a crsky run directory"),
        (["run", str(tmp_path / "missing.toml"), "--out", run], "does not exist"),
        (["run", "--out", run, "--workers", "-2"], "must be >= 1"),
        (["run", "--out", run, "--backend", "tpu"], "invalid choice"),
        (["analyze", str(tmp_path / "nowhere")], "does not exist"),
        (["analyze", str(tmp_path / "notes")], "not a crsky run directory"),
        (["plot", str(tmp_path / "nowhere")], "does not exist"),
        (["bgk", "--p", "1.0", "--lmax", "5"], "p must be in the open interval (0, 1)"),
        (["bgk", "--p", "0.5", "--lmax", "0"], "lmax must be an integer"),
        (["bgk", "--p", "half", "--lmax", "5"], "invalid float value"),
        (["bgk", "--lmax", "5"], "--p"),
    ]


def test_bad_command_lines(tmp_path, capsys):
    _good_run(tmp_path, capsys)
    cases = _cases(tmp_path)
    for args, message in cases:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert message in err, (args, err)
        # one error line; a run may print its physics warnings before it finds the directory taken
        errors = [line for line in err.strip().splitlines() if not line.startswith("crsky run: warning:")]
        assert len(errors) == 1 and "Traceback" not in err, (args, err)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / "run" / "figures").exists()  # a bad observed file stops plot before any output
    assert len(CONFIG_CASES) + len(cases) >= 25


@pytest.mark.parametrize("data, message", [
    (b"[particles]\n# \xff\xfe\nnside = 4\n", "is not UTF-8 text: byte 0xff on line 2"),
    ("[particles]\nnside = 4\n".encode("utf-16"), "is not UTF-8 text"),
    (b"x" * (2 << 20), "larger than 1024 KiB"),
])
def test_bad_config_bytes(tmp_path, capsys, data, message):
    (tmp_path / "c.toml").write_bytes(data)
    code = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, message", [("/dev/zero", "larger than 1024 KiB"),
                                             (".", "is a directory, not a TOML file")])
def test_config_that_is_not_a_file(tmp_path, capsys, config, message):
    code = main(["run", config, "--out", str(tmp_path / "run"), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_refused_size_leaves_nothing_so_the_corrected_config_runs(tmp_path, capsys):
    """A config refused for its size creates no run directory, so the corrected one
    is not refused as a 'different configuration' afterwards."""
    (tmp_path / "c.toml").write_text(GOOD.replace("nside = 1", "nside = 8192"))
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu"]) == 2
    assert "run too large" in capsys.readouterr().err and not (tmp_path / "run").exists()
    _good_run(tmp_path, capsys)


def test_disk_too_small_is_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    """The free space of the file system is the system's; here it is made 1 MiB to
    refuse the quick preset (32 realisations of nside 16, 109 MiB) on any machine."""
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    code = main(["run", "--out", str(tmp_path / "run"), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "run too large for the disk: about 109 MiB more needed" in err and "1 MiB free" in err
    assert not (tmp_path / "run").exists()


def test_memory_too_small_is_refused(tmp_path, capsys, monkeypatch):
    import crsky.config

    monkeypatch.setattr(crsky.config, "physical_memory", lambda: 100 * 2**20)
    code = main(["run", "--out", str(tmp_path / "run"), "--backend", "cpu", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "memory to run, 100 MiB available" in err and "fewer --workers (2 processes x" in err


def test_non_finite_result_stops_the_run(tmp_path, capsys):
    """An overflow to NaN (r_L = 1e306 L_c) is exit 1 naming the realisation, and the
    realisation is not recorded as complete."""
    import json

    overflow = GOOD.replace("nside = 1", "nside = 1\nrl = 1e306").replace("n_modes = 8", "n_modes = 8\nallow_unresolved = true").replace("n_snapshots = 3", "n_snapshots = 3\nprecision = 'float64'")
    (tmp_path / "c.toml").write_text(overflow)
    code = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    err = "\n".join(line for line in err.splitlines() if not line.startswith("crsky run: warning:"))
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "realisation 0:" in err and "non-finite positions or momenta" in err and "rl = 1e+306" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["realisations"] == {}
    assert list((tmp_path / "run" / "realisations").glob("*.nc")) == []
