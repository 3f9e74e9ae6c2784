r"""BGK-like ansatz for the steady-state angular power spectrum (Mertsch & Ahlers 2015, section 4).

The two-particle Boltzmann hierarchy closed with a relative scattering rate ``v_r(x)``
of the opening angle ``x = p1 . p2`` of two trajectories has the steady state

.. math::

    Q_1 \delta_{l1} = \sum_{k \ge 1} C_k\, k(k+1) \frac{2k+1}{2}
                      \int_{-1}^{1} v_r(x) P_l(x) P_k(x)\, dx              \qquad (4.6)

which the paper inverts to

.. math::

    C_l = \frac{3}{2} \frac{Q_1}{l(l+1)} \int_{-1}^{1} \frac{x P_l(x)}{v_r(x)}\, dx,
    \qquad Q_1 = K_{ij}\partial_i n\, \partial_j n / (6\pi).                 \qquad (4.7)

For ``v_r = nu (1 - x)^p``, ``0 < p < 1``, eq. (4.7) has the closed form

.. math::

    \frac{C_l}{C_1} = \prod_{j=0}^{l-2}\frac{p+j}{4-p+j}\;
                      \frac{1 - p(1-p)/(l(l+1))}{1 - p(1-p)/2},

and the exact solution of (4.6) for ``l >= 1`` drops the last factor (``model="4.6"``):
eq. (4.7) is not an exact inverse of (4.6), because (4.6) leaves the monopole free.
Both ratios differ by an almost constant factor for ``l >= 2``, so a fit with a free
normalisation gives nearly the same ``p`` with either. The derivations, the accuracy
measurements and the comparison are in docs/bgk.md; the independent quadrature
evaluations that check the closed forms live with the tests (``tests/bgk_reference.py``).

Units: ``Q_1`` and ``nu`` in whatever units the caller uses; ``C_l`` comes out in units
of ``Q_1 / nu``. Everything else (``p``, ``x``, ``l``, ratios ``C_l / C_1``) is
dimensionless.

Numerics of the closed form: the running product is accumulated up to ``l = 32``
(rounding <~ 1e-14) and continued in log space with a Stirling series for the
*difference* ``ln Gamma(z+a) - ln Gamma(z+b)`` (written with ``log1p`` so that the large
terms cancel analytically); ~1e-14 relative at any ``l``.

Functions
---------
bgk_spectrum, bgk_ratio
    The closed forms, any ``0 < p < 1``, any ``l`` (tested to ``10^4``).
forward_matrix, solve_forward, forward_residual
    The truncated system (4.6) for a user-supplied ``v_r(x)`` (Gauss-Jacobi or
    Gauss-Legendre quadrature).
fit_p, BGKFit
    Fit of ``p`` to a measured ``C_hat_l / C_hat_1``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import linalg, optimize, special

from .errors import InputError

__all__ = [
    "BGKFit",
    "MODELS",
    "bgk_ratio",
    "bgk_spectrum",
    "fit_p",
    "sided_weights",
    "forward_matrix",
    "forward_residual",
    "solve_forward",
]

#: Accepted values of the ``model`` argument: ``"4.7"`` is the paper's eq. (4.7);
#: ``"4.6"`` is the exact solution of eq. (4.6) for ``l >= 1`` (module docstring).
MODELS = ("4.7", "4.6")

#: Largest ``lmax`` accepted by the closed forms (memory: one float64 per ``l``).
LMAX_CLOSED_FORM = 10_000_000
#: Largest ``lmax`` accepted by the forward relation (O(lmax^2) memory).
LMAX_QUADRATURE = 2_000
#: Largest number of quadrature nodes accepted.
NODES_MAX = 10_000

# Running product up to this l, Stirling-series log space beyond.
_L_SWITCH = 32
# B_{2k} / (2k (2k-1)), k = 1..8: coefficients of the Stirling series of ln Gamma.
_STIRLING = np.array(
    [1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156, -3617 / 122400]
)
# Fitting range for p: the open interval (0, 1), kept this far from its ends.
_P_EDGE = 1e-6


# --------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------
def _real(name: str, value, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a real number {allowed}, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite real number {allowed}, got {value!r}")
    return value


def _check_p(p) -> float:
    allowed = "in the open interval (0, 1)"
    p = _real("p", p, allowed)
    if not 0.0 < p < 1.0:
        raise InputError(f"p must be {allowed}, got {p!r}")
    return p


def _check_positive(name: str, value) -> float:
    allowed = "in (0, inf)"
    value = _real(name, value, allowed)
    if not value > 0.0:
        raise InputError(f"{name} must be {allowed}, got {value!r}")
    return value


def _check_int(name: str, value, lo: int, hi: int) -> int:
    allowed = f"an integer in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            fv = float(value)
            if math.isfinite(fv) and fv == int(fv):
                value = int(fv)
            else:
                raise InputError(f"{name} must be {allowed}, got {value!r}")
        else:
            raise InputError(f"{name} must be {allowed}, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise InputError(f"{name} must be {allowed}, got {value!r}")
    return value


def _check_model(model) -> str:
    if model not in MODELS:
        raise InputError(f"model must be one of {MODELS}, got {model!r}")
    return model


def _check_exponent(a) -> float | None:
    if a is None:
        return None
    allowed = "in (-1, 1) or None"
    a = _real("singular_exponent", a, allowed)
    if not -1.0 < a < 1.0:
        raise InputError(f"singular_exponent must be {allowed}, got {a!r}")
    return a


def _check_nodes(n_nodes, default: int) -> int:
    if n_nodes is None:
        return min(default, NODES_MAX)
    return _check_int("n_nodes", n_nodes, 2, NODES_MAX)


# --------------------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------------------
def _lgamma_diff(z: np.ndarray, a, b) -> np.ndarray:
    """``ln Gamma(z + a) - ln Gamma(z + b)`` for ``z + min(a, b) >= 16`` (dimensionless).

    ``z``, ``a``, ``b`` broadcast against each other (floats or arrays).

    Stirling series with 8 Bernoulli terms (truncation < 1e-21 there); the leading terms
    are combined as ``(w2 - 1/2) log1p(d / w2) + d ln w1 - d`` with ``w1 = z + a``,
    ``w2 = z + b``, ``d = a - b``, so that no large numbers cancel.
    """
    w1 = z + a
    w2 = z + b
    d = a - b
    out = (w2 - 0.5) * np.log1p(d / w2) + d * np.log(w1) - d
    inv1 = 1.0 / w1
    inv2 = 1.0 / w2
    sq1 = inv1 * inv1
    sq2 = inv2 * inv2
    s1 = np.zeros_like(inv1)
    s2 = np.zeros_like(inv2)
    for c in _STIRLING[::-1]:  # Horner in 1/w^2
        s1 = s1 * sq1 + c
        s2 = s2 * sq2 + c
    return out + s1 * inv1 - s2 * inv2


def _shape_46(p: np.ndarray, lmax: int) -> np.ndarray:
    """``t_l = prod_{j=0}^{l-2} (p+j)/(4-p+j)`` for ``l = 1..lmax`` (``t_1 = 1``).

    ``p`` is a 1-D array of exponents (validated by the caller); returns
    ``(p.size, lmax)``.
    """
    pc = p[:, None]
    t = np.empty((p.size, lmax))
    t[:, 0] = 1.0
    n_prod = min(lmax, _L_SWITCH)
    if n_prod > 1:
        j = np.arange(n_prod - 1, dtype=float)
        t[:, 1:n_prod] = np.cumprod((pc + j) / (4.0 - pc + j), axis=1)
    if lmax > _L_SWITCH:
        l = np.arange(_L_SWITCH + 1, lmax + 1, dtype=float)
        # ln t_l - ln t_L = D(l) - D(L),  D(l) = ln Gamma(l-1+p) - ln Gamma(l+3-p)
        d_ref = _lgamma_diff(np.array([float(_L_SWITCH)]), pc - 1.0, 3.0 - pc)
        d = _lgamma_diff(l, pc - 1.0, 3.0 - pc)
        t[:, _L_SWITCH:] = t[:, _L_SWITCH - 1 : _L_SWITCH] * np.exp(d - d_ref)
    return t


def _ratio(p: np.ndarray, lmax: int, model: str) -> np.ndarray:
    """Unvalidated :func:`bgk_ratio` for a 1-D array of ``p``: shape ``(p.size, lmax)``."""
    t = _shape_46(p, lmax)
    if model == "4.6":
        return t
    l = np.arange(1, lmax + 1, dtype=float)
    q = (p * (1.0 - p))[:, None]
    return t * ((1.0 - q / (l * (l + 1.0))) / (1.0 - 0.5 * q))


def bgk_ratio(p: float, lmax: int, *, model: str = "4.7") -> np.ndarray:
    r"""Ratio ``C_l / C_1`` of the BGK-like ansatz for ``v_r = nu (1 - x)^p``.

    .. math::

        \frac{C_l}{C_1} = \prod_{j=0}^{l-2}\frac{p+j}{4-p+j}\;
            \frac{1 - p(1-p)/(l(l+1))}{1 - p(1-p)/2}

    for eq. (4.7); ``model="4.6"`` drops the last factor (exact solution of eq. 4.6).

    Parameters
    ----------
    p : float
        Exponent of the relative scattering rate, ``0 < p < 1`` (dimensionless).
    lmax : int
        Largest multipole, ``>= 1``.
    model : {"4.7", "4.6"}, optional
        ``"4.7"`` (default): the paper's eq. (4.7).  ``"4.6"``: the exact solution of
        eq. (4.6) for ``l >= 1`` (see the module docstring for the difference).

    Returns
    -------
    numpy.ndarray
        Shape ``(lmax,)``; entry ``i`` is ``C_{i+1} / C_1`` (dimensionless, entry 0 is 1).
        Relative accuracy ~1e-14 for any ``l``; positive, decreasing, ``~ l^-(4-2p)``.

    Raises
    ------
    ValueError
        If ``p`` is not in (0, 1), ``lmax`` not an integer >= 1 or ``model`` unknown.
    """
    p = _check_p(p)
    lmax = _check_int("lmax", lmax, 1, LMAX_CLOSED_FORM)
    model = _check_model(model)
    return _ratio(np.array([p]), lmax, model)[0]


def _c1(p: float, model: str) -> float:
    """``C_1`` in units of ``Q_1 / nu``."""
    if model == "4.7":
        return 0.75 * 2.0 ** (1.0 - p) * (2.0 - p + p * p) / ((1.0 - p) * (2.0 - p) * (3.0 - p))
    return 3.0 * 2.0 ** (1.0 - p) / ((2.0 - p) ** 2 * (3.0 - p))


def bgk_spectrum(
    p: float, lmax: int, q1: float = 1.0, nu: float = 1.0, *, model: str = "4.7"
) -> np.ndarray:
    r"""Steady-state ``C_l`` of the BGK-like ansatz with ``v_r(x) = nu (1 - x)^p``.

    Closed form of eq. (4.7) (derivation in docs/bgk.md):

    .. math::

        C_l = \frac{3}{2}\frac{Q_1}{\nu} 2^{1-p}\frac{\Gamma(1-p)}{\Gamma(p)}
              \frac{\Gamma(l-1+p)}{\Gamma(l+3-p)}\left[1 - \frac{p(1-p)}{l(l+1)}\right].

    Parameters
    ----------
    p : float
        Exponent of the relative scattering rate, ``0 < p < 1`` (dimensionless).
    lmax : int
        Largest multipole, ``>= 1``.
    q1 : float, optional
        Dipole source ``Q_1 = K_ij d_i n d_j n / (6 pi)`` (> 0, any units; default 1).
    nu : float, optional
        Rate normalisation of ``v_r`` (> 0, any units; default 1).
    model : {"4.7", "4.6"}, optional
        ``"4.7"`` (default): the paper's eq. (4.7).  ``"4.6"``: the exact solution of
        eq. (4.6) for ``l >= 1``, ``3 (Q_1/nu) (1-p)/(2-p) 2^{1-p} Gamma(1-p)/Gamma(p)
        Gamma(l-1+p)/Gamma(l+3-p)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(lmax,)``; entry ``i`` is ``C_{i+1}`` in units of ``q1 / nu``
        (relative accuracy ~1e-14 for any ``l``).

    Raises
    ------
    ValueError
        On ``p`` outside (0, 1), ``lmax < 1``, non-positive or non-finite ``q1``/``nu``.
    """
    p = _check_p(p)
    lmax = _check_int("lmax", lmax, 1, LMAX_CLOSED_FORM)
    q1 = _check_positive("q1", q1)
    nu = _check_positive("nu", nu)
    model = _check_model(model)
    return (q1 / nu) * _c1(p, model) * bgk_ratio(p, lmax, model=model)


# --------------------------------------------------------------------------------------
# quadrature rules of the forward relation
# --------------------------------------------------------------------------------------
def _legendre_table(x, lmax: int) -> np.ndarray:
    """Legendre polynomials ``P_l(x)`` for ``l = 0..lmax`` by the three-term recurrence.

    Parameters
    ----------
    x : array_like
        Points in [-1, 1] (dimensionless), 1-D.
    lmax : int
        Largest degree, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        Shape ``(lmax + 1, len(x))``; row ``l`` is ``P_l(x)`` (forward recurrence, stable
        on [-1, 1]).
    """
    x = np.asarray(x, dtype=float).ravel()
    lmax = _check_int("lmax", lmax, 0, LMAX_QUADRATURE + 2)
    P = np.empty((lmax + 1, x.size))
    P[0] = 1.0
    if lmax >= 1:
        P[1] = x
    for l in range(1, lmax):
        P[l + 1] = ((2 * l + 1) * x * P[l] - l * P[l - 1]) / (l + 1)
    return P


def _jacobi_and_derivative(n: int, alpha: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``P_n^{(alpha, 0)}(x)`` and its derivative by the three-term recurrence."""
    a = alpha
    p_prev = np.ones_like(x)
    p = 0.5 * (a + 2.0) * x + 0.5 * a  # P_1 = (a+1) + (a+2)(x-1)/2
    for k in range(2, n + 1):
        c = 2.0 * k + a
        p_prev, p = p, (
            (c - 1.0) * (c * (c - 2.0) * x + a * a) * p - 2.0 * (k + a - 1.0) * (k - 1.0) * c * p_prev
        ) / (2.0 * k * (k + a) * (c - 2.0))
    c = 2.0 * n + a
    # (2n+a)(1-x^2) P_n' = n[a - (2n+a) x] P_n + 2 (n+a) n P_{n-1}
    dp = (n * (a - c * x) * p + 2.0 * (n + a) * n * p_prev) / (c * (1.0 - x * x))
    return p, dp


def _gauss_jacobi(n: int, alpha: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Jacobi rule for ``int_{-1}^{1} (1 - x)^alpha f(x) dx`` (``beta = 0``).

    Nodes from ``scipy.special.roots_jacobi`` / ``roots_legendre`` (Golub-Welsch),
    polished by two Newton steps on ``P_n^{(alpha,0)}`` evaluated by its recurrence;
    weights from ``w_i = 2^{alpha+1} / ((1 - x_i^2) P_n'(x_i)^2)``.  The polishing brings
    the weights from ~1e-9 (scipy, ``n ~ 1000``) to ~1e-15 relative accuracy.

    Parameters
    ----------
    n : int
        Number of nodes, ``2 <= n <= 10000``; exact for polynomials of degree ``2n - 1``.
    alpha : float, optional
        Exponent of the weight, ``alpha > -1`` (0: Gauss-Legendre).

    Returns
    -------
    x, w : numpy.ndarray
        Nodes (ascending, in (-1, 1)) and weights, shape ``(n,)``.
    """
    n = _check_int("n_nodes", n, 2, NODES_MAX)
    alpha = _real("alpha", alpha, "in (-1, inf)")
    if not alpha > -1.0:
        raise InputError(f"alpha must be in (-1, inf), got {alpha!r}")
    if alpha == 0.0:
        x = special.roots_legendre(n)[0]
    else:
        x = special.roots_jacobi(n, alpha, 0.0)[0]
    for _ in range(2):
        p, dp = _jacobi_and_derivative(n, alpha, x)
        x = x - p / dp
    _, dp = _jacobi_and_derivative(n, alpha, x)
    w = 2.0 ** (alpha + 1.0) / ((1.0 - x * x) * dp * dp)
    return x, w


def _nodes(alpha: float | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Jacobi nodes for weight ``(1-x)^alpha`` (Gauss-Legendre if ``alpha`` None)."""
    return _gauss_jacobi(n, 0.0 if alpha is None else alpha)


def _eval_vr(v_r: Callable, x: np.ndarray) -> np.ndarray:
    if not callable(v_r):
        raise InputError(f"v_r must be a callable v_r(x) on [-1, 1], got {v_r!r}")
    val = np.asarray(v_r(x), dtype=float)
    val = np.broadcast_to(val, x.shape) if val.ndim == 0 else val
    if val.shape != x.shape:
        raise InputError(
            f"v_r must return an array of the shape of its argument {x.shape}, got {val.shape}"
        )
    if not np.all(np.isfinite(val)):
        raise InputError("v_r must return finite values at all quadrature nodes in (-1, 1)")
    return val


# --------------------------------------------------------------------------------------
# forward relation (4.6)
# --------------------------------------------------------------------------------------
def _gram(v_r, lmax, singular_exponent, n_nodes) -> np.ndarray:
    """``B_lk = int v_r P_l P_k dx`` for ``l, k = 1..lmax`` (symmetric)."""
    a = _check_exponent(singular_exponent)
    # Gauss-Jacobi with polynomial g: exact for n >= lmax + 1 + deg(g)/2.
    # Gauss-Legendre on a non-smooth v_r: algebraic convergence, so more nodes.
    n = _check_nodes(n_nodes, (lmax + 64) if a is not None else (4 * lmax + 256))
    x, w = _nodes(a, n)
    vr = _eval_vr(v_r, x)
    g = vr if a is None else vr / (1.0 - x) ** a
    P = _legendre_table(x, lmax)[1:]
    return (P * (w * g)) @ P.T


def forward_matrix(
    v_r: Callable,
    lmax: int,
    *,
    singular_exponent: float | None = None,
    n_nodes: int | None = None,
) -> np.ndarray:
    r"""Truncated matrix of eq. (4.6): ``M_lk = k(k+1) (2k+1)/2 int v_r P_l P_k dx``.

    Eq. (4.6) reads ``sum_k M_lk C_k = Q_1 delta_{l1}`` for ``l, k = 1..lmax``.
    The monopole ``k = 0`` drops out (``k(k+1) = 0``) and the ``l = 0`` equation is not
    part of the steady state (module docstring), so both are excluded.

    Parameters
    ----------
    v_r : callable
        Relative scattering rate ``v_r(x)``, vectorised over numpy arrays (units of
        ``nu``); finite on (-1, 1).
    lmax : int
        Truncation, ``1 <= lmax <= 2000``.
    singular_exponent : float or None, optional
        ``a`` in ``v_r(x) = (1 - x)^a g(x)`` with ``g`` smooth, ``-1 < a < 1``.  If given,
        Gauss-Jacobi quadrature with weight ``(1 - x)^a`` integrates ``g P_l P_k``
        (``g = v_r / (1-x)^a`` at the nodes): exact for polynomial ``g`` of degree
        ``d`` with ``n >= lmax + 1 + d/2`` nodes.  This is the accurate choice for
        ``v_r = (1-x)^p``, which is continuous but not analytic at ``x = 1``:
        Gauss-Legendre converges only algebraically there (measured in ``docs/bgk.md``).
    n_nodes : int, optional
        Number of nodes; default ``lmax + 64`` (Gauss-Jacobi) or ``4 lmax + 256``
        (Gauss-Legendre).

    Returns
    -------
    numpy.ndarray
        Shape ``(lmax, lmax)``; ``M[l-1, k-1]`` in units of ``[v_r]``.
    """
    lmax = _check_int("lmax", lmax, 1, LMAX_QUADRATURE)
    B = _gram(v_r, lmax, singular_exponent, n_nodes)
    k = np.arange(1, lmax + 1, dtype=float)
    return B * (k * (k + 1.0) * (2.0 * k + 1.0) / 2.0)


def solve_forward(
    v_r: Callable,
    lmax: int,
    q1: float = 1.0,
    *,
    singular_exponent: float | None = None,
    n_nodes: int | None = None,
) -> np.ndarray:
    """Solve the truncated system (4.6), ``l, k = 1..lmax``, for ``C_1..C_lmax``.

    ``M = B D`` with ``B_lk = int v_r P_l P_k`` symmetric positive definite (for
    ``v_r > 0`` almost everywhere) and ``D = diag(k(k+1)(2k+1)/2)``; ``B y = Q_1 e_1`` is
    solved by Cholesky and ``C = D^-1 y``.  As ``lmax -> inf`` the solution converges to
    the exact inverse of (4.6) (for ``v_r = nu (1-x)^p``: ``bgk_spectrum(..., model="4.6")``),
    not to eq. (4.7).

    Parameters
    ----------
    v_r, lmax, singular_exponent, n_nodes
        As in :func:`forward_matrix`.
    q1 : float, optional
        Dipole source ``Q_1`` (> 0, any units; default 1).

    Returns
    -------
    numpy.ndarray
        Shape ``(lmax,)``; ``C_l`` for ``l = 1..lmax`` in units of ``q1 / [v_r]``.
    """
    lmax = _check_int("lmax", lmax, 1, LMAX_QUADRATURE)
    q1 = _check_positive("q1", q1)
    B = _gram(v_r, lmax, singular_exponent, n_nodes)
    rhs = np.zeros(lmax)
    rhs[0] = q1
    try:
        y = linalg.solve(B, rhs, assume_a="pos")
    except linalg.LinAlgError as exc:  # v_r not positive: fall back to LU
        if "positive definite" not in str(exc):
            raise
        y = linalg.solve(B, rhs)
    k = np.arange(1, lmax + 1, dtype=float)
    return y / (k * (k + 1.0) * (2.0 * k + 1.0) / 2.0)


def forward_residual(
    v_r: Callable,
    cl,
    q1: float = 1.0,
    *,
    singular_exponent: float | None = None,
    n_nodes: int | None = None,
) -> np.ndarray:
    """Residual of a spectrum in the truncated eq. (4.6): ``M C - Q_1 e_1``.

    Parameters
    ----------
    v_r, singular_exponent, n_nodes
        As in :func:`forward_matrix`.
    cl : array_like
        ``C_1..C_lmax`` (units of ``q1 / [v_r]``); ``lmax = len(cl)``.
    q1 : float, optional
        Dipole source ``Q_1`` (> 0).

    Returns
    -------
    numpy.ndarray
        Shape ``(lmax,)``; entry ``l-1`` is the residual of equation ``l`` in units of
        ``q1`` (divide by ``q1`` for a relative residual).
    """
    cl = _finite_1d("cl", cl)
    q1 = _check_positive("q1", q1)
    lmax = _check_int("len(cl)", cl.size, 1, LMAX_QUADRATURE)
    r = forward_matrix(v_r, lmax, singular_exponent=singular_exponent, n_nodes=n_nodes) @ cl
    r[0] -= q1
    return r


# --------------------------------------------------------------------------------------
# fit of p
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BGKFit:
    """Result of :func:`fit_p` (all dimensionless).

    Attributes
    ----------
    p : float
        Best-fit exponent of ``v_r ~ (1-x)^p`` in (0, 1).
    p_err : float
        Symmetrised 1-sigma error ``(p_hi - p_lo) / 2``.
    p_lo, p_hi : float
        1-sigma interval from ``chi2(p) = chi2_min + 1`` (profiled over the normalisation
        when it is free); clipped to [0, 1] when the interval reaches a boundary.
    chi2_dof : float
        ``chi2_min / (n_points - n_params)``.
    ell_min, ell_max : int
        Smallest and largest multipole used.
    n_points : int
        Number of multipoles used.
    norm : float
        Best-fit normalisation ``A`` of ``A C_l/C_1`` (1 when not free).
    chi2 : float
        ``chi2_min``.
    dof : int
        ``n_points - n_params`` (``n_params`` = 2 with a free normalisation, else 1).
    at_boundary : bool
        The minimum lies at the edge of (0, 1) (within 1e-6): the data prefer ``p``
        outside the BGK range; ``p_lo``/``p_hi`` then only bound it from one side.
    interval_clipped : bool
        The ``delta chi2 = 1`` interval runs into 0 or 1 on at least one side.
    free_norm : bool
        Whether the normalisation was free.
    model : str
        ``"4.7"`` or ``"4.6"`` (see the module docstring).
    """

    p: float
    p_err: float
    p_lo: float
    p_hi: float
    chi2_dof: float
    ell_min: int
    ell_max: int
    n_points: int
    norm: float = 1.0
    chi2: float = float("nan")
    dof: int = 0
    at_boundary: bool = False
    interval_clipped: bool = False
    free_norm: bool = True
    model: str = "4.7"


def _finite_1d(name: str, a) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a 1-D array of finite real numbers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D array of finite real numbers")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} must be a 1-D array of finite real numbers (found nan/inf)")
    return arr


def _fit_points(ell, ratio, ratio_err, lmin, lmax, mask, free_norm, model, ratio_err_high=None):
    """Validate the input of :func:`fit_p` and select the points it fits.

    Returns ``(L, R, S, S_high, n_par, model)``: the multipoles used, their ratios and
    errors (in the order given; ``S_high`` is None for symmetric errors), the number of
    fitted parameters and the checked model.
    """
    try:
        ell_f = np.asarray(ell, dtype=float)
    except (TypeError, ValueError):
        raise InputError("ell must be a 1-D array of integers >= 1") from None
    if ell_f.ndim != 1 or ell_f.size == 0:
        raise InputError("ell must be a non-empty 1-D array of integers >= 1")
    if not np.all(np.isfinite(ell_f)) or np.any(ell_f < 1) or np.any(ell_f != np.round(ell_f)):
        raise InputError("ell must be a 1-D array of integers >= 1")
    ell_i = ell_f.astype(np.int64)
    if np.unique(ell_i).size != ell_i.size:
        raise InputError("ell must not contain duplicate multipoles")
    try:
        r = np.asarray(ratio, dtype=float)
        s = np.asarray(ratio_err, dtype=float)
    except (TypeError, ValueError):
        raise InputError("ratio and ratio_err must be 1-D arrays of real numbers") from None
    if r.shape != ell_i.shape:
        raise InputError(f"ratio must have the shape of ell {ell_i.shape}, got {r.shape}")
    if s.shape != ell_i.shape:
        raise InputError(f"ratio_err must have the shape of ell {ell_i.shape}, got {s.shape}")
    s_high = None
    if ratio_err_high is not None:
        try:
            s_high = np.asarray(ratio_err_high, dtype=float)
        except (TypeError, ValueError):
            raise InputError("ratio_err_high must be a 1-D array of real numbers") from None
        if s_high.shape != ell_i.shape:
            raise InputError(f"ratio_err_high must have the shape of ell {ell_i.shape}, got {s_high.shape}")
    lmin = _check_int("lmin", lmin, 1, LMAX_CLOSED_FORM)
    if lmax is not None:
        lmax = _check_int("lmax", lmax, lmin, LMAX_CLOSED_FORM)
    if not isinstance(free_norm, (bool, np.bool_)):
        raise InputError(f"free_norm must be True or False, got {free_norm!r}")
    model = _check_model(model)

    use = ell_i >= lmin
    if lmax is not None:
        use &= ell_i <= lmax
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != ell_i.shape or m.dtype != bool:
            raise InputError(f"mask must be a boolean array of the shape of ell {ell_i.shape}")
        use &= m
    n_par = 2 if free_norm else 1
    if use.sum() < n_par + 1:
        raise InputError(
            f"fit needs at least {n_par + 1} multipoles in [lmin, lmax] and mask, "
            f"got {int(use.sum())}"
        )
    L, R, S = ell_i[use], r[use], s[use]
    if not np.all(np.isfinite(R)):
        raise InputError("ratio must be finite at the multipoles used in the fit")
    if not np.all(np.isfinite(S)) or np.any(S <= 0):
        raise InputError("ratio_err must be finite and > 0 at the multipoles used in the fit")
    S_high = None
    if s_high is not None:
        S_high = s_high[use]
        if not np.all(np.isfinite(S_high)) or np.any(S_high <= 0):
            raise InputError("ratio_err_high must be finite and > 0 at the multipoles used in the fit")
    return L, R, S, S_high, n_par, model


def sided_weights(model, data, err_low, err_high) -> np.ndarray:
    """``1 / sigma^2`` with the error on the side of the model: ``err_high`` where the
    model lies above the data, ``err_low`` where it lies at or below.

    This is the usual treatment of asymmetric (Poisson-like) error bars in a least-squares
    fit: the residual is measured in units of the half of the error bar that points
    towards the model. ``chi2`` stays continuous (the switch happens where the residual
    is zero) and is the Gaussian ``chi2`` when ``err_low = err_high``. Arrays broadcast.
    """
    return np.where(model > data, 1.0 / np.asarray(err_high) ** 2, 1.0 / np.asarray(err_low) ** 2)


def _profile_norm_sided(m: np.ndarray, r: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray) -> np.ndarray:
    """The normalisation ``A`` minimising ``sum_l w_l(A) (r_l - A m_l)^2`` for each row of ``m``.

    ``w_l(A)`` is ``w_hi`` where ``A m_l > r_l`` (model above the data) and ``w_lo``
    elsewhere (:func:`sided_weights`). With ``m > 0`` the point ``l`` changes side at
    ``A = r_l / m_l``; between two such kinks the weights are fixed and the minimum is
    the weighted mean. ``chi2(A)`` is convex with a continuous derivative, so exactly
    one interval holds its own minimum: that one is returned (exact, no iteration).

    Parameters
    ----------
    m : numpy.ndarray, shape (P, n)
        Model shapes (> 0), one row per trial ``p``.
    r : numpy.ndarray, shape (n,)
        Data.
    w_lo, w_hi : numpy.ndarray, shape (n,)
        ``1 / err_low^2`` and ``1 / err_high^2``.

    Returns
    -------
    numpy.ndarray, shape (P,)
    """
    kinks = r[None, :] / m
    order = np.argsort(kinks, axis=1)
    ks = np.take_along_axis(kinks, order, axis=1)
    ms = np.take_along_axis(m, order, axis=1)
    rs = r[order]
    wl, wh = w_lo[order], w_hi[order]
    # region j (0..n): the j smallest kinks lie below A (those points have the model above the data)
    zero = np.zeros((m.shape[0], 1))
    num_hi = np.concatenate([zero, np.cumsum(wh * ms * rs, axis=1)], axis=1)
    den_hi = np.concatenate([zero, np.cumsum(wh * ms * ms, axis=1)], axis=1)
    num_lo = np.concatenate([np.cumsum((wl * ms * rs)[:, ::-1], axis=1)[:, ::-1], zero], axis=1)
    den_lo = np.concatenate([np.cumsum((wl * ms * ms)[:, ::-1], axis=1)[:, ::-1], zero], axis=1)
    amp = (num_hi + num_lo) / (den_hi + den_lo)
    lower = np.concatenate([np.full((m.shape[0], 1), -np.inf), ks], axis=1)
    upper = np.concatenate([ks, np.full((m.shape[0], 1), np.inf)], axis=1)
    scale = np.maximum(np.abs(ks).max(axis=1, keepdims=True), np.finfo(float).tiny)
    tol = 1e-12 * scale
    inside = (amp >= lower - tol) & (amp <= upper + tol)
    first = np.argmax(inside, axis=1)
    return amp[np.arange(m.shape[0]), first]


def _delta_chi2_interval(chi2, grid, cg, p_best: float, c_min: float) -> tuple[float, float, bool]:
    """The 1-sigma interval ``chi2(p) = c_min + 1`` around ``p_best`` by Brent's method.

    ``grid`` is the scan of ``[_P_EDGE, 1 - _P_EDGE]`` with ``cg = chi2(grid)``; an end
    that the interval does not reach inside it is clipped to 0 or 1. Returns
    ``(p_lo, p_hi, clipped)``.
    """
    lo_b, hi_b = _P_EDGE, 1.0 - _P_EDGE

    def excess(pp: float) -> float:
        return chi2(pp) - c_min - 1.0

    clipped = False
    # lower end: walk down the grid to the first point with delta chi2 > 1
    below = np.nonzero((grid < p_best) & (cg - c_min > 1.0))[0]
    if below.size:
        a = grid[below[-1]]
        p_lo = float(optimize.brentq(excess, a, p_best, xtol=1e-12))
    elif excess(lo_b) > 0 and p_best > lo_b:
        p_lo = float(optimize.brentq(excess, lo_b, p_best, xtol=1e-12))
    else:
        p_lo, clipped = 0.0, True
    above = np.nonzero((grid > p_best) & (cg - c_min > 1.0))[0]
    if above.size:
        b = grid[above[0]]
        p_hi = float(optimize.brentq(excess, p_best, b, xtol=1e-12))
    elif excess(hi_b) > 0 and p_best < hi_b:
        p_hi = float(optimize.brentq(excess, p_best, hi_b, xtol=1e-12))
    else:
        p_hi, clipped = 1.0, True

    return p_lo, p_hi, clipped


def fit_p(
    ell,
    ratio,
    ratio_err,
    *,
    lmin: int = 2,
    lmax: int | None = None,
    mask=None,
    free_norm: bool = True,
    model: str = "4.7",
    ratio_err_high=None,
) -> BGKFit:
    r"""Fit the BGK exponent ``p`` to a measured ``C_hat_l / C_hat_1``.

    Minimises ``chi2(p, A) = sum_l [(r_l - A R_l(p)) / sigma_l]^2`` with ``R_l(p)`` =
    :func:`bgk_ratio` and Gaussian, independent errors ``sigma_l``.  With a free
    normalisation (default) ``A`` is profiled out analytically,
    ``A(p) = sum w r R / sum w R^2``; ``p`` is found by a grid scan plus bounded Brent
    minimisation on (0, 1), and the 1-sigma interval by root-finding (Brent) of
    ``chi2(p) - chi2_min - 1``.

    Default range and normalisation, and why:

    * ``lmin = 2``: ``C_hat_1 / C_hat_1 = 1`` by construction and carries no information.
    * ``free_norm=True``: every ratio shares the noisy ``C_hat_1``; its fluctuation is a
      common factor ``1/(1 + eps_1)`` that the free ``A`` absorbs exactly (to first order
      in the noise), so the ``sigma_l`` can be the uncorrelated errors of ``C_hat_l`` over
      ``C_hat_1``.  It also absorbs the dipole physics the BGK ansatz does not describe
      (the standard-diffusion dipole) and makes ``p`` nearly independent of the
      eq. (4.6)/(4.7) ambiguity (their ratios differ by an almost constant factor for
      ``l >= 2``).  The price is that ``p`` is fixed by the *shape* of ``C_l`` for
      ``l >= 2`` only.  ``free_norm=False`` fixes ``A = 1`` (then the ``sigma_l`` must
      include the ``C_hat_1`` error, and its correlation is ignored).
    * ``lmax = None``: all supplied multipoles ``>= lmin``.  The caller must cut the
      noise-dominated tail (where ``C_hat_l`` is below the noise-variance level of
      Fig. 3, the subtracted estimator is no longer Gaussian-distributed around the
      signal and systematics of the noise subtraction dominate) with ``lmax`` or ``mask``;
      a data-driven cut (e.g. on ``r_l / sigma_l``) would bias ``p`` and is not applied.

    Parameters
    ----------
    ell : array_like of int
        Multipoles (>= 1, unique), any order.
    ratio : array_like
        Measured ``C_hat_l / C_hat_1`` (dimensionless).
    ratio_err : array_like
        Its 1-sigma Gaussian errors (> 0 where used).
    lmin : int, optional
        Smallest multipole used (default 2; >= 1).
    lmax : int, optional
        Largest multipole used (default: all).
    mask : array_like of bool, optional
        ``True`` = use this point (combined with ``lmin``/``lmax``).  Points not used
        may hold nan.
    free_norm : bool, optional
        Fit a free normalisation ``A`` (default True).
    model : {"4.7", "4.6"}, optional
        BGK relation used for ``R_l(p)`` (default the paper's eq. 4.7).
    ratio_err_high : array_like, optional
        Asymmetric errors: ``ratio_err`` is then the error below the data point and
        ``ratio_err_high`` the one above it (> 0 where used); each residual is divided
        by the error on the side of the model (:func:`sided_weights`) and a free
        normalisation is profiled exactly (:func:`_profile_norm_sided`). Default: the
        errors are symmetric, ``ratio_err``.

    Returns
    -------
    BGKFit

    Raises
    ------
    ValueError
        On malformed input (non-integer or duplicate ``ell``, shape mismatch, non-finite
        values or non-positive errors among the used points) or fewer used points than
        ``n_params + 1``.
    """
    L, R, S, S_high, n_par, model = _fit_points(ell, ratio, ratio_err, lmin, lmax, mask, free_norm, model,
                                                ratio_err_high)
    order = np.argsort(L)
    L, R, S = L[order], R[order], S[order]
    w = 1.0 / S**2
    idx = L - 1
    lbig = int(L[-1])
    S_high = None if S_high is None else S_high[order]
    w_high = None if S_high is None else 1.0 / S_high**2

    def chi2_many(pp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = _ratio(pp, lbig, model)[:, idx]
        if w_high is not None:
            amp = _profile_norm_sided(m, R, w, w_high) if free_norm else np.ones(pp.size)
            model_values = amp[:, None] * m
            w_side = sided_weights(model_values, R, S, S_high)
            return (w_side * (R - model_values) ** 2).sum(axis=1), amp
        if free_norm:
            amp = (m * (w * R)).sum(axis=1) / (m * (w * m)).sum(axis=1)
        else:
            amp = np.ones(pp.size)
        return (w * (R - amp[:, None] * m) ** 2).sum(axis=1), amp

    def chi2(pp: float) -> float:
        return float(chi2_many(np.array([pp]))[0][0])

    lo_b, hi_b = _P_EDGE, 1.0 - _P_EDGE
    grid = np.linspace(lo_b, hi_b, 201)
    cg = chi2_many(grid)[0]
    i = int(np.argmin(cg))
    a_br, b_br = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = optimize.minimize_scalar(
        chi2, bounds=(a_br, b_br), method="bounded", options={"xatol": 1e-10}
    )
    p_best, c_min = float(res.x), float(res.fun)
    if cg[i] < c_min:
        p_best, c_min = float(grid[i]), float(cg[i])
    at_boundary = bool(p_best - lo_b < 1e-6 or hi_b - p_best < 1e-6)

    p_lo, p_hi, clipped = _delta_chi2_interval(chi2, grid, cg, p_best, c_min)

    dof = int(L.size - n_par)
    return BGKFit(
        p=p_best,
        p_err=0.5 * (p_hi - p_lo),
        p_lo=p_lo,
        p_hi=p_hi,
        chi2_dof=c_min / dof,
        ell_min=int(L[0]),
        ell_max=int(L[-1]),
        n_points=int(L.size),
        norm=float(chi2_many(np.array([p_best]))[1][0]),
        chi2=c_min,
        dof=dof,
        at_boundary=at_boundary,
        interval_clipped=clipped,
        free_norm=bool(free_norm),
        model=model,
    )
