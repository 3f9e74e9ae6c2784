"""Backend selection, the CPU vector-width switch, the CPU variants' contract and
numba's cache (crsky.backends)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as ll
import numpy as np
import pytest
from contract import BackendContract

import crsky
from crsky.backends import VECTOR_BITS_ENV, configure_cpu_vectors, get_backend, wide_vector_features
from crsky.errors import InputError

AVX512 = "+64bit,+avx,+avx2,+avx512f,+fma"
AVX2 = "+64bit,+avx,+avx2,-avx512f,+fma"


def test_wide_vectors_only_on_avx512():
    assert wide_vector_features(AVX512, {}) == AVX512 + ",-prefer-256-bit"
    assert wide_vector_features(AVX2, {}) is None
    assert wide_vector_features(AVX2, {VECTOR_BITS_ENV: "512"}) is None  # nothing to widen


def test_user_settings_win():
    assert wide_vector_features(AVX512, {VECTOR_BITS_ENV: "256"}) is None
    assert wide_vector_features(AVX512, {"NUMBA_CPU_FEATURES": "+avx2"}) is None
    assert wide_vector_features(AVX512, {"NUMBA_CPU_NAME": "haswell"}) is None
    assert wide_vector_features(AVX512, {VECTOR_BITS_ENV: " 512 "}) is not None


def test_bad_vector_bits_names_the_variable():
    with pytest.raises(InputError, match=VECTOR_BITS_ENV):
        wide_vector_features(AVX512, {VECTOR_BITS_ENV: "1024"})


def test_after_numba_import_nothing_changes():
    import numba  # noqa: F401 - the condition under test

    env = {}
    assert "already imported" in configure_cpu_vectors(env)
    assert env == {}


def test_command_line_process_gets_wide_vectors():
    # A fresh process, as the console script runs: main() configures before numba loads.
    code = (
        "import sys; from crsky.cli import main; main(['bgk', '--p', '0.5', '--lmax', '3']);"
        "import numba; print('FEATURES=' + str(numba.config.CPU_FEATURES))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", VECTOR_BITS_ENV)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    line = [x for x in out.stdout.splitlines() if x.startswith("FEATURES=")][0]
    if "+avx512f" in ll.get_host_cpu_features().flatten().split(","):
        assert line.endswith(",-prefer-256-bit")
    else:
        assert line == "FEATURES=None"


# --------------------------------------------------------------------------------------
# The CPU backend's variants keep the backend contract (tests/contract.py).
# --------------------------------------------------------------------------------------


class TestCpuFloat64(BackendContract):
    backend = "cpu"
    precision = "float64"


class TestCpuMixed(BackendContract):
    backend = "cpu"
    precision = "mixed"


def test_get_backend_checks_its_options():
    with pytest.raises(ValueError, match="precision = 'half'"):
        get_backend("cpu", "half")
    with pytest.raises(ValueError, match="threads = 0"):
        get_backend("cpu", "float64", threads=0)
    with pytest.raises(ValueError, match="refresh = 0"):
        get_backend("cpu", "mixed", refresh=0)
    with pytest.raises(InputError, match="backend = 'gpu'"):
        get_backend("gpu")
    backend = get_backend("cpu", "mixed", threads=1)
    assert (backend.name, backend.precision, backend.threads) == ("cpu", "mixed", 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        backend.trace(np.zeros((1, 3)), [[1.0, 0, 0]], np.zeros((7, 1)), sign=1.0, dt=0.1, rl=0.1,
                      snapshot_steps=[5, 5])
    with pytest.raises(ValueError, match="modes must have shape"):
        backend.trace_many(np.zeros((2, 1, 3)), np.zeros((2, 1, 3)), np.zeros((1, 7, 4)), sign=1.0, dt=0.1,
                           rl=0.1, snapshot_steps=[1])


CACHE_PROBE = """
import json, sys
import numpy as np
from crsky.backends import cpu_float64, get_backend
from crsky.config import TurbulenceConfig
from crsky.turbulence import make_modes
modes = make_modes(TurbulenceConfig(n_modes=4, sigma2=0.0), 0, 0)
x, v = get_backend("cpu", "float64", threads=1).trace(
    np.zeros((1, 3)), [[1.0, 0.0, 0.0]], modes, sign=1.0, dt=0.1, rl=1.0, snapshot_steps=[10])
stats = cpu_float64.trace_chunk.stats
print(json.dumps({"v": v[-1, 0].tolist(), "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


def test_editing_a_kernel_invalidates_numbas_cache(tmp_path):
    # A copy of the package in its own folder (so its __pycache__ is its own):
    # compile (cache written), load (cache read), then edit the regular field in
    # kernels.field_at, a function that is compiled into cpu_float64's loop but lives
    # in another file: the next process must recompile and see the edit.
    package = Path(crsky.__file__).parent
    shutil.copytree(package, tmp_path / "crsky", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(tmp_path)

    def probe():
        out = subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = probe(), probe()
    assert (first["misses"], second["hits"], second["misses"]) == (1, 1, 0)
    assert first["v"] == second["v"]
    # In b = z_hat a particle with v = x_hat turns by 10 dtau = 1 rad: v = (cos 1, -sin 1, 0).
    np.testing.assert_allclose(first["v"], [np.cos(1.0), -np.sin(1.0), 0.0], atol=1e-14)
    source = tmp_path / "crsky" / "kernels.py"
    text = source.read_text()
    assert text.count("    bz = 1.0\n    for n in range(modes.shape[1]):") == 1
    source.write_text(text.replace("    bz = 1.0\n    for n in range(modes.shape[1]):",
                                   "    bz = 2.0\n    for n in range(modes.shape[1]):"))
    edited = probe()
    assert (edited["hits"], edited["misses"]) == (0, 1)
    np.testing.assert_allclose(edited["v"], [np.cos(2.0), -np.sin(2.0), 0.0], atol=1e-14)  # |b| = 2


@pytest.mark.parametrize("simulator", [False, True], ids=["no-gpu", "numba-simulator"])
@pytest.mark.parametrize("command", [["bench"], ["run", "--quiet"]])
def test_cuda_without_the_cuda_extra_is_one_line_exit_2(tmp_path, simulator, command):
    # A real process in which numba-cuda (the cuda extra) cannot be found, as after a
    # plain `pip install crsky`: numba.cuda is then numba's own CUDA target, whose
    # simulator used to fail inside the kernel with a TypeError. `-W ignore` silences
    # the warning of numba-cuda's import redirector, which is installed here but absent
    # from an install without the extra.
    code = ("import sys; sys.modules['numba_cuda'] = None\n"
            "from crsky.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    args = command + ["--backend", "cuda"] + (["--out", str(tmp_path / "run")] if command[0] == "run" else [])
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *args], capture_output=True, text=True,
                         env=env, timeout=300)
    errors = [line for line in out.stderr.splitlines() if "warning:" not in line]  # physics warnings of `run`
    assert out.returncode == 2, out.stderr
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "pip install 'crsky[cuda]'" in errors[0] and "--backend cpu" in errors[0]
    assert out.stdout == "" and not (tmp_path / "run").exists()
