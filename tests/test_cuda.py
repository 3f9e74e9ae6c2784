"""The CUDA backend, run in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

The simulator must be switched on before numba.cuda is first imported, so these
checks run in a child process; the rest of the suite stays on the real CPU backend.
Tolerance: the simulator executes the same scalar kernels in Python double precision,
the CPU backend in LLVM-compiled double precision; over a few steps the two agree to
rounding (1e-13 leaves room for a few ulps amplified by a few steps).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba.cuda")


def run_simulated(code: str) -> dict:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cuda_kernels_match_the_cpu_backend():
    out = run_simulated("""
        import json, numpy as np
        from crsky.backends import cpu, cuda as cb
        from crsky.config import TurbulenceConfig
        from crsky.turbulence import make_modes
        rng = np.random.default_rng(0)
        errors = {}
        # 16 modes: the shared-memory kernel; 600 modes: the global-memory kernel.
        for n_modes in (16, 600):
            modes = np.stack([make_modes(TurbulenceConfig(n_modes=n_modes), 0, j) for j in range(3)])
            pos = rng.uniform(-20, 20, size=(3, 5, 3))
            vel = rng.normal(size=(3, 5, 3)); vel /= np.linalg.norm(vel, axis=-1)[..., None]
            steps = np.array([1, 2, 4])
            gp, gv = cb.trace_many(pos, vel, modes, -1.0, 0.05, 0.1, steps)
            err = 0.0
            for r in range(3):
                cp, cv = cpu.trace(pos[r], vel[r], modes[r], -1.0, 0.05, 0.1, steps)
                err = max(err, np.abs(cp - gp[r]).max(), np.abs(cv - gv[r]).max())
            errors[n_modes] = err
        print(json.dumps({"errors": errors}))
    """)
    for n_modes, err in out["errors"].items():
        assert err < 1e-13, (n_modes, err)


def test_cuda_run_equals_cpu_run(tmp_path):
    out = run_simulated(f"""
        import json, numpy as np
        from crsky.config import resolve_config
        from crsky.ensemble import run_ensemble
        from crsky.backends import resolve_backend
        cfg = resolve_config({{"turbulence": {{"n_modes": 8}}, "particles": {{"nside": 1}},
                               "integration": {{"t_max": 0.3, "n_snapshots": 2, "dt": 0.1}},
                               "ensemble": {{"realisations": 3}}}})
        g = run_ensemble(cfg, r"{tmp_path}/gpu", backend="cuda", progress=False)
        c = run_ensemble(cfg, r"{tmp_path}/cpu", backend="cpu", progress=False)
        err = max(float(np.abs(g.read_realisation(j)["x"].values - c.read_realisation(j)["x"].values).max())
                  for j in range(3))
        rec = g.manifest()["realisations"]["0"]["backend"]
        print(json.dumps({{"err": err, "backend": rec, "auto": resolve_backend("auto")}}))
    """)
    assert out["err"] < 1e-13
    assert out["backend"] == "cuda"
    assert out["auto"] == "cpu"  # auto never picks the simulator
