"""The steady-state onset: the earliest snapshot from which the dipole C_hat_1 and the
shape C_hat_l / C_hat_1 (l = 2..STEADY_LMAX) agree with the last snapshot
(crsky.analysis.estimators.steady_state), on inputs whose onset is known."""

import math

import numpy as np
import pytest

from crsky.analysis import estimators as est

T = np.geomspace(1.0, 1000.0, 13)  # snapshots, Omega T; T[6] = 31.6, nearest half the last: T[11] = 562
LMAX = 6


def _spectra(dipole, ratio2):
    """cl_hat (n_time, LMAX + 1) with C_hat_1 = dipole(t) and C_hat_l = C_hat_1 r_2(t) 0.5^(l-2)."""
    cl = np.zeros((T.size, LMAX + 1))
    cl[:, 1] = dipole
    cl[:, 2:] = (dipole * ratio2)[:, None] * 0.5 ** np.arange(LMAX - 1)
    return cl


def test_onset_is_the_first_snapshot_after_a_step_of_the_shape():
    # exact inputs: the shape steps from 0.5 to 0.3 between T[3] and T[4]; errors 1 %
    cl = _spectra(np.ones(T.size), np.where(T >= T[4], 0.3, 0.5))
    err = 0.01 * np.abs(cl) + 1e-4
    noise = np.full_like(cl, 1e-6)
    s = est.steady_state(T, cl, err, noise)
    assert s.tested and s.steady
    assert s.onset == T[4] and s.onset_shape == T[4] and s.onset_dipole == T[0]
    assert "onset t Omega = 10" in s.status
    # the analysis joins the gradients' statuses with "; " (steady_state_status)
    assert "; " not in s.status


def test_onset_is_the_later_of_dipole_and_shape():
    dipole = np.where(T >= T[8], 2.0, 1.0)   # the dipole settles later than the shape
    cl = _spectra(dipole, np.where(T >= T[2], 0.3, 0.5))
    s = est.steady_state(T, cl, 0.01 * cl + 1e-4, np.full_like(cl, 1e-6))
    assert (s.onset_dipole, s.onset_shape, s.onset) == (T[8], T[2], T[8])
    assert s.steady  # T[8] = 100 <= T[11] = 562, the snapshot nearest half the last time


def test_onset_after_half_the_time_is_not_steady_and_a_drift_is_never_steady():
    # a step at the last snapshot: the one before already disagrees, never constant
    last = _spectra(np.ones(T.size), np.where(T >= T[12], 0.3, 0.5))
    s = est.steady_state(T, last, 0.01 * last + 1e-4, np.full_like(last, 1e-6))
    assert s.tested and not s.steady and math.isnan(s.onset) and "never constant" in s.status
    # finer snapshots: a step at t Omega = 800 > 500 (half the last time) is an onset, not steady
    t = np.linspace(100.0, 1000.0, 10)
    late = np.zeros((t.size, LMAX + 1))
    late[:, 1] = 1.0
    late[:, 2:] = np.where(t >= 800.0, 0.3, 0.5)[:, None] * 0.5 ** np.arange(LMAX - 1)
    s = est.steady_state(t, late, 0.01 * late + 1e-4, np.full_like(late, 1e-6))
    assert s.tested and not s.steady and s.onset == 800.0 and s.t_early == 500.0 and "later than" in s.status
    # a drift of the shape ~ log T: never constant
    drift = _spectra(np.ones(T.size), 0.3 + 0.05 * np.log(T))
    s = est.steady_state(T, drift, 0.001 * drift + 1e-5, np.full_like(drift, 1e-7))
    assert not s.steady and math.isnan(s.onset) and math.isnan(s.onset_shape) and s.onset_dipole == T[0]
    # 0.05 log(1000/562) = 0.0288 in r_2 against errors 0.001 r_2 in quadrature: > 2 sigma
    assert s.max_sigma > est.STEADY_NSIGMA


def test_a_snapshot_below_the_noise_breaks_the_constant_run():
    cl = _spectra(np.ones(T.size), np.full(T.size, 0.3))
    noise = np.full_like(cl, 1e-6)
    noise[9, 4] = 1.0  # C_hat_4 not above the noise at T[9] only: the shape is not measured there
    s = est.steady_state(T, cl, 0.01 * cl + 1e-4, noise)
    assert (s.onset_dipole, s.onset_shape, s.onset) == (T[0], T[10], T[10])
    assert s.steady and s.max_sigma == 0.0  # T[10] <= T[11], the snapshot nearest half the last time
    noise[11, 4] = 1.0  # the snapshot before the last: the shape is never seen constant
    s = est.steady_state(T, cl, 0.01 * cl + 1e-4, noise)
    assert math.isnan(s.onset_shape) and math.isnan(s.onset) and s.onset_dipole == T[0]
    assert not s.steady and s.max_sigma == math.inf


def test_last_snapshot_below_the_noise_is_not_tested():
    cl = _spectra(np.ones(T.size), np.full(T.size, 0.3))
    noise = np.full_like(cl, 1e-6)
    noise[-1, 2] = 1.0
    s = est.steady_state(T, cl, 0.01 * cl + 1e-4, noise)
    assert not s.tested and not s.steady and math.isnan(s.onset) and "not above the noise" in s.status


def test_onset_from_realisations_with_snapshot_correlated_scatter():
    """Realisations whose scatter is mostly shared between snapshots, as real ones are
    (the same trajectories at every time): the onset is the step, found from means and
    standard errors over realisations.

    Per realisation ``C_l(t) = truth_l(t) (1 + a_r + b_rt)`` with ``sd(a) = 0.2``
    (shared by all snapshots) and ``sd(b) = 0.02`` (independent). R = 64: the standard
    error of one snapshot is 0.2 / 8 = 2.5 % of the value, 3.5 % for a difference added
    in quadrature; the true difference of two snapshots after the step has a standard
    deviation of only 0.02 sqrt(2) / 8 = 0.35 %, i.e. 0.1 of the combined error, so a
    false disagreement (2 combined errors = 20 of its own standard deviations) does not
    occur. The step (dipole x 1.5, r_2 0.5 -> 0.3) is 14 and 11 combined errors:
    always found. Hence the onset is exactly the first snapshot after the step for any
    seed; seed 0 is fixed.
    """
    rng = np.random.default_rng(0)
    R = 64
    truth = _spectra(np.where(T >= T[5], 1.5, 1.0), np.where(T >= T[7], 0.3, 0.5))
    a = rng.normal(0.0, 0.2, size=(R, 1, 1))
    b = rng.normal(0.0, 0.02, size=(R, T.size, 1))
    cl_r = truth[None] * (1.0 + a + b)
    cl_hat = cl_r.mean(axis=0)
    cl_err = cl_r.std(axis=0, ddof=1) / math.sqrt(R)
    s = est.steady_state(T, cl_hat, cl_err, np.full_like(cl_hat, 1e-6))
    assert (s.onset_dipole, s.onset_shape, s.onset) == (T[5], T[7], T[7])
    assert s.steady and s.max_sigma < 0.5
