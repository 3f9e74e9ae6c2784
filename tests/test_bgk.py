"""Tests of crsky.bgk: closed form, quadrature, forward relation (4.6), fit of p.

Reference values are computed independently with mpmath and by quadrature
(``bgk_reference``, next to this file); tolerances are stated next to each test together
with where they come from.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

import bgk_reference
from crsky import bgk

P_VALUES = [0.2, 1 / 3, 0.5, 2 / 3, 0.9]
P_MP = {0.2: "1/5", 1 / 3: "1/3", 0.5: "1/2", 2 / 3: "2/3", 0.9: "9/10"}


def _mpp(p: float) -> mp.mpf:
    num, den = P_MP[p].split("/")
    return mp.mpf(num) / mp.mpf(den)


# --------------------------------------------------------------------------------------
# independent high-precision references
# --------------------------------------------------------------------------------------
def _legendre_mp(l: int, x):
    p0, p1 = mp.mpf(1), x
    if l == 0:
        return p0
    for k in range(1, l):
        p0, p1 = p1, ((2 * k + 1) * x * p1 - k * p0) / (k + 1)
    return p1


def _cl_mpquad(p: mp.mpf, l: int, n_split: int = 8) -> mp.mpf:
    """Eq. (4.7), q1 = nu = 1, by mp.quad at 30 digits.

    Substitution 1 - x = t^m, m = 1/(1-p), removes the singularity:
    int x P_l(x) (1-x)^-p dx = m int_0^{2^(1-p)} (1 - t^m) P_l(1 - t^m) dt.
    tanh-sinh on the first sub-interval (t^m is not analytic at t = 0), Gauss-Legendre on
    the others.
    """
    with mp.workdps(30):
        m = 1 / (1 - p)
        top = mp.mpf(2) ** (1 - p)

        def f(t):
            x = 1 - t**m
            return m * x * _legendre_mp(l, x)

        pts = mp.linspace(0, top, n_split + 1)
        val = mp.quad(f, pts[:2]) + mp.quad(f, pts[1:], method="gauss-legendre")
        return mp.mpf(3) / 2 / (l * (l + 1)) * val


def _cl_series(p: mp.mpf, l: int) -> mp.mpf:
    """Eq. (4.7), q1 = nu = 1, by exact term-wise integration of the Legendre series.

    P_l(x) = sum_k C(l,k) C(l+k,k) (-(1-x)/2)^k, and
    int_{-1}^{1} x (1-x)^(k-p) dx = 2^(k+1-p) [1/(k+1-p) - 2/(k+2-p)].
    The alternating sum cancels by ~(3+2 sqrt 2)^l, hence the working precision.
    """
    with mp.workdps(40 + int(0.77 * l)):
        s = mp.mpf(0)
        for k in range(l + 1):
            term = mp.binomial(l, k) * mp.binomial(l + k, k) * (1 / (k + 1 - p) - 2 / (k + 2 - p))
            s += -term if k % 2 else term
        return +(mp.mpf(3) / 2 / (l * (l + 1)) * 2 ** (1 - p) * s)


def _cl_gamma_mp(p: mp.mpf, l: int, model: str = "4.7") -> mp.mpf:
    """The derived closed forms evaluated in mpmath (tests the float64 evaluation)."""
    with mp.workdps(40):
        a = 2 ** (1 - p) * mp.gamma(1 - p) / mp.gamma(p) * mp.gamma(l - 1 + p) / mp.gamma(l + 3 - p)
        if model == "4.7":
            return +(mp.mpf(3) / 2 * a * (1 - p * (1 - p) / (l * (l + 1))))
        return +(3 * (1 - p) / (2 - p) * a)


# --------------------------------------------------------------------------------------
# closed form
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", P_VALUES)
def test_closed_form_vs_mpquad(p):
    """Closed form vs mp.quad (30 digits) at l = 1, 2, 5, 17: relative 1e-12."""
    cl = bgk.bgk_spectrum(p, 17)
    for l in (1, 2, 5, 17):
        ref = _cl_mpquad(_mpp(p), l)
        assert abs(cl[l - 1] / float(ref) - 1) < 1e-12, (p, l)


def test_closed_form_vs_mpquad_l100():
    """l = 100 by mp.quad (2-3 s each, so one p here; all p in the slow test)."""
    ref = _cl_mpquad(_mpp(0.5), 100)
    assert abs(bgk.bgk_spectrum(0.5, 100)[99] / float(ref) - 1) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("p", P_VALUES)
def test_closed_form_vs_mpquad_l100_all_p(p):
    ref = _cl_mpquad(_mpp(p), 100)
    assert abs(bgk.bgk_spectrum(p, 100)[99] / float(ref) - 1) < 1e-12


@pytest.mark.parametrize("p", P_VALUES)
def test_closed_form_vs_series(p):
    """Closed form vs exact term-wise integration (mpmath), l <= 100 (1000 for two p): 1e-13."""
    ells = (1, 2, 5, 17, 100, 1000) if p in (0.2, 0.9) else (1, 2, 5, 17, 100)
    cl = bgk.bgk_spectrum(p, 1000)
    for l in ells:
        ref = _cl_series(_mpp(p), l)
        assert abs(cl[l - 1] / float(ref) - 1) < 1e-13, (p, l)


@pytest.mark.parametrize("p", [1e-6, 0.01, *P_VALUES, 0.999, 1 - 1e-6])
@pytest.mark.parametrize("model", bgk.MODELS)
def test_float64_evaluation_up_to_l_10000(p, model):
    """log-space evaluation vs mpmath Gamma functions, l <= 10^4: relative 3e-14.

    (Measured worst case 8.6e-15; scipy.special.poch would give 1.6e-11 at l = 10^4.)
    """
    ells = [1, 2, 3, 31, 32, 33, 34, 100, 1000, 5000, 9999, 10000]
    cl = bgk.bgk_spectrum(p, 10000, model=model)
    pm = mp.mpf(p)
    for l in ells:
        ref = _cl_gamma_mp(pm, l, model)
        assert abs(cl[l - 1] / float(ref) - 1) < 3e-14, (p, l)


@pytest.mark.parametrize("p", P_VALUES)
def test_closed_form_vs_gauss_jacobi(p):
    """Closed form vs Gauss-Jacobi quadrature (weight (1-x)^-p), l <= 200.

    The rule is exact for the polynomial x P_l (n = l/2 + 2 nodes), so the difference is
    the quadrature's own float64 error: node rounding times P_l' ~ l^2/2 near x = 1,
    amplified by the cancellation in sum_i w_i x_i P_l(x_i) (up to ~600 at p = 0.2,
    l = 200).  Measured: <= 7e-13 for l <= 50 and <= 2.5e-11 for l <= 200 (all p here);
    tolerances 5e-12 and 2e-10.
    """
    for model in bgk.MODELS:
        quad = bgk_reference.bgk_spectrum_quadrature(p, 200, model=model)
        exact = bgk.bgk_spectrum(p, 200, model=model)
        rel = np.abs(quad / exact - 1)
        assert rel[:50].max() < 5e-12
        assert rel.max() < 2e-10


def test_gauss_jacobi_rule():
    """Polished Gauss-Jacobi rule integrates moments to ~1e-14 (J_0 and J_2 exactly known)."""
    for a in (-0.9, -0.5, 0.0, 0.5):
        x, w = bgk._gauss_jacobi(200, a)
        j0 = 2 ** (a + 1) / (a + 1)
        j2 = 2 ** (a + 1) * (1 / (a + 1) - 4 / (a + 2) + 4 / (a + 3))
        assert abs(w.sum() / j0 - 1) < 1e-11
        assert abs((w * x * x).sum() / j2 - 1) < 1e-11


def test_units_and_low_multipoles():
    """C_l scales as q1 / nu; C_1 and C_2 match hand-derived elementary expressions."""
    p = 0.5
    c = bgk.bgk_spectrum(p, 3, q1=2.0, nu=4.0)
    np.testing.assert_allclose(c, 0.5 * bgk.bgk_spectrum(p, 3), rtol=1e-15)
    c1 = 0.75 * 2 ** (1 - p) * (2 - p + p * p) / ((1 - p) * (2 - p) * (3 - p))
    assert abs(bgk.bgk_spectrum(p, 1)[0] / c1 - 1) < 1e-15
    r2 = p / (4 - p) * (1 - p * (1 - p) / 6) / (1 - p * (1 - p) / 2)
    assert abs(bgk.bgk_ratio(p, 2)[1] / r2 - 1) < 1e-15
    assert bgk.bgk_ratio(p, 1)[0] == 1.0


def test_constant_rate_limit():
    """p -> 0: v_r = nu, only the dipole survives, C_1 = Q_1 / (2 nu)."""
    c = bgk.bgk_spectrum(1e-9, 5)
    assert abs(c[0] - 0.5) < 1e-8
    assert np.all(c[1:] < 1e-8)


@pytest.mark.parametrize("p", [1e-6, 0.01, *P_VALUES, 0.99, 1 - 1e-6])
@pytest.mark.parametrize("model", bgk.MODELS)
def test_large_l_positive_monotone_power_law(p, model):
    """l <= 10^4: finite, positive, strictly decreasing, slope -> -(4 - 2p).

    The local slope s(l) = d ln C / d ln l, from the Gamma-function asymptotics, is
    -(4-2p) + (2-p)/(l+1) + O(l^-2), with the O(l^-2) coefficient measured <= 4 in size.
    So |s + 4 - 2p| <= 2/l and |s + 4 - 2p - (2-p)/(l+1)| <= 5/l^2 (l >= 100), with
    s taken as a central difference in ln l (its own error is O(l^-2) too, included).
    """
    lmax = 10001
    c = bgk.bgk_spectrum(p, lmax, model=model)
    assert np.all(np.isfinite(c)) and np.all(c > 0)
    assert np.all(np.diff(c) < 0)
    r = bgk.bgk_ratio(p, lmax, model=model)
    assert np.all(r > 0) and np.all(r <= 1)
    for l in (100, 1000, 10000):
        s = (math.log(c[l]) - math.log(c[l - 2])) / (math.log(l + 1) - math.log(l - 1))
        assert abs(s + 4 - 2 * p) <= 2 / l
        assert abs(s + 4 - 2 * p - (2 - p) / (l + 1)) <= 5 / l**2


def test_ratio_of_models():
    """The 4.7 and 4.6 spectra differ by [1 - p(1-p)/(l(l+1))] / [1 - p(1-p)/2] in shape."""
    for p in P_VALUES:
        q = p * (1 - p)
        ell = np.arange(1, 51)
        want = (1 - q / (ell * (ell + 1))) / (1 - q / 2)
        got = bgk.bgk_ratio(p, 50) / bgk.bgk_ratio(p, 50, model="4.6")
        np.testing.assert_allclose(got, want, rtol=1e-14)


# --------------------------------------------------------------------------------------
# forward relation (4.6)
# --------------------------------------------------------------------------------------
def _r_inf(p: float, lmax: int) -> np.ndarray:
    """Residual of eq. (4.7) in eq. (4.6) for lmax -> inf: r_l / Q_1 (closed form)."""
    pm = mp.mpf(p)
    return np.array(
        [
            float(-3 * pm * mp.gamma(1 + pm) * mp.gamma(l - pm)
                  / ((1 - pm) * (2 - pm) * mp.gamma(-pm) * mp.gamma(l + 2 + pm)))
            for l in range(1, lmax + 1)
        ]
    )


@pytest.mark.parametrize("p", [1 / 3, 0.5, 2 / 3])
def test_solve_forward_converges_to_exact_inverse(p):
    """The truncated system (4.6) converges to the exact inverse ("4.6"), not to eq. (4.7).

    At fixed l the truncation error falls as lmax^-(2-2p) (measured: 1.2e-3 at l = 1,
    9.7e-3 at l = 5 for p = 1/2, lmax = 320).  Checked: (a) the error at lmax = 320 is
    below 2.5 x the measured value, (b) the error ratio between lmax = 80 and 320 is
    4^(2-2p) within 10 %, (c) l = 1 of the truncated solution differs from eq. (4.7) by
    the analytic factor 4(1-p) / ((2-p)(2-p+p^2)) - 1 within the truncation error.
    """
    vr = lambda x: (1.0 - x) ** p  # noqa: E731
    exact = bgk.bgk_spectrum(p, 5, model="4.6")
    err = {}
    for lmax in (80, 320):
        c320 = bgk.solve_forward(vr, lmax, singular_exponent=p)
        err[lmax] = np.abs(c320[:5] / exact - 1)
    measured_320 = {1 / 3: 1.13e-4, 0.5: 1.24e-3, 2 / 3: 9.15e-3}[p]
    assert err[320][0] < 2.5 * measured_320
    rate = err[80] / err[320]
    np.testing.assert_allclose(rate[[0, 1, 4]], 4 ** (2 - 2 * p), rtol=0.1)
    paper = bgk.bgk_spectrum(p, 1)[0]
    factor = 4 * (1 - p) / ((2 - p) * (2 - p + p * p))
    assert abs(c320[0] / paper - factor) < 2 * err[320][0]


@pytest.mark.parametrize("p", [1 / 3, 0.5, 2 / 3])
def test_residual_of_eq47_in_eq46(p):
    """Eq. (4.7) plugged into (4.6) leaves r_1/Q_1 -> 3p^2/((1-p^2)(4-p^2)) (0.267 at
    p = 1/2), not 0; the exact inverse's residual falls with lmax.

    Truncated at lmax = 300 the first 10 residuals equal the lmax -> inf closed form up
    to the truncation tail, measured 3.7e-6, 8.3e-6, 1.5e-5 Q_1 (p = 1/3, 1/2, 2/3;
    ~lmax^-2): tolerance 3e-5 Q_1.  The exact-inverse residual at l = 1 is < 1e-5 Q_1
    (measured 3e-6 ... 7e-6) and falls with lmax.
    """
    vr = lambda x: (1.0 - x) ** p  # noqa: E731
    lmax = 300
    r47 = bgk.forward_residual(vr, bgk.bgk_spectrum(p, lmax), singular_exponent=p)
    assert abs(r47[0] - 3 * p * p / ((1 - p * p) * (4 - p * p))) < 2e-4 * r47[0]
    np.testing.assert_allclose(r47[:10], _r_inf(p, 10), rtol=0, atol=3e-5)
    r46 = bgk.forward_residual(vr, bgk.bgk_spectrum(p, lmax, model="4.6"), singular_exponent=p)
    assert abs(r46[0]) < 1e-5
    r46_small = bgk.forward_residual(
        vr, bgk.bgk_spectrum(p, 30, model="4.6"), singular_exponent=p
    )
    assert abs(r46[0]) < abs(r46_small[0]) / 10


def test_smooth_rate_exact_convergence_and_general_vr():
    """Smooth v_r: F = (3/2) Q_1 (x + kappa)/v_r is analytic, the truncated system converges
    exponentially to the exact inverse (1e-11 at lmax = 40); eq. (4.7) differs by 26 %
    at l = 1 for v_r = e^x; for even v_r (kappa = 0) eq. (4.7) is exact."""
    c = bgk.solve_forward(np.exp, 40, q1=2.0)
    ref = bgk_reference.spectrum_from_vr(np.exp, 5, q1=2.0, model="4.6")
    np.testing.assert_allclose(c[:5], ref, rtol=1e-11)
    paper = bgk_reference.spectrum_from_vr(np.exp, 1, q1=2.0)
    assert abs(c[0] / paper[0] - 1) > 0.2
    even = lambda x: 1.0 + 0.5 * x * x  # noqa: E731
    c = bgk.solve_forward(even, 40)
    ref = bgk_reference.spectrum_from_vr(even, 5)
    np.testing.assert_allclose(c[[0, 2, 4]], ref[[0, 2, 4]], rtol=1e-11)
    assert np.all(np.abs(c[[1, 3]]) < 1e-14)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_spectrum_from_vr_matches_closed_form(p):
    """Generic quadrature path with singular_exponent = p reproduces both closed forms."""
    vr = lambda x: 3.0 * (1.0 - x) ** p  # noqa: E731
    for model in bgk.MODELS:
        got = bgk_reference.spectrum_from_vr(vr, 50, q1=1.5, model=model, singular_exponent=p)
        want = bgk.bgk_spectrum(p, 50, q1=1.5, nu=3.0, model=model)
        np.testing.assert_allclose(got, want, rtol=1e-11)


def test_forward_matrix_legendre_vs_jacobi():
    """Gauss-Legendre on (1-x)^p converges only algebraically (~n^-(2+2p)): with the
    default 4 lmax + 256 nodes the matrix is good to 5e-6 (p = 0.2) ... 1e-9 (p = 0.9);
    Gauss-Jacobi with the (1-x)^p weight is exact (here self-consistent to 1e-13)."""
    for p, tol in ((0.2, 1e-5), (0.5, 1e-6), (0.9, 1e-9)):
        vr = lambda x: (1.0 - x) ** p  # noqa: E731
        mj = bgk.forward_matrix(vr, 50, singular_exponent=p)
        mj2 = bgk.forward_matrix(vr, 50, singular_exponent=p, n_nodes=200)
        mg = bgk.forward_matrix(vr, 50)
        scale = np.abs(mj).max()
        assert np.abs(mj2 - mj).max() < 1e-13 * scale
        assert np.abs(mg - mj).max() < tol * scale
        # structure: M = B diag(k(k+1)(2k+1)/2) with B symmetric
        k = np.arange(1, 51)
        b = mj / (k * (k + 1) * (2 * k + 1) / 2)
        np.testing.assert_allclose(b, b.T, rtol=0, atol=1e-14 * np.abs(b).max())


# --------------------------------------------------------------------------------------
# fit of p
# --------------------------------------------------------------------------------------
N_DRAWS = 200
COVERAGE = 0.682689  # P(|z| < 1)
# Binomial standard deviation of the hit fraction: sqrt(0.6827 * 0.3173 / 200) = 0.0329.
# Allow 3 sigma: [0.584, 0.781], i.e. 117 ... 156 hits of 200 (the seeds are fixed, so
# the test is deterministic; a correct interval fails it with probability ~0.3 %).
COVERAGE_TOL = 3 * math.sqrt(COVERAGE * (1 - COVERAGE) / N_DRAWS)
# chi2_min / dof with dof = 27: standard deviation sqrt(2/27) = 0.27 per draw, 0.019 for
# the mean of 200 draws; allow 3 sigma = 0.058 around 1.
CHI2_TOL = 3 * math.sqrt(2 / 27) / math.sqrt(N_DRAWS)


@pytest.mark.parametrize("p_true,seed", [(0.5, 1), (1 / 3, 2), (2 / 3, 3)])
def test_fit_coverage_and_chi2(p_true, seed):
    """200 synthetic spectra, l = 1..30: r_l = A R_l(p) + sigma_l z_l with a random common
    normalisation A = 1 + 0.05 z (the noisy C_hat_1) and sigma_l = 0.05 R_l + 0.002."""
    ell = np.arange(1, 31)
    r_true = bgk.bgk_ratio(p_true, 30)
    sigma = 0.05 * r_true + 0.002
    rng = np.random.default_rng(seed)
    hits, chi2, ps = 0, [], []
    for _ in range(N_DRAWS):
        amp = 1 + 0.05 * rng.standard_normal()
        ratio = amp * r_true + sigma * rng.standard_normal(30)
        ratio[0] = 1.0
        fit = bgk.fit_p(ell, ratio, sigma)
        assert (fit.ell_min, fit.ell_max, fit.n_points, fit.dof) == (2, 30, 29, 27)
        assert fit.p_lo <= fit.p <= fit.p_hi
        hits += fit.p_lo <= p_true <= fit.p_hi
        chi2.append(fit.chi2_dof)
        ps.append(fit.p)
    assert abs(hits / N_DRAWS - COVERAGE) <= COVERAGE_TOL
    assert abs(np.mean(chi2) - 1) <= CHI2_TOL
    # no bias beyond 3 standard errors of the mean of 200 fits
    assert abs(np.mean(ps) - p_true) < 3 * np.std(ps) / math.sqrt(N_DRAWS)


def test_fit_realistic_noise_on_chat():
    """Noise on C_hat_l (incl. C_hat_1), then divided: the free normalisation absorbs the
    common C_hat_1 fluctuation; p = 1/2 is recovered without bias and ~68 % coverage."""
    ell = np.arange(1, 31)
    c = bgk.bgk_spectrum(0.5, 30)
    sig_c = 0.03 * c + 0.002 * c[0]
    rng = np.random.default_rng(7)
    hits, ps = 0, []
    for _ in range(N_DRAWS):
        chat = c + sig_c * rng.standard_normal(30)
        fit = bgk.fit_p(ell, chat / chat[0], sig_c / chat[0])
        hits += fit.p_lo <= 0.5 <= fit.p_hi
        ps.append(fit.p)
    assert abs(hits / N_DRAWS - COVERAGE) <= COVERAGE_TOL
    assert abs(np.mean(ps) - 0.5) < 3 * np.std(ps) / math.sqrt(N_DRAWS)


def test_fit_noise_free_and_options():
    """Noise-free data: p recovered to 1e-7 with every option; lmax/mask select points."""
    ell = np.arange(1, 41)
    for model in bgk.MODELS:
        r = bgk.bgk_ratio(0.4, 40, model=model)
        err = 0.01 * r
        for free in (True, False):
            fit = bgk.fit_p(ell, r, err, free_norm=free, model=model)
            assert abs(fit.p - 0.4) < 1e-7
            assert fit.chi2_dof < 1e-10
            assert not fit.at_boundary and not fit.interval_clipped
    r = bgk.bgk_ratio(0.4, 40)
    r_bad = r.copy()
    r_bad[30:] = np.nan  # noise-dominated tail, excluded
    fit = bgk.fit_p(ell, r_bad, 0.01 * r, lmax=30)
    assert (fit.ell_min, fit.ell_max, fit.n_points) == (2, 30, 29)
    mask = ell % 2 == 0
    mask[30:] = False
    fit = bgk.fit_p(ell, r_bad, 0.01 * r, mask=mask)
    assert fit.n_points == 15 and fit.ell_max == 30 and abs(fit.p - 0.4) < 1e-7
    # order of the input does not matter
    perm = np.random.default_rng(0).permutation(40)
    fit2 = bgk.fit_p(ell[perm], r[perm], 0.01 * r[perm])
    assert abs(fit2.p - 0.4) < 1e-7


def test_fit_model_ambiguity_is_small_with_free_norm():
    """Fitting the 4.6 shape to noise-free 4.7 data: free normalisation shifts p by < 0.03
    (l = 2..30), a fixed one by much more -- the reason for the default."""
    ell = np.arange(1, 31)
    for p in (1 / 3, 0.5, 2 / 3):
        r = bgk.bgk_ratio(p, 30)
        err = 0.05 * r
        free = bgk.fit_p(ell, r, err, model="4.6")
        fixed = bgk.fit_p(ell, r, err, model="4.6", free_norm=False)
        assert abs(free.p - p) < 0.03
        assert abs(fixed.p - p) > abs(free.p - p)


def test_fit_boundary_flags():
    """Data steeper than any BGK shape (l^-5) or shallower (l^-1.5): minimum on the edge of
    (0, 1), flagged, no exception."""
    ell = np.arange(1, 31).astype(float)
    for power, edge in ((5.0, 0.0), (1.5, 1.0)):
        r = ell**-power
        fit = bgk.fit_p(ell, r, 0.01 * r)
        assert fit.at_boundary and fit.interval_clipped
        assert abs(fit.p - edge) < 1e-5
        assert (fit.p_lo == 0.0) if edge == 0.0 else (fit.p_hi == 1.0)


# --------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------
def _raises(name, fn, *args, **kw):
    with pytest.raises(ValueError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert msg.startswith(name), msg
    assert "\n" not in msg


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), "0.5", None, True, 1j])
def test_bad_p(p):
    _raises("p ", bgk.bgk_spectrum, p, 10)
    _raises("p ", bgk.bgk_ratio, p, 10)
    _raises("p ", bgk_reference.bgk_spectrum_quadrature, p, 10)


@pytest.mark.parametrize("lmax", [0, -3, 2.5, float("nan"), float("inf"), "10", None, False])
def test_bad_lmax(lmax):
    _raises("lmax ", bgk.bgk_spectrum, 0.5, lmax)
    _raises("lmax ", bgk.bgk_ratio, 0.5, lmax)
    _raises("lmax ", bgk.forward_matrix, np.exp, lmax)
    _raises("lmax ", bgk.solve_forward, np.exp, lmax)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "1", None])
def test_bad_q1_nu(bad):
    _raises("q1 ", bgk.bgk_spectrum, 0.5, 10, q1=bad)
    _raises("nu ", bgk.bgk_spectrum, 0.5, 10, nu=bad)
    _raises("q1 ", bgk.solve_forward, np.exp, 10, q1=bad)


def test_bad_misc():
    _raises("model ", bgk.bgk_ratio, 0.5, 10, model="4.8")
    _raises("v_r ", bgk.forward_matrix, "exp", 10)
    _raises("v_r ", bgk.forward_matrix, lambda x: np.where(x > 0.5, np.inf, 1.0), 10)
    _raises("v_r ", bgk.forward_matrix, lambda x: x[:3], 10)
    _raises("singular_exponent ", bgk.forward_matrix, np.exp, 10, singular_exponent=1.0)
    _raises("n_nodes ", bgk.forward_matrix, np.exp, 10, n_nodes=1)
    _raises("cl ", bgk.forward_residual, np.exp, [1.0, np.nan])


def test_bad_fit_input():
    ell = np.arange(1, 11)
    r = bgk.bgk_ratio(0.5, 10)
    e = 0.1 * r
    _raises("ell ", bgk.fit_p, ell - 1, r, e)
    _raises("ell ", bgk.fit_p, ell + 0.5, r, e)
    _raises("ell ", bgk.fit_p, np.r_[ell[:-1], 2], r, e)
    _raises("ell ", bgk.fit_p, ["a"] * 10, r, e)
    _raises("ratio ", bgk.fit_p, ell, r[:-1], e)
    _raises("ratio_err ", bgk.fit_p, ell, r, e[:-1])
    _raises("ratio ", bgk.fit_p, ell, np.r_[r[:-1], np.nan], e)
    _raises("ratio_err ", bgk.fit_p, ell, r, np.r_[e[:-1], 0.0])
    _raises("ratio_err ", bgk.fit_p, ell, r, np.r_[e[:-1], np.inf])
    _raises("lmin ", bgk.fit_p, ell, r, e, lmin=0)
    _raises("lmax ", bgk.fit_p, ell, r, e, lmax=1)
    _raises("mask ", bgk.fit_p, ell, r, e, mask=np.ones(3, bool))
    _raises("fit ", bgk.fit_p, ell, r, e, lmax=3)
    _raises("model ", bgk.fit_p, ell, r, e, model="x")
    _raises("free_norm ", bgk.fit_p, ell, r, e, free_norm="yes")
