"""The CUDA backend, run in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

The simulator must be switched on before numba.cuda is first imported, so these
checks run in a child process; the rest of the suite stays on the real CPU backend.
Tolerance: the simulator executes the same scalar kernels in Python double precision,
the CPU backend in LLVM-compiled double precision; over a few steps the two agree to
rounding (1e-13 leaves room for a few ulps amplified by a few steps).

The mixed path (``precision="mixed"``) is checked on tiny sizes (the simulator runs
every GPU thread as a Python thread): against the CPU float64 path with a tolerance
derived from the required field accuracy, against the same scalar kernel compiled for
the CPU (to rounding), for |v| = 1, and for independence from the launch layout.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
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
        # float64 on both backends (the presets may default to "mixed", whose CPU and GPU
        # algorithms differ; that pairing is test_cuda_mixed_end_to_end's)
        cfg = resolve_config({{"turbulence": {{"n_modes": 8}}, "particles": {{"nside": 1}},
                               "integration": {{"t_max": 0.3, "n_snapshots": 2, "dt": 0.1,
                                               "precision": "float64"}},
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


# Mixed path against the float64 CPU path. Requirement: field error |db| <= EPS_B =
# 1e-6 of the rms field. One step rotates v by dtau |b| about b, so a field error
# changes v by at most ~dtau |db|, and the position (two half drifts of r_L dtau / 2)
# by r_L dtau / 2 times that. Over m steps, with the errors accumulating linearly (no
# chaotic growth over t Omega = m dtau <= 2):
#     |dv| <= m dtau EPS_B,        |dx| <= r_L dtau^2 EPS_B m (m + 1) / 2.
# Measured (CPU-compiled kernel, 24000 particles out to |x| = 500 L_c, 40 and 256
# modes, steps 1 / 10 / 40): |dv| max 1.3e-8 / 5.2e-8 / 2.8e-7 and |dx| max
# 3.3e-11 / 1.7e-9 / 2.4e-8, 4-10x below these bounds. A float32 phase without the
# float64 reduction (field error 2e-3 at |x| <= 500) would fail them by orders of
# magnitude; the field accuracy itself is tested in tests/test_fast_kernels.py.
EPS_B = 1e-6
DTAU, RL = 0.05, 0.1
STEPS = (1, 10, 40)


def _mixed_bounds():
    m = np.array(STEPS, dtype=float)
    return m * DTAU * EPS_B, RL * DTAU**2 * EPS_B * m * (m + 1) / 2


def test_cuda_mixed_path_in_the_simulator():
    out = run_simulated(f"""
        import json, numba, numpy as np
        from crsky import kernels
        from crsky.backends import cpu, cuda as cb
        from crsky.config import TurbulenceConfig
        from crsky.turbulence import make_modes
        rng = np.random.default_rng(11)
        R, n, N = 2, 11, 40  # 40 modes: two float32 blocks of 16 and a partial one of 8
        steps = np.array({list(STEPS)})
        modes = np.stack([make_modes(TurbulenceConfig(n_modes=N), 5, j) for j in range(R)])
        # Start out to |x| = 500 L_c: phases up to 3e5 rad, where float32 phases fail.
        pos = rng.normal(size=(R, n, 3))
        pos *= (500 * rng.uniform(0.2, 1, (R, n)) / np.linalg.norm(pos, axis=-1))[..., None]
        vel = rng.normal(size=(R, n, 3)); vel /= np.linalg.norm(vel, axis=-1)[..., None]
        gp, gv = cb.trace_many(pos, vel, modes, -1.0, {DTAU}, {RL}, steps, precision="mixed")

        # the same scalar kernel compiled for the CPU, stepped in a plain loop
        push = kernels.compile_kernels(numba.njit).push_turns
        dx = np.zeros((len(steps),)); dv = np.zeros((len(steps),)); same = 0.0
        for r in range(R):
            cp, cv = cpu.trace(pos[r], vel[r], modes[r], -1.0, {DTAU}, {RL}, steps)
            dx = np.maximum(dx, np.abs(gp[r] - cp).max(axis=(1, 2)))
            dv = np.maximum(dv, np.abs(gv[r] - cv).max(axis=(1, 2)))
            turns, amps = kernels.turns_mode_arrays(modes[r])
            for i in range(n):
                s = (*pos[r, i], *vel[r, i])
                done = 0
                for j, m in enumerate(steps):
                    while done < m:
                        s = push(*s, turns, amps, -1.0, {DTAU}, {RL})
                        done += 1
                    same = max(same, float(np.abs(np.array(s) - np.r_[gp[r, j, i], gv[r, j, i]]).max()))

        # one realisation per launch, and the global-memory kernel (modes not in shared memory)
        alone = max(float(np.abs(np.stack(cb.trace(pos[r], vel[r], modes[r], -1.0, {DTAU}, {RL}, steps,
                                                   precision="mixed")) - np.stack([gp[r], gv[r]])).max())
                    for r in range(R))
        # two particles per thread (an odd particle count: the last one traced twice)
        g2 = cb.trace_many(pos, vel, modes, -1.0, {DTAU}, {RL}, steps, precision="mixed", pairs=True)
        pairs = float(max(np.abs(g2[0] - gp).max(), np.abs(g2[1] - gv).max()))
        cb.SHARED_MODES_MAX = 16
        g2 = cb.trace_many(pos, vel, modes, -1.0, {DTAU}, {RL}, steps, precision="mixed", pairs=False)
        glob = float(max(np.abs(g2[0] - gp).max(), np.abs(g2[1] - gv).max()))
        try:
            cb.trace(pos[0], vel[0], modes[0], -1.0, {DTAU}, {RL}, steps, precision="float16")
            bad = "accepted"
        except ValueError as exc:
            bad = str(exc)
        print(json.dumps({{"dx": dx.tolist(), "dv": dv.tolist(), "same": same, "alone": alone, "glob": glob,
                          "pairs": pairs, "default_pairs": cb.MIXED_PAIRS,
                          "speed": float(np.abs(np.linalg.norm(gv, axis=-1) - 1).max()), "bad": bad,
                          "moved": float(np.linalg.norm(gv[:, -1] - vel, axis=-1).min())}}))
    """)
    tol_v, tol_x = _mixed_bounds()
    assert np.all(np.array(out["dv"]) <= tol_v), (out["dv"], tol_v)
    assert np.all(np.array(out["dx"]) <= tol_x), (out["dx"], tol_x)
    assert out["moved"] > 0.1  # the field did turn every particle (2 rad of gyration)
    # The simulator runs the kernel as Python (no FMA), like the CPU compilation:
    # equal to rounding (measured: bitwise).
    assert out["same"] < 1e-13
    # |v| = 1 to rounding after 40 exact rotations (measured 1e-15 over 24000 particles).
    assert out["speed"] < 1e-13
    # Each particle's arithmetic does not depend on the launch layout (one realisation
    # or several, modes in shared or global memory, one or two particles per thread):
    # bitwise equal.
    assert out["alone"] == 0.0
    assert out["glob"] == 0.0
    assert out["pairs"] == 0.0
    assert out["default_pairs"] is False  # the layout measured "alone" and "glob" above
    assert "precision = 'float16'" in out["bad"]


def test_cuda_mixed_end_to_end(tmp_path):
    out = run_simulated(f"""
        import json, numpy as np
        from crsky import bench, simulate
        from crsky.config import TurbulenceConfig, resolve_config
        from crsky.ensemble import run_ensemble
        from crsky.turbulence import make_modes
        # simulate.trace: backtracking-style start from the origin
        modes = make_modes(TurbulenceConfig(n_modes=24), 0, 3)
        v0 = simulate.pixel_directions(1)[:8]
        steps = np.array({list(STEPS)})
        g = simulate.trace(np.zeros_like(v0), v0, modes, {RL}, {DTAU}, steps, sign=-1, backend="cuda",
                           precision="mixed")
        c = simulate.trace(np.zeros_like(v0), v0, modes, {RL}, {DTAU}, steps, sign=-1, backend="cpu")
        dx = np.abs(g[0] - c[0]).max(axis=(1, 2)).tolist()
        dv = np.abs(g[1] - c[1]).max(axis=(1, 2)).tolist()
        # a run with [integration] precision = "mixed" on the cuda backend (two realisations
        # in one launch) against the float64 CPU run
        over = {{"turbulence": {{"n_modes": 8}}, "particles": {{"nside": 1}},
                 "integration": {{"t_max": 0.3, "n_snapshots": 2, "dt": 0.1, "precision": "mixed"}},
                 "ensemble": {{"realisations": 2}}}}
        cfg = resolve_config(over)
        run = run_ensemble(cfg, r"{tmp_path}/gpu", backend="cuda", progress=False)
        over["integration"]["precision"] = "float64"
        ref = run_ensemble(resolve_config(over), r"{tmp_path}/cpu", backend="cpu", progress=False)
        run_err = max(float(np.abs(run.read_realisation(j)["x"].values
                                   - ref.read_realisation(j)["x"].values).max()) for j in range(2))
        # crsky bench --backend cuda measures both precisions (tiny cases here)
        cases = bench.run_benchmarks(backend="cuda", quick=True, progress=False, mode_counts=(8,),
                                     particle_counts=(4,), work={{"float64": 2000, "mixed": 2000}})
        print(json.dumps({{"dx": dx, "dv": dv, "run_err": run_err,
                          "backend": run.manifest()["realisations"]["0"]["backend"],
                          "bench": [[r["backend"], r["dtype"], r["device"], r["mode_evals_per_s"] > 0]
                                    for r in cases],
                          "precisions": list(bench.precisions_of("cuda"))}}))
    """)
    tol_v, tol_x = _mixed_bounds()
    assert np.all(np.array(out["dv"]) <= tol_v), (out["dv"], tol_v)
    assert np.all(np.array(out["dx"]) <= tol_x), (out["dx"], tol_x)
    # 3 steps of dt = 0.1 (t Omega = 0.3) with r_L = 0.1 (the preset's): by the same bound,
    # |dx| <= r_L dt^2 EPS_B * 3 * 4 / 2 = 6e-9.
    assert out["run_err"] <= 6e-9
    assert out["backend"] == "cuda"
    assert out["bench"] == [["cuda", "float64", "numba CUDA simulator", True],
                            ["cuda", "mixed", "numba CUDA simulator", True]]
    assert out["precisions"] == ["float64", "mixed"]
