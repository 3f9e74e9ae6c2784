"""The integrator through :mod:`crsky.simulate`: backtracking, order of convergence.

The contract every backend keeps (helix, |v|, reversibility, oracle) is
tests/contract.py."""

import numpy as np
import pytest
from contract import helix_bound
from reference import helix

from crsky.config import TurbulenceConfig
from crsky.simulate import backtrack, trace
from crsky.turbulence import make_modes

UNIFORM = make_modes(TurbulenceConfig(sigma2=0.0, n_modes=4), 0, 0)


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


def test_snapshot_steps_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        trace(np.zeros((1, 3)), [[1.0, 0, 0]], UNIFORM, 0.1, 0.1, [5, 5])
