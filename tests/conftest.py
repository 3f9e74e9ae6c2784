import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def same_build_env():
    """Environment for a ``crsky`` subprocess that compiles the kernels for the vector
    width this test process uses, so that its results compare bitwise with ours (the
    command asks for 512-bit vectors on AVX-512 CPUs; a library process gets numba's
    default unless NUMBA_CPU_FEATURES is set)."""
    import os

    import numba

    env = dict(os.environ)
    if numba.config.CPU_FEATURES is None:
        env["CRSKY_VECTOR_BITS"] = "256"
    else:
        env["NUMBA_CPU_FEATURES"] = numba.config.CPU_FEATURES
    return env


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory):
    """A tiny real run (3 realisations, nside 4, 8 modes, t Omega to 20) with its analysis."""
    from crsky.analysis import analyze
    from crsky.config import resolve_config
    from crsky.ensemble import run_ensemble

    tmp = tmp_path_factory.mktemp("analysed")
    cfg = resolve_config({"turbulence": {"n_modes": 8}, "particles": {"nside": 4},
                          "integration": {"t_max": 20.0, "n_snapshots": 4, "dt": 0.05},
                          "ensemble": {"realisations": 3}})
    run_ensemble(cfg, tmp / "run", backend="cpu", progress=False)
    analyze(tmp / "run")
    return tmp / "run"
