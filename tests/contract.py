"""The contract every backend x precision variant keeps (one subclass per variant:
tests/test_backends.py for the CPU, tests/test_cuda.py for CUDA).

A subclass sets :attr:`BackendContract.backend` and :attr:`precision`, and may shrink
the sizes (the CUDA simulator runs every GPU thread as Python). Tolerances: float64
variants keep plain float64 rounding; mixed variants have a field error below
``EPS_B = 1e-6`` of the rms field (tests/test_fast_kernels.py), and every mixed
tolerance below is derived from it, next to the check.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import field_reference, helix, step_reference

from crsky.backends import get_backend
from crsky.config import TurbulenceConfig, resolve_config
from crsky.ensemble import run_ensemble
from crsky.simulate import simulate_realisation
from crsky.turbulence import make_modes

#: Required field accuracy of the mixed paths, relative to the rms turbulent field.
EPS_B = 1e-6

UNIFORM = make_modes(TurbulenceConfig(sigma2=0.0, n_modes=4), 0, 0)


def helix_bound(dtau, rl, v_perp):
    """Largest distance of the leapfrog orbit from the exact helix in a uniform field.

    The velocity is exact at every step (exact rotation) and the position is the
    trapezoidal sum of it; for e^{i tau} that sum is the exact integral times
    (h/2) cot(h/2), so |x - x_exact| <= 2 r_L v_perp (1 - (h/2) cot(h/2)) ~ r_L v_perp h^2 / 6
    at all times (no secular growth).
    """
    return 2 * rl * v_perp * (1 - (dtau / 2) / np.tan(dtau / 2))


def unit_vectors(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1)[:, None]


class BackendContract:
    """Contract tests; subclasses name the variant and may shrink the sizes."""

    backend = "cpu"
    precision = "float64"
    #: Largest step count of the helix test (the error bound holds at all times).
    helix_steps = 20000
    #: Steps of the |v| test.
    long_steps = 200_000
    #: Modes and particles of the turbulent-field tests.
    n_modes = 128
    n_particles = 8
    #: Steps (dtau = 0.05) of the reversibility test.
    reverse_steps = 400

    @pytest.fixture
    def tracer(self):
        return get_backend(self.backend, self.precision)

    @property
    def mixed(self) -> bool:
        return self.precision == "mixed"

    @pytest.mark.parametrize("dtau", [0.3, 0.05])
    @pytest.mark.parametrize("sign", [1.0, -1.0])
    def test_uniform_field_orbit_is_the_exact_helix(self, tracer, dtau, sign):
        # sigma2 = 0: every mode has zero amplitude, so the field is exactly z_hat on
        # every path, and all rotation formulas agree to 1e-16 per step.
        rl, pitch = 0.37, 0.6
        v0 = np.array([[np.sqrt(1 - pitch**2), 0.0, pitch]])
        steps = np.unique(np.geomspace(1, self.helix_steps, 30).astype(np.int64))
        x, v = tracer.trace(np.zeros((1, 3)), v0, UNIFORM, sign=sign, dt=dtau, rl=rl, snapshot_steps=steps)
        x_exact, v_exact = helix(v0[0, 0], pitch, steps * dtau, rl, sign)
        # Rounding: |v| errors of 1e-16 per step, accumulated over up to 2e4 steps.
        np.testing.assert_allclose(v[:, 0], v_exact, rtol=0, atol=1e-11)
        err = np.linalg.norm(x[:, 0] - x_exact, axis=1)
        bound = helix_bound(dtau, rl, v0[0, 0]) + 1e-11 * rl * steps * dtau
        assert np.all(err <= bound)
        # The bound is tight: the error reaches a good fraction of it (it is no loose guess).
        assert err.max() > 0.3 * helix_bound(dtau, rl, v0[0, 0])

    def test_speed_is_one_to_rounding_after_many_steps(self, tracer):
        # |v| changes only by rounding, ~1e-16 per step as a random walk.
        modes = make_modes(TurbulenceConfig(n_modes=64), seed=1, realisation=0)
        v0 = np.array([[0.6, 0.0, 0.8], [-0.48, 0.6, 0.64], [0.0, 0.0, -1.0]])
        _, v = tracer.trace(np.zeros((3, 3)), v0, modes, sign=1.0, dt=0.05, rl=0.1,
                            snapshot_steps=[self.long_steps])
        assert np.abs(np.linalg.norm(v[-1], axis=1) - 1.0).max() < 1e-12

    def test_forward_then_backward_returns_to_the_start(self, tracer):
        # Forward with charge s for m steps, then from (x, -v) with charge -s for m steps:
        # the symmetric scheme retraces its steps exactly in exact arithmetic.
        # float64: rounding (1e-16 per step) amplified by the chaos of the orbit; over
        # t Omega = 20 in sigma2 = 1 turbulence the measured return error is ~1e-13, so
        # 1e-10 leaves room. Mixed: the field of the two passes differs by up to
        # 2 EPS_B (the CPU's reference points are refreshed at other places; the GPU's
        # float32 roundings flip), so over 2 m steps, before chaos amplifies it
        # (m dtau = 2): |dv| <= 2 m dtau EPS_B, |dx| <= r_L dtau^2 EPS_B m (m + 1)
        # (measured 40x below).
        modes = make_modes(TurbulenceConfig(n_modes=self.n_modes), seed=2, realisation=1)
        rng = np.random.default_rng(0)
        x0 = rng.normal(size=(self.n_particles, 3))
        v0 = unit_vectors(rng, self.n_particles)
        n, dtau, rl = (40 if self.mixed else self.reverse_steps), 0.05, 0.1
        x1, v1 = tracer.trace(x0, v0, modes, sign=1.0, dt=dtau, rl=rl, snapshot_steps=[n])
        x2, v2 = tracer.trace(x1[-1], -v1[-1], modes, sign=-1.0, dt=dtau, rl=rl, snapshot_steps=[n])
        tol_v = 2 * n * dtau * EPS_B if self.mixed else 1e-10
        tol_x = rl * dtau**2 * EPS_B * n * (n + 1) if self.mixed else 1e-10
        np.testing.assert_allclose(x2[-1], x0, rtol=0, atol=tol_x)
        np.testing.assert_allclose(-v2[-1], v0, rtol=0, atol=tol_v)
        assert np.linalg.norm(x1[-1] - x0, axis=1).min() > 0.1 * n * dtau * rl  # the orbit went somewhere

    def test_one_step_matches_the_numpy_oracle(self, tracer):
        # Phases up to 1e4 rad. float64: rounding only (1e-12). Mixed: the field is off
        # by at most EPS_B (rms field 1), so the rotation by dtau |b| is off by at most
        # dtau EPS_B, and the position (second half drift r_L dtau / 2) by r_L dtau / 2
        # times that.
        modes = make_modes(TurbulenceConfig(n_modes=self.n_modes), seed=5, realisation=3)
        rng = np.random.default_rng(3)
        x = rng.uniform(-30, 30, size=(self.n_particles, 3))
        v = unit_vectors(rng, self.n_particles)
        dtau, rl = 0.07, 0.1
        tol_v = dtau * EPS_B if self.mixed else 1e-12
        tol_x = 0.5 * rl * dtau * tol_v + 1e-12
        for sign in (1.0, -1.0):
            got_x, got_v = tracer.trace(x, v, modes, sign=sign, dt=dtau, rl=rl, snapshot_steps=[1])
            for i in range(len(x)):
                ref_x, ref_v = step_reference(x[i], v[i], modes, sign, dtau, rl)
                np.testing.assert_allclose(got_x[0, i], ref_x, rtol=0, atol=tol_x)
                np.testing.assert_allclose(got_v[0, i], ref_v, rtol=0, atol=tol_v)

    def test_field_matches_the_numpy_oracle(self, tracer):
        # Out to |x| = 1e3 L_c (phases up to 6e5 rad): float64 to 1e-11 (cos of large
        # float64 arguments), mixed to EPS_B of the rms field.
        modes = make_modes(TurbulenceConfig(n_modes=self.n_modes), seed=3, realisation=2)
        x = np.random.default_rng(9).uniform(-1000, 1000, size=(4 * self.n_particles, 3))
        err = np.linalg.norm(tracer.field_at_points(modes, x) - field_reference(modes, x), axis=1)
        assert err.max() < (EPS_B if self.mixed else 1e-11)

    def test_deterministic_and_independent_of_the_batch(self, tracer):
        # Each particle's arithmetic does not depend on its neighbours (lanes, chunks,
        # GPU blocks) or on the run: bitwise equal alone, in a batch, and again.
        modes = make_modes(TurbulenceConfig(n_modes=self.n_modes), seed=2, realisation=0)
        rng = np.random.default_rng(5)
        x0 = rng.uniform(-50, 50, size=(7, 3))
        v0 = unit_vectors(rng, 7)
        steps = np.array([0, 3, 20])
        xb, vb = tracer.trace(x0, v0, modes, sign=-1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
        assert xb.shape == (3, 7, 3)
        np.testing.assert_array_equal(xb[0], x0)  # step 0 records the initial state
        again = tracer.trace(x0, v0, modes, sign=-1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
        np.testing.assert_array_equal(again[0], xb)
        np.testing.assert_array_equal(again[1], vb)
        for i in (0, 6):
            xa, va = tracer.trace(x0[i:i + 1], v0[i:i + 1], modes, sign=-1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
            np.testing.assert_array_equal(xa[:, 0], xb[:, i])
            np.testing.assert_array_equal(va[:, 0], vb[:, i])
        empty = tracer.trace(np.zeros((0, 3)), np.zeros((0, 3)), modes, sign=1.0, dt=0.05, rl=0.1,
                             snapshot_steps=steps)
        assert empty[0].shape == (3, 0, 3)

    def test_realisations_traced_together_equal_each_alone(self, tracer):
        rng = np.random.default_rng(6)
        modes = np.stack([make_modes(TurbulenceConfig(n_modes=self.n_modes), 4, j) for j in range(3)])
        x0 = rng.uniform(-5, 5, size=(3, 5, 3))
        v0 = unit_vectors(rng, 15).reshape(3, 5, 3)
        xs, vs = tracer.trace_many(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=[2, 9])
        for r in range(3):
            xa, va = tracer.trace(x0[r], v0[r], modes[r], sign=1.0, dt=0.05, rl=0.1, snapshot_steps=[2, 9])
            np.testing.assert_array_equal(xa, xs[r])
            np.testing.assert_array_equal(va, vs[r])
        assert not np.array_equal(xs[0], xs[1])

    def test_realisation_alone_equals_realisation_in_a_run(self, tmp_path):
        cfg = resolve_config({
            "turbulence": {"n_modes": 16},
            "particles": {"nside": 1},
            "integration": {"t_max": 1.0, "n_snapshots": 3, "dt": 0.05, "precision": self.precision},
            "ensemble": {"realisations": 3, "seed": 42},
        })
        store = run_ensemble(cfg, tmp_path / "run", backend=self.backend, progress=False)
        alone = simulate_realisation(cfg, 1, backend=self.backend)
        stored = store.read_realisation(1)
        np.testing.assert_array_equal(stored["x"].values, alone.x)
        np.testing.assert_array_equal(stored["p"].values, alone.p)
        np.testing.assert_array_equal(stored["t_omega"].values, alone.t_omega)
        assert alone.backend == self.backend
        assert not np.array_equal(store.read_realisation(0)["x"].values, alone.x)

    def test_agrees_with_the_cpu_float64_path(self, tracer):
        # Short trajectories from |x| <= 500 L_c (phases up to 3e5 rad). float64: the
        # same arithmetic, rounding only. Mixed: a field error |db| <= EPS_B changes v
        # by at most dtau EPS_B per step and x by r_L dtau / 2 times that per half
        # drift; over m steps, with the errors accumulating linearly (no chaotic growth
        # over t Omega = m dtau <= 2): |dv| <= m dtau EPS_B, |dx| <= r_L dtau^2 EPS_B
        # m (m + 1) / 2. Measured 4-10x below these bounds.
        dtau, rl = 0.05, 0.1
        steps = np.array([1, 10, 40])
        modes = make_modes(TurbulenceConfig(n_modes=40), 5, 0)  # two float32 blocks of 16 and one of 8
        rng = np.random.default_rng(11)
        x0 = rng.normal(size=(self.n_particles, 3))
        x0 *= (500 * rng.uniform(0.2, 1, self.n_particles) / np.linalg.norm(x0, axis=1))[:, None]
        v0 = unit_vectors(rng, self.n_particles)
        x, v = tracer.trace(x0, v0, modes, sign=-1.0, dt=dtau, rl=rl, snapshot_steps=steps)
        xr, vr = get_backend("cpu", "float64").trace(x0, v0, modes, sign=-1.0, dt=dtau, rl=rl, snapshot_steps=steps)
        m = steps.astype(float)
        tol_v = m * dtau * EPS_B if self.mixed else 1e-13
        tol_x = rl * dtau**2 * EPS_B * m * (m + 1) / 2 if self.mixed else 1e-13
        assert np.all(np.abs(v - vr).max(axis=(1, 2)) <= tol_v)
        assert np.all(np.abs(x - xr).max(axis=(1, 2)) <= tol_x)
        assert np.linalg.norm(vr[-1] - v0, axis=1).min() > 0.1  # the field turned every particle
