"""The mixed-precision kernels and the CPU backend's mixed path.

CPU (``crsky.backends.cpu_mixed``): float64 reference phases at a per-particle
reference point, float32 phase offsets, a float32 polynomial cosine
(``crsky.kernels.cos_turns``; phases in turns). GPU (``crsky.kernels.field_at_turns``,
checked here on CPU compilations of the same scalar functions): float64 phase and
reduction per mode, float32 cosine. Checked against the plain numpy oracle
``reference.field_reference`` and against the float64 path. Tolerances are stated next
to each check with the measured value they cover. The contract every variant keeps is
tests/contract.py.
"""

import math

import numba
import numpy as np
import pytest
from reference import field_reference, helix

from crsky import kernels
from crsky.backends import cpu, cpu_mixed, get_backend
from crsky.backends.cuda import mode_arrays_aos
from crsky.config import TurbulenceConfig
from crsky.turbulence import make_modes

MIXED = cpu_mixed.JIT_OPTIONS  # the flags the mixed path compiles the kernels with


class Compiled:
    """Scalar kernels compiled alone with the given flags, callable from Python."""

    def __init__(self, **options):
        for name in kernels.__all__:
            function = getattr(kernels, name)
            if callable(function):
                setattr(self, name, numba.njit(**options)(function))


K = Compiled(**MIXED)  # as the mixed CPU path compiles them
PLAIN = Compiled()  # numba's default flags (no contraction)


@numba.njit(**MIXED)
def _cos_many(turns, out):
    for i in range(turns.shape[0]):
        out[i] = kernels.cos_turns(turns[i])


def cos_turns_error(turns):
    turns = np.asarray(turns, dtype=np.float32)
    out = np.empty_like(turns)
    _cos_many(turns, out)
    return np.abs(out.astype(np.float64) - np.cos(2 * np.pi * turns.astype(np.float64)))


def test_cos_turns_max_error_over_its_reduced_range():
    # [-1/2, 1/2] turns is the range of the reference phases. Measured max 2.7e-7, rms
    # 7.8e-8: p = sqrt(2) cos(pi r) is good to ~1 ulp (1.2e-7 at p > 1), and p^2 - 1
    # multiplies that by 2 p (the float32 result itself is only defined to 6e-8).
    grid = np.linspace(-0.5, 0.5, 2_000_001)
    err = cos_turns_error(grid)
    assert err.max() < 3e-7
    assert np.sqrt(np.mean(err**2)) < 1e-7


def test_cos_turns_error_over_the_phases_the_mixed_path_produces():
    # |phase| <= 1/2 + PHASE_BUDGET / 2 pi turns (offsets up to the budget): the
    # reduction x - round(x) is exact, so the error does not grow with |x|.
    bound = 0.5 + cpu_mixed.PHASE_BUDGET / (2 * np.pi)
    grid = np.linspace(-bound, bound, 2_000_001)
    assert cos_turns_error(grid).max() < 3e-7
    far = np.float32(np.random.default_rng(0).uniform(-1e4, 1e4, 100_000))
    assert cos_turns_error(far).max() < 3e-7


def test_double_angle_polynomial_approximation_error():
    # cos_turns' float32 coefficients in float64 arithmetic: p(r^2)^2 - 1 against
    # cos(2 pi r) on [-1/2, 1/2] turns. The fit itself, before rounding the
    # coefficients to float32: 4.6e-8; measured with the float32 coefficients (chosen
    # for the least float32 evaluation error): 6.8e-8.
    r = np.linspace(-0.5, 0.5, 200_001)
    u = r * r
    e0, e1, e2, e3, e4 = (float(c) for c in (kernels._E0, kernels._E1, kernels._E2, kernels._E3, kernels._E4))
    p = e0 + u * (e1 + u * (e2 + u * (e3 + u * e4)))
    assert np.abs(p * p - 1 - np.cos(2 * np.pi * r)).max() < 1e-7


def test_sine_polynomial_approximation_error():
    # The float32 coefficients in float64 arithmetic: 1.5e-8 on [-1/4, 1/4] turns (the
    # minimax fit itself, before rounding the coefficients to float32: 3.3e-9).
    t = np.linspace(-0.25, 0.25, 200_001)
    u = t * t
    c1, c3, c5, c7, c9 = (float(c) for c in (kernels._C1, kernels._C3, kernels._C5, kernels._C7, kernels._C9))
    p = t * (c1 + u * (c3 + u * (c5 + u * (c7 + u * c9))))
    assert np.abs(p + np.sin(2 * np.pi * t)).max() < 2e-8


def test_reduce_turns_is_exact_to_float32_rounding():
    rng = np.random.default_rng(1)
    turns = np.concatenate([rng.uniform(-1e6, 1e6, 300), rng.uniform(-3, 3, 100), [0.0, 0.5, -0.5, 2.5]])
    for ph in turns:
        exact = float(ph) - round(float(ph))  # exact in float64 for |ph| < 2^51
        got = float(K.reduce_turns(float(ph)))
        assert abs(got) <= 0.5
        # half an ulp of float32 at |r| < 1/2 is 1.5e-8
        assert abs(got - exact) <= 1.5e-8 or abs(abs(got - exact) - 1.0) < 1e-7


def test_sincos_taylor_matches_math():
    theta = np.linspace(-1.0, 1.0, 20001)
    c, s = zip(*(K.sincos_taylor(t) for t in theta))
    c, s = np.array(c), np.array(s)
    assert np.abs(c - np.cos(theta)).max() < 3e-16
    assert np.abs(s - np.sin(theta)).max() < 3e-16
    assert np.abs(c * c + s * s - 1.0).max() < 5e-16


def test_rotate_taylor_and_rotate_poly_match_rodrigues():
    # rotate_taylor (branch-free, |theta| <= 1) and rotate_poly (rotate_taylor, or the
    # math.cos rotation beyond |theta| = 1) against kernels.rotate, to rounding.
    rng = np.random.default_rng(11)
    for scale in (-0.05, 0.3, -0.9):
        for _ in range(200):
            v = rng.normal(size=3)
            v /= np.linalg.norm(v)
            b = rng.normal(size=3)
            b *= rng.uniform(0, 1) / np.linalg.norm(b)  # |theta| = |scale| |b| < 1
            exact = np.array(K.rotate(*v, *b, scale))
            np.testing.assert_allclose(K.rotate_taylor(*v, *b, scale), exact, rtol=0, atol=2e-15)
            np.testing.assert_allclose(K.rotate_poly(*v, *b, scale), exact, rtol=0, atol=2e-15)
    v = (0.6, 0.0, 0.8)
    assert K.rotate_taylor(*v, 0.0, 0.0, 0.0, 0.1) == v  # zero field: no rotation, no NaN
    for b, scale in (((0.0, 3.0, 4.0), 0.5), ((1.0, -2.0, 0.5), -7.0)):  # |theta| = 2.5, 16
        assert K.rotate_poly(*v, *b, scale) == K.rotate(*v, *b, scale)


def _points(n, radius, rng):
    """Points uniform in radius out to ``radius``."""
    x = rng.normal(size=(n, 3))
    return x * (radius * rng.uniform(0, 1, n) / np.linalg.norm(x, axis=1))[:, None]


def _block_references(modes, points, rng):
    """A reference point per block of ``MODE_BLOCK`` modes for each point, at a random
    distance up to ``budget(block) / k_max(block)`` (the largest offset ``trace``
    allows that block): shape (n_blocks, n, 3)."""
    n = len(points)
    refs = []
    for a, budget in zip(range(0, modes.shape[1], cpu_mixed.MODE_BLOCK), cpu_mixed.block_phase_budgets(modes)):
        kmax = np.linalg.norm(modes[0:3, a:a + cpu_mixed.MODE_BLOCK], axis=0).max()
        off = rng.normal(size=(n, 3))
        off *= (budget / kmax * rng.uniform(0, 1, n) / np.linalg.norm(off, axis=1))[:, None]
        refs.append(points - off)
    return np.array(refs)


@pytest.mark.parametrize(
    "turbulence",
    [
        TurbulenceConfig(n_modes=256),
        TurbulenceConfig(n_modes=64),
        TurbulenceConfig(n_modes=1024),
        TurbulenceConfig(geometry="composite", n_modes=256),
    ],
    ids=["iso256", "iso64", "iso1024", "composite256"],
)
def test_mixed_field_matches_the_float64_oracle_far_out(turbulence):
    # Positions out to |x| = 1e3 L_c: phases k.x up to 6e5 rad, offsets from the
    # reference points up to the phase budget (per block of modes on the hot path).
    # Requirement: every error below 1e-6 of the rms turbulent field sqrt(sigma2).
    # Measured over the 20480 points of each of the four fields: max 5.6e-7, rms
    # 1.9e-7 (float32 sums in each lane over blocks of 16 modes; float64 sums would
    # give 4.3e-7 and 1.3e-7).
    modes = make_modes(turbulence, seed=3, realisation=2)
    rms = math.sqrt(turbulence.sigma2)
    rng = np.random.default_rng(7)
    x = _points(20480, 1000.0, rng)
    exact = field_reference(modes, x)
    err = np.linalg.norm(cpu_mixed.field_as_traced(modes, x, _block_references(modes, x, rng)) - exact, axis=1)
    assert err.max() < 1e-6 * rms
    assert np.sqrt(np.mean(err**2)) < 3e-7 * rms


def test_field_as_traced_defaults_to_zero_offset_and_checks_shapes():
    modes = make_modes(TurbulenceConfig(n_modes=128), 0, 0)
    x = np.random.default_rng(2).uniform(-500, 500, size=(500, 3))  # not a multiple of LANES
    got = cpu_mixed.field_as_traced(modes, x)
    assert np.abs(got - field_reference(modes, x)).max() < 1e-6
    np.testing.assert_array_equal(got, get_backend("cpu", "mixed").field_at_points(modes, x))
    np.testing.assert_array_equal(cpu_mixed.field_as_traced(modes, x[:3]), got[:3])  # lanes are independent
    with pytest.raises(ValueError, match="references has shape"):
        cpu_mixed.field_as_traced(modes, x, x[:10])


def test_short_mixed_trajectory_agrees_with_the_float64_path():
    # Paper parameters (r_L = 0.1, dt = 0.05, 256 modes), 64 particles backtracked from
    # the origin. Per step the velocity differs by ~dtau * 3e-7; the orbits are chaotic
    # and the difference grows ~e-fold per few gyrations (measured at 100 steps:
    # positions 1.7e-7 L_c, velocities 1.8e-6; at 1000 steps they have decorrelated,
    # as they would under any rounding change). Statistical equivalence of K and C_l is
    # checked on full runs, not here.
    modes = make_modes(TurbulenceConfig(n_modes=256), seed=0, realisation=0)
    rng = np.random.default_rng(4)
    v0 = rng.normal(size=(64, 3))
    v0 /= np.linalg.norm(v0, axis=1)[:, None]
    x0 = np.zeros_like(v0)
    steps = np.array([10, 100])
    xm, vm = get_backend("cpu", "mixed").trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
    xd, vd = get_backend("cpu").trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
    assert np.abs(xm[0] - xd[0]).max() < 2e-8
    assert np.abs(vm[0] - vd[0]).max() < 5e-7
    assert np.abs(xm[1] - xd[1]).max() < 2e-6
    assert np.abs(vm[1] - vd[1]).max() < 2e-5
    # and every particle was turned by the field (5 rad of gyration)
    assert np.linalg.norm(vd[1] - v0, axis=1).min() > 0.1


def test_mixed_step_with_rotation_angles_beyond_one():
    # Omega dt = 4: |b| dtau > 1 for nearly all particles and > 8 for some, where the
    # order-18 Taylor rotation of the vectorised loop fails (its truncation error is
    # ~theta^20 / 20!, 0.1 at theta = 8); the mixed path redoes those with math.cos.
    # One step against the float64 path: the velocity differs by ~dtau * (field error,
    # < 6e-7); measured 9e-7.
    modes = make_modes(TurbulenceConfig(n_modes=256), seed=0, realisation=0)
    rng = np.random.default_rng(4)
    v0 = rng.normal(size=(100, 3))
    v0 /= np.linalg.norm(v0, axis=1)[:, None]
    x0 = rng.uniform(-10, 10, size=(100, 3))
    dtau = 4.0
    theta = dtau * np.linalg.norm(get_backend("cpu").field_at_points(modes, x0 + 0.5 * dtau * 0.1 * v0), axis=1)
    assert np.mean(theta > 1.0) > 0.5 and np.sum(theta > 8.0) >= 3
    xm, vm = get_backend("cpu", "mixed").trace(x0, v0, modes, sign=1.0, dt=dtau, rl=0.1, snapshot_steps=[1])
    xd, vd = get_backend("cpu").trace(x0, v0, modes, sign=1.0, dt=dtau, rl=0.1, snapshot_steps=[1])
    assert np.abs(vm - vd).max() < 5e-6
    assert np.abs(xm - xd).max() < 1e-6


@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_result_does_not_depend_on_threads_or_chunks(precision, monkeypatch):
    # 70 particles: with 2 threads and 16 chunks per thread the chunks are uneven and
    # run in whatever order the threads take them; with 1 thread in one sequence.
    modes = make_modes(TurbulenceConfig(n_modes=64), seed=3, realisation=1)
    rng = np.random.default_rng(8)
    x0 = rng.uniform(-20, 20, size=(70, 3))
    v0 = rng.normal(size=(70, 3))
    v0 /= np.linalg.norm(v0, axis=1)[:, None]
    steps = np.array([5, 40])
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        xb, vb = get_backend("cpu", precision).trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
        numba.set_num_threads(1)
        monkeypatch.setattr(cpu, "CHUNKS_PER_THREAD", 1)
        xa, va = get_backend("cpu", precision).trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=steps)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(va, vb)


def test_dynamic_runner_covers_every_item_once_and_raises():
    seen = []
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        cpu.run_chunks(lambda a, b, out: out.extend(range(a, b)), 101, 2, seen)
        assert sorted(seen) == list(range(101))

        def fail(a, b):
            if a > 0:
                raise RuntimeError("chunk failed")

        with pytest.raises(RuntimeError, match="chunk failed"):
            cpu.run_chunks(fail, 50, 2)
    finally:
        numba.set_num_threads(old)


def test_refresh_interval():
    modes = make_modes(TurbulenceConfig(n_modes=256), 0, 0)  # k_max = 2 pi / 0.01
    kmax = np.linalg.norm(modes[0:3], axis=0).max()
    assert kmax == pytest.approx(200 * np.pi)
    # Paper: k_max r_L dtau = pi per step; budget 8 pi -> offsets of at most 8 steps.
    assert cpu_mixed.refresh_interval(modes, 0.05, 0.1) == 9
    assert cpu_mixed.refresh_interval(modes, 0.02, 0.1) == 21
    for dtau, rl in ((0.05, 0.1), (0.013, 0.3), (0.2, 1.0)):
        m = cpu_mixed.refresh_interval(modes, dtau, rl)
        assert (m - 1) * kmax * rl * dtau <= cpu_mixed.PHASE_BUDGET * (1 + 1e-9)
        assert m * kmax * rl * dtau > cpu_mixed.PHASE_BUDGET or m == cpu_mixed.MAX_REFRESH_INTERVAL
    assert cpu_mixed.refresh_interval(modes, 1e-9, 0.1) == cpu_mixed.MAX_REFRESH_INTERVAL
    # Each block of MODE_BLOCK modes its own interval, from its own largest k and its
    # budget: blocks of large A k get less than the full budget (the least: 0.15 of it,
    # k ~ 1 / L_c), the blocks of small k refresh hundreds of times less often than
    # the block of the largest k.
    budgets = cpu_mixed.block_phase_budgets(modes)
    assert budgets[-1] == cpu_mixed.PHASE_BUDGET and 0.1 < budgets.min() / cpu_mixed.PHASE_BUDGET < 0.3
    blocks = cpu_mixed.refresh_intervals(modes, 0.05, 0.1)
    assert len(blocks) == 256 // cpu_mixed.MODE_BLOCK and blocks[-1] == 9
    for k, (m, budget) in enumerate(zip(blocks, budgets)):
        kb = np.linalg.norm(modes[0:3, k * cpu_mixed.MODE_BLOCK:(k + 1) * cpu_mixed.MODE_BLOCK], axis=0).max()
        assert (m - 1) * kb * 0.1 * 0.05 <= budget * (1 + 1e-9)
        assert budget < m * kb * 0.1 * 0.05 or m == cpu_mixed.MAX_REFRESH_INTERVAL
    assert blocks[0] > 100 * blocks[-1]
    # Refreshing every step changes only rounding-level details of the field.
    x0 = np.random.default_rng(6).uniform(-20, 20, size=(8, 3))
    v0 = np.tile([[0.6, 0.0, 0.8]], (8, 1))
    a = get_backend("cpu", "mixed").trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=[20])
    b = get_backend("cpu", "mixed", refresh=1).trace(x0, v0, modes, sign=1.0, dt=0.05, rl=0.1, snapshot_steps=[20])
    assert np.abs(a[0] - b[0]).max() < 1e-8


def test_python_execution_of_the_kernels_matches_the_compiled_ones():
    # The CUDA simulator runs the kernels as plain Python (numpy float32 scalars).
    rng = np.random.default_rng(8)
    for ph in rng.uniform(-5, 5, 50).astype(np.float32):
        assert abs(float(kernels.cos_turns(ph)) - float(K.cos_turns(ph))) < 2.5e-7  # FMA or not: 1-2 ulp
    for ph in rng.uniform(-1e6, 1e6, 20):
        assert abs(float(kernels.reduce_turns(ph)) - float(K.reduce_turns(ph))) < 1e-7
        assert kernels.quarter_turns(ph) == PLAIN.quarter_turns(ph)
    modes = make_modes(TurbulenceConfig(n_modes=32), 0, 0)
    turns, amps = mode_arrays_aos(modes)
    state = (3.01, -2.0, 40.0, 0.6, 0.0, 0.8)
    np.testing.assert_allclose(kernels.push_turns(*state, turns, amps, 1.0, 0.05, 0.1),
                               PLAIN.push_turns(*state, turns, amps, 1.0, 0.05, 0.1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(kernels.push(*state, modes, 1.0, 0.05, 0.1),
                               PLAIN.push(*state, modes, 1.0, 0.05, 0.1), rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------
# The CUDA backend's mixed path: float64 phase and reduction per mode, float32 cosine
# (kernels.quarter_turns, neg_sin_turns, field_at_turns). Checked here on the CPU
# compilation of the same scalar kernels, plain (as written) and with FMA contraction
# (what the GPU compiler does).
# --------------------------------------------------------------------------------------

TURNS_SETS = {"plain": {}, "contract": MIXED}


def _turns_drivers(options):
    @numba.njit(**options)
    def cos_many(phases, out):
        for i in range(phases.shape[0]):
            out[i] = kernels.neg_sin_turns(kernels.quarter_turns(phases[i]))

    @numba.njit(**options)
    def field_many(turns, amps, points, out):
        for i in range(points.shape[0]):
            out[i, 0], out[i, 1], out[i, 2] = kernels.field_at_turns(points[i, 0], points[i, 1], points[i, 2],
                                                                     turns, amps)

    return cos_many, field_many


DRIVERS = {name: _turns_drivers(options) for name, options in TURNS_SETS.items()}


def test_quarter_turns_is_the_exact_reduction_rounded_once():
    # t = |p - round(p)| - 1/4 is exact in float64 for these p; the kernel's only error
    # is the rounding to float32: at most half an ulp of |t| <= 1/4, 2^-26 = 1.5e-8.
    from fractions import Fraction

    rng = np.random.default_rng(3)
    phases = np.concatenate([rng.uniform(-2e5, 2e5, 400), rng.uniform(-2, 2, 200),
                             [0.0, 0.5, -0.5, 2.5, 0.25, -0.75, 1e5 + 0.125]])
    for p in phases:
        r = Fraction(float(p)) - round(Fraction(float(p)))  # Fraction rounds half to even: |r| = 1/2 either way
        exact = abs(r) - Fraction(1, 4)
        got = PLAIN.quarter_turns(float(p))
        assert isinstance(got, float) and -0.25 <= got <= 0.25
        assert abs(Fraction(float(got)) - exact) <= Fraction(1, 2**26)


@pytest.mark.parametrize("name", sorted(TURNS_SETS))
def test_turns_cosine_against_float64_at_phases_up_to_1e6_rad(name):
    # cos(phase) for float64 phases in turns up to 1.6e5 turns (1e6 rad), against
    # numpy's float64 cosine of the exactly reduced phase (error ~1e-16). Measured max
    # 1.6e-7 plain, 1.3e-7 with FMA (cos_turns of the CPU path: 1.4e-7), at |cos| ~ 1
    # where the float32 result's own spacing is 6e-8: the float32 polynomial dominates;
    # the float32 rounding of t costs little because it happens where d sin(2 pi t)/dt
    # is smallest. A float32 phase without the float64 reduction is off by ~1e-2 here.
    cos_many, _ = DRIVERS[name]
    rng = np.random.default_rng(4)
    turns = np.concatenate([rng.uniform(-1e6, 1e6, 500_000) / (2 * np.pi), np.linspace(-3, 3, 600_001)])
    out = np.empty(len(turns), np.float32)
    cos_many(turns, out)
    exact = np.cos(2 * np.pi * (turns - np.round(turns)))
    assert np.abs(out - exact).max() < 2e-7


@pytest.mark.parametrize("name", sorted(TURNS_SETS))
@pytest.mark.parametrize(
    "turbulence",
    [TurbulenceConfig(n_modes=256), TurbulenceConfig(n_modes=1024),
     TurbulenceConfig(geometry="composite", n_modes=200)],
    ids=["iso256", "iso1024", "composite200"],
)
def test_field_at_turns_against_float64_and_the_numpy_oracle(turbulence, name):
    # Points out to |x| = 1e3 L_c: phases up to 6e5 rad. Requirement: error < 1e-6 of
    # the rms turbulent field. Measured max over these 2e4 points (plain / FMA):
    # 2.8e-7 / 2.8e-7 (256 modes), 2.6e-7 / 2.4e-7 (1024), 3.7e-7 / 3.8e-7 (composite),
    # rms 9e-8; over 2e5 points at most 4.2e-7. The float32 sums over blocks of
    # TURNS_MODE_BLOCK = 16 modes dominate (float64 sums: 1.5-2e-7; blocks of 32:
    # 4-7e-7; float32 sums over all 1024 modes: 3.5e-6, which this test would catch).
    # 200 modes: twelve full blocks and a partial one.
    _, field_many = DRIVERS[name]
    modes = make_modes(turbulence, seed=3, realisation=2)
    rms = math.sqrt(turbulence.sigma2)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(20000, 3))
    x *= (1000.0 * rng.uniform(0, 1, len(x)) / np.linalg.norm(x, axis=1))[:, None]
    got = np.empty_like(x)
    field_many(*mode_arrays_aos(modes), x, got)
    f64 = get_backend("cpu").field_at_points(modes, x)  # the float64 kernel
    oracle = field_reference(modes, x)
    assert np.abs(f64 - oracle).max() < 1e-11  # the two references agree
    for ref in (f64, oracle):
        err = np.linalg.norm(got - ref, axis=1)
        assert err.max() < 1e-6 * rms
        assert np.sqrt(np.mean(err**2)) < 2e-7 * rms


def test_mode_array_layouts():
    modes = make_modes(TurbulenceConfig(n_modes=5), 0, 0)
    turns_soa, modes32_soa = cpu_mixed.mode_arrays_soa(modes)
    assert turns_soa.shape == (4, 5) and turns_soa.dtype == np.float64
    assert modes32_soa.shape == (6, 5) and modes32_soa.dtype == np.float32
    np.testing.assert_array_equal(turns_soa[0:3], modes[0:3] / (2 * np.pi))
    np.testing.assert_array_equal(turns_soa[3], modes[6] / (2 * np.pi))
    np.testing.assert_array_equal(modes32_soa[0:3], turns_soa[0:3].astype(np.float32))
    np.testing.assert_array_equal(modes32_soa[3:6], modes[3:6].astype(np.float32))
    turns, amps = mode_arrays_aos(modes)
    assert turns.shape == (5, 4) and turns.dtype == np.float64 and turns.flags.c_contiguous
    assert amps.shape == (5, 4) and amps.dtype == np.float32 and amps.flags.c_contiguous
    np.testing.assert_array_equal(turns[:, 0:3], modes[0:3].T / (2 * np.pi))
    np.testing.assert_array_equal(turns[:, 3], modes[6] / (2 * np.pi))
    np.testing.assert_array_equal(amps[:, 0:3], modes[3:6].T.astype(np.float32))
    assert np.all(amps[:, 3] == 0)
    # no modes: the regular field alone
    t0, a0 = mode_arrays_aos(np.zeros((7, 0)))
    assert PLAIN.field_at_turns(1.0, 2.0, 3.0, t0, a0) == (0.0, 0.0, 1.0)


def test_push_turns_keeps_speed_and_follows_the_uniform_field_helix():
    # sigma2 = 0: every mode has zero amplitude, the field is exactly z_hat, and the
    # orbit is the float64 path's (same rotation formula to 1e-16 per step).
    uniform = make_modes(TurbulenceConfig(sigma2=0.0, n_modes=40), 0, 0)
    turns, amps = mode_arrays_aos(uniform)
    rl, dtau = 0.37, 0.05
    s = (0.0, 0.0, 0.0, 0.8, 0.0, 0.6)
    for _ in range(2000):
        s = PLAIN.push_turns(*s, turns, amps, 1.0, dtau, rl)
    x, v = helix(0.8, 0.6, np.array([2000 * dtau]), rl, 1.0)
    np.testing.assert_allclose(s[3:6], v[0], rtol=0, atol=1e-12)
    h = dtau / 2
    assert np.linalg.norm(np.array(s[0:3]) - x[0]) <= 2 * rl * 0.8 * (1 - h / np.tan(h)) + 1e-11
    # |v| = 1 to rounding: measured 4.8e-14 after 2000 steps (a random walk of ~1e-16
    # per step); a rotation that did not preserve |v| would drift by dtau^2 per step.
    assert abs(np.linalg.norm(s[3:6]) - 1.0) < 1e-12
