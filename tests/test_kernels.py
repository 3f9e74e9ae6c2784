"""The integrator: exact helix, |v| conservation, reversibility, order, oracle."""

import numpy as np
import pytest
from reference import helix, step_reference

from crsky.backends import cpu
from crsky.config import TurbulenceConfig
from crsky.simulate import backtrack, trace
from crsky.turbulence import make_modes

UNIFORM = make_modes(TurbulenceConfig(sigma2=0.0, n_modes=4), 0, 0)


def helix_bound(dtau, rl, v_perp):
    """Largest distance of the leapfrog orbit from the exact helix in a uniform field.

    The velocity is exact at every step (exact rotation) and the position is the
    trapezoidal sum of it; for e^{i tau} that sum is the exact integral times
    (h/2) cot(h/2), so |x - x_exact| <= 2 r_L v_perp (1 - (h/2) cot(h/2)) ~ r_L v_perp h^2 / 6
    at all times (no secular growth).
    """
    return 2 * rl * v_perp * (1 - (dtau / 2) / np.tan(dtau / 2))


@pytest.mark.parametrize("dtau", [0.3, 0.05])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_uniform_field_orbit_is_the_exact_helix(dtau, sign):
    rl, pitch = 0.37, 0.6
    v0 = np.array([[np.sqrt(1 - pitch**2), 0.0, pitch]])
    steps = np.unique(np.geomspace(1, 20000, 30).astype(np.int64))
    x, v = trace(np.zeros((1, 3)), v0, UNIFORM, rl, dtau, steps, sign=sign)
    x_exact, v_exact = helix(v0[0, 0], pitch, steps * dtau, rl, sign)
    # Rounding: |v| errors of 1e-16 per step, accumulated over up to 2e4 steps.
    np.testing.assert_allclose(v[:, 0], v_exact, rtol=0, atol=1e-11)
    err = np.linalg.norm(x[:, 0] - x_exact, axis=1)
    bound = helix_bound(dtau, rl, v0[0, 0]) + 1e-11 * rl * steps * dtau
    assert np.all(err <= bound)
    # The bound is tight: the error reaches a good fraction of it (it is no loose guess).
    assert err.max() > 0.3 * helix_bound(dtau, rl, v0[0, 0])


def test_backtracking_reverses_direction_and_charge():
    # A proton (charge +1) observed at the origin with momentum p came along the
    # helix of a +1 charge; at -T it was at x(-T) with momentum p(-T) (reference.helix
    # evaluated at negative tau).
    rl, dtau = 0.1, 0.01
    p_perp, p_par = 0.8, 0.6
    steps = np.array([100, 1000, 5000])
    x, p = backtrack(np.array([[p_perp, 0.0, p_par]]), UNIFORM, rl, dtau, steps, charge_sign=1)
    x_exact, p_exact = helix(p_perp, p_par, -steps * dtau, rl, sign=1.0)
    np.testing.assert_allclose(p[:, 0], p_exact, atol=1e-11)
    np.testing.assert_allclose(x[:, 0], x_exact, atol=helix_bound(dtau, rl, p_perp) + 1e-11)
    # An antiproton gyrates the other way.
    x_anti, _ = backtrack(np.array([[p_perp, 0.0, p_par]]), UNIFORM, rl, dtau, steps, charge_sign=-1)
    x_exact_anti, _ = helix(p_perp, p_par, -steps * dtau, rl, sign=-1.0)
    np.testing.assert_allclose(x_anti[:, 0], x_exact_anti, atol=helix_bound(dtau, rl, p_perp) + 1e-11)


def test_speed_is_one_to_rounding_after_a_million_steps():
    modes = make_modes(TurbulenceConfig(n_modes=64), seed=1, realisation=0)
    v0 = np.array([[0.6, 0.0, 0.8], [-0.48, 0.6, 0.64]])
    _, v = trace(np.zeros((2, 3)), v0, modes, 0.1, 0.05, np.array([10**6]))
    speed = np.linalg.norm(v[-1], axis=1)
    assert np.all(np.abs(speed - 1.0) < 1e-12)


def test_forward_then_backward_returns_to_the_start():
    # Forward with charge s for N steps, then from (x, -v) with charge -s for N steps:
    # the symmetric scheme retraces its steps exactly in exact arithmetic. Rounding
    # (1e-16 per step) is amplified by the chaos of the orbit; over tau = 20 in sigma2 = 1
    # turbulence the measured return error is ~1e-13, so 1e-10 leaves room.
    modes = make_modes(TurbulenceConfig(n_modes=128), seed=2, realisation=1)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(8, 3))
    v0 = rng.normal(size=(8, 3))
    v0 /= np.linalg.norm(v0, axis=1)[:, None]
    n = 400
    x1, v1 = trace(x0, v0, modes, 0.1, 0.05, [n], sign=1)
    x2, v2 = trace(x1[-1], -v1[-1], modes, 0.1, 0.05, [n], sign=-1)
    np.testing.assert_allclose(x2[-1], x0, atol=1e-10)
    np.testing.assert_allclose(-v2[-1], v0, atol=1e-10)
    # and the orbit went somewhere
    assert np.linalg.norm(x1[-1] - x0, axis=1).min() > 0.1


def test_second_order_convergence_on_a_smooth_field():
    # Long waves only (lambda from 2 to 20 L_c) and r_L = 1: a smooth problem where the
    # global error must fall by 4 when the step halves.
    t = TurbulenceConfig(n_modes=8, lambda_min=2.0, lambda_max=20.0, sigma2=0.5)
    modes = make_modes(t, seed=0, realisation=0)
    v0 = np.array([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [-0.36, 0.48, 0.8]])
    x0 = np.zeros_like(v0)
    tau = 10.0

    def end(dtau):
        x, v = trace(x0, v0, modes, 1.0, dtau, [round(tau / dtau)])
        return np.concatenate([x[-1], v[-1]], axis=1)

    ref = end(0.2 / 256)
    # From dtau = 0.1 down: at 0.2 (a step of 0.2 L_c against 2 L_c waves) the measured
    # order is still 1.83, pre-asymptotic.
    errors = [np.abs(end(0.2 / 2**i) - ref).max() for i in range(1, 5)]
    orders = np.log2(np.array(errors[:-1]) / errors[1:])
    np.testing.assert_allclose(orders, 2.0, atol=0.15)


def test_numba_step_matches_the_numpy_oracle():
    modes = make_modes(TurbulenceConfig(n_modes=256), seed=5, realisation=3)
    rng = np.random.default_rng(3)
    x = rng.uniform(-30, 30, size=(20, 3))  # phases up to 2e4 rad
    v = rng.normal(size=(20, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    for sign in (1.0, -1.0):
        got_x, got_v = cpu.trace(x, v, modes, sign, 0.07, 0.1, np.array([1]))
        for i in range(len(x)):
            ref_x, ref_v = step_reference(x[i], v[i], modes, sign, 0.07, 0.1)
            np.testing.assert_allclose(got_x[0, i], ref_x, rtol=0, atol=1e-12)
            np.testing.assert_allclose(got_v[0, i], ref_v, rtol=0, atol=1e-12)


def test_snapshot_steps_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        trace(np.zeros((1, 3)), [[1.0, 0, 0]], UNIFORM, 0.1, 0.1, [5, 5])
