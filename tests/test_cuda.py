"""The CUDA backend: its variants' contract (tests/contract.py) and its launch layout.

These tests need a usable GPU or numba's CUDA simulator, which must be switched on
before numba.cuda is first imported. The default run (no GPU) runs them in a child
pytest with ``NUMBA_ENABLE_CUDASIM=1`` (:func:`test_cuda_suite_in_the_simulator`);
``NUMBA_ENABLE_CUDASIM=1 pytest tests/test_cuda.py`` runs them directly. The
simulator executes every GPU thread as Python, so the sizes are tiny.
"""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from contract import EPS_B, BackendContract, unit_vectors

pytest.importorskip("numba.cuda")

from crsky import bench  # noqa: E402
from crsky import kernels  # noqa: E402
from crsky.backends import cuda_available, cuda_simulated, get_backend, resolve_backend  # noqa: E402
from crsky.config import TurbulenceConfig, resolve_config  # noqa: E402
from crsky.ensemble import run_ensemble  # noqa: E402
from crsky.turbulence import make_modes  # noqa: E402

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a GPU or NUMBA_ENABLE_CUDASIM=1")


@pytest.mark.skipif(cuda_simulated(), reason="this is the launcher of the simulated run")
def test_cuda_suite_in_the_simulator():
    # The tests below, in a child pytest with the simulator on: what a CPU-only CI
    # machine can check of the CUDA backend (pytest-cov follows the child process).
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "not test_cuda_suite_in_the_simulator and not compiles_for_a_real_gpu"],
        env=env, capture_output=True, text=True, timeout=900, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


@pytest.mark.skipif(cuda_simulated(), reason="the simulator compiles nothing")
@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_trace_kernel_compiles_for_a_real_gpu(monkeypatch, precision):
    # Typing and lowering of the trace kernel for a real GPU target (sm_90), which the
    # simulator cannot check: 16-byte aligned shared arrays; for the mixed path the
    # float64 -> float32 rounding of the reduced phase. Without a GPU the dispatcher
    # cannot ask the driver for the compute capability; it is told 9.0 instead.
    from types import SimpleNamespace

    from numba import cuda, types
    from numba.cuda import dispatcher
    from numba.cuda.compiler import compile_cuda

    from crsky.backends import cuda as cb

    if not cuda.is_available():
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: SimpleNamespace(compute_capability=(9, 0)))
    kernel = cb.trace_kernel(precision, 256)
    f64_3, f32_3, out = types.float64[:, :, ::1], types.float32[:, :, ::1], types.float64[:, :, :, ::1]
    sig = (f64_3, f64_3, f64_3, f32_3, types.float64, types.float64, types.float64, types.int64[::1],
           types.int64, out, out)
    ir = compile_cuda(kernel.py_func, types.void, sig, cc=(9, 0)).library.get_llvm_str()
    smem = [line for line in ir.splitlines() if "addrspace(3) global" in line]
    assert len(smem) == 2 and all("align 16" in line for line in smem), smem
    assert ("fptrunc double" in ir) == (precision == "mixed")


class CudaSizes(BackendContract):
    backend = "cuda"
    helix_steps = 300
    long_steps = 400
    n_modes = 20  # one float32 block of 16 and a partial one of 4
    n_particles = 3
    reverse_steps = 100


@needs_cuda
class TestCudaFloat64(CudaSizes):
    precision = "float64"


@needs_cuda
class TestCudaMixed(CudaSizes):
    precision = "mixed"


@needs_cuda
@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_modes_in_global_memory_give_the_shared_memory_result(precision, monkeypatch):
    # More modes than SHARED_MODES_MAX: the kernel reads them from global memory.
    # Each particle's arithmetic is the same: bitwise equal.
    from crsky.backends import cuda as cb

    modes = np.stack([make_modes(TurbulenceConfig(n_modes=20), 5, j) for j in range(2)])
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-50, 50, size=(2, 3, 3))
    v0 = unit_vectors(rng, 6).reshape(2, 3, 3)
    tracer = get_backend("cuda", precision)
    shared = tracer.trace_many(x0, v0, modes, sign=-1.0, dt=0.05, rl=0.1, snapshot_steps=[1, 5])
    monkeypatch.setattr(cb, "SHARED_MODES_MAX", 16)
    glob = tracer.trace_many(x0, v0, modes, sign=-1.0, dt=0.05, rl=0.1, snapshot_steps=[1, 5])
    np.testing.assert_array_equal(shared[0], glob[0])
    np.testing.assert_array_equal(shared[1], glob[1])


@needs_cuda
def test_mixed_kernel_equals_its_scalar_step_compiled_for_the_cpu():
    # The simulator runs kernels.push_turns as Python (no FMA), like a plain numba
    # compilation for the CPU: equal to rounding (measured: bitwise).
    from crsky.backends.cuda import mode_arrays_aos

    push = numba.njit(kernels.push_turns)
    modes = make_modes(TurbulenceConfig(n_modes=20), 5, 1)
    turns, amps = mode_arrays_aos(modes)
    rng = np.random.default_rng(2)
    x0 = rng.uniform(-300, 300, size=(3, 3))
    v0 = unit_vectors(rng, 3)
    x, v = get_backend("cuda", "mixed").trace(x0, v0, modes, sign=-1.0, dt=0.05, rl=0.1, snapshot_steps=[7])
    for i in range(3):
        s = (*x0[i], *v0[i])
        for _ in range(7):
            s = push(*s, turns, amps, -1.0, 0.05, 0.1)
        np.testing.assert_allclose(s, np.r_[x[0, i], v[0, i]], rtol=0, atol=1e-13)


@needs_cuda
def test_cuda_mixed_run_end_to_end(tmp_path):
    # A run with [integration] precision = "mixed" on the cuda backend (two realisations
    # in one launch) against the float64 CPU run: 3 steps of dt = 0.1 with r_L = 0.1;
    # by the bound of BackendContract.test_agrees_with_the_cpu_float64_path,
    # |dx| <= r_L dt^2 EPS_B * 3 * 4 / 2 = 6e-9.
    over = {"turbulence": {"n_modes": 8}, "particles": {"nside": 1},
            "integration": {"t_max": 0.3, "n_snapshots": 2, "dt": 0.1, "precision": "mixed"},
            "ensemble": {"realisations": 2}}
    run = run_ensemble(resolve_config(over), tmp_path / "gpu", backend="cuda", progress=False)
    over["integration"]["precision"] = "float64"
    ref = run_ensemble(resolve_config(over), tmp_path / "cpu", backend="cpu", progress=False)
    err = max(float(np.abs(run.read_realisation(j)["x"].values - ref.read_realisation(j)["x"].values).max())
              for j in range(2))
    assert err <= 0.1 * 0.1**2 * EPS_B * 6
    assert run.manifest()["realisations"]["0"]["backend"] == "cuda"
    if cuda_simulated():
        assert resolve_backend("auto") == "cpu"  # auto never picks the simulator


@needs_cuda
def test_bench_measures_both_precisions_on_cuda():
    cases = bench.run_benchmarks(backend="cuda", quick=True, progress=False, mode_counts=(8,),
                                 particle_counts=(4,), work={"float64": 2000, "mixed": 2000})
    assert [(r["backend"], r["dtype"], r["mode_evals_per_s"] > 0) for r in cases] == [
        ("cuda", "float64", True), ("cuda", "mixed", True)]
    if cuda_simulated():
        assert {r["device"] for r in cases} == {"numba CUDA simulator"}
    assert bench.precisions_of("cuda") == ("float64", "mixed")
