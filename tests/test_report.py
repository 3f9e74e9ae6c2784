"""The report of an analysis: partial ensembles, the analysis.nc / summary.json pair, permissions.

Runs are written through the store with Brownian stand-in trajectories (no kernels: the
report does not depend on the physics), analysed through the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import healpy as hp
import numpy as np
import pytest

from crsky import analysis as an
from crsky.cli import main
from crsky.config import resolve_config
from crsky.store import RunStore, realisation_dataset


def _run(path, done: int, expected: int = 12, nside: int = 2, seed: int = 3):
    """A run configured for ``expected`` realisations of which ``done`` are complete."""
    t_omega = (10.0, 100.0)
    cfg = resolve_config({
        "particles": {"nside": nside, "rl": 0.1},
        "integration": {"t_max": t_omega[-1], "n_snapshots": len(t_omega), "dt": 0.05},
        "ensemble": {"realisations": expected, "seed": seed},
    })
    store = RunStore.open(path, cfg)
    rng = np.random.default_rng(seed)
    npix = hp.nside2npix(nside)
    T = np.asarray(t_omega) * cfg.particles.rl
    for r in range(done):
        x = np.sqrt(2.0 * T)[:, None, None] * rng.standard_normal((len(T), npix, 3))
        p = rng.standard_normal((len(T), npix, 3))
        p /= np.linalg.norm(p, axis=-1, keepdims=True)
        store.record(r, store.write_realisation(realisation_dataset(cfg, r, t_omega, x, p), r))
    return path


def test_partial_ensemble_is_refused(tmp_path, capsys):
    run = _run(tmp_path / "run", done=6)
    assert main(["analyze", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "6 of 12 realisations complete" in err and "`crsky run`" in err and "--partial" in err
    assert not (run / an.ANALYSIS_FILE).exists() and not (run / an.SUMMARY_FILE).exists()


def test_partial_ensemble_with_flag_says_so_everywhere(tmp_path, capsys):
    run = _run(tmp_path / "run", done=6)
    assert main(["analyze", str(run), "--partial"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("PARTIAL ENSEMBLE: 6 of 12 realisations")
    summary = json.loads((run / an.SUMMARY_FILE).read_text())
    assert (summary["n_realisations_used"], summary["n_realisations_expected"], summary["complete"]) == (6, 12, False)
    ds = an.load_analysis(run)
    assert (ds.attrs["n_realisations_used"], ds.attrs["n_realisations_expected"], ds.attrs["complete"]) == (6, 12, 0)
    assert ds.sizes["realisation"] == 6
    assert summary["analysis_id"] == ds.attrs["analysis_id"]


def test_complete_ensemble_says_complete(tmp_path, capsys):
    run = _run(tmp_path / "run", done=3, expected=3)
    assert main(["analyze", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Ensemble: 3 of 3 realisations (complete)"
    summary = json.loads((run / an.SUMMARY_FILE).read_text())
    assert summary["complete"] is True and an.load_analysis(run).attrs["complete"] == 1


def test_every_analysis_has_its_own_id(tmp_path):
    run = _run(tmp_path / "run", done=3, expected=3)
    first, _ = an.analyze(run)
    second, summary = an.analyze(run)
    assert first.attrs["analysis_id"] != second.attrs["analysis_id"] == summary["analysis_id"]
    assert len(second.attrs["analysis_id"]) == 32  # uuid4 hex


def test_kill_between_the_two_writes_leaves_a_detectable_pair(tmp_path, capsys):
    """A process killed (SIGKILL) after writing analysis.nc and before summary.json leaves
    the summary of the previous analysis; the report notices the mismatched
    analysis_id and remakes the summary from analysis.nc, and plot says so."""
    run = _run(tmp_path / "run", done=3, expected=3)
    _, old = an.analyze(run)
    code = ("import os, signal, sys\n"
            "from crsky.analysis import analyze_run, write_analysis\n"
            "ds = analyze_run(sys.argv[1])\n"
            "write_analysis(ds, os.path.join(sys.argv[1], 'analysis.nc'))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    ds = an.load_analysis(run)
    stale = json.loads((run / an.SUMMARY_FILE).read_text())
    assert stale["analysis_id"] == old["analysis_id"] != ds.attrs["analysis_id"]

    summary, regenerated = an.read_summary(run)
    assert regenerated and summary == an.summary_dict(ds)
    assert json.loads((run / an.SUMMARY_FILE).read_text()) == summary  # repaired on disk
    assert an.read_summary(run) == (summary, False)  # a good pair is used as it is


def test_plot_repairs_a_missing_summary(tmp_path, capsys):
    run = _run(tmp_path / "run", done=3, expected=3)
    ds, _ = an.analyze(run)
    (run / an.SUMMARY_FILE).unlink()
    assert main(["plot", str(run), "--format", "png"]) == 0
    err = capsys.readouterr().err
    assert "remade it from analysis.nc" in err
    assert json.loads((run / an.SUMMARY_FILE).read_text())["analysis_id"] == ds.attrs["analysis_id"]


@pytest.mark.parametrize("umask", [0o027])  # 0640: neither mkstemp's 0600 nor the usual 0644
def test_outputs_get_the_umask_permissions(tmp_path, umask):
    run = _run(tmp_path / "run", done=2, expected=2)
    code = f"import os, sys\nos.umask({umask})\nfrom crsky.cli import main\nsys.exit(main(['analyze', sys.argv[1]]))\n"
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in (an.ANALYSIS_FILE, an.SUMMARY_FILE):
        assert os.stat(run / name).st_mode & 0o777 == 0o666 & ~umask, name
