"""Physics checks of a configuration: resonant scales (refused), run length and step
size (warnings), and the values derived from physical inputs (docs/design.md,
Physics checks)."""

import math
import tomllib

import pytest

from crsky.cli import main
from crsky.config import (
    LAMBDA_PAR_AT_RL_0_1,
    MAX_ALIASED_POWER,
    MAX_ROTATION_PER_STEP,
    STEADY_STATE_SCATTERING_TIMES,
    ConfigError,
    config_from_toml_text,
    load_config,
    parallel_mean_free_path,
    physical_record,
    physics_warnings,
    resolve_config,
    scattering_time,
)
from crsky.units import RL_PC_PER_TEV_PER_MICROGAUSS, lc_over_c_years

from test_config import PAPER_DIGEST, QUICK_DIGEST

#: 10 PeV protons in 3 microgauss with L_c = 30 pc: r_L / L_c = 0.1201, near the presets.
PHYSICAL = {"energy_tev": 1.0e4, "charge": 1, "b0_microgauss": 3.0, "lc_pc": 30.0}


def codes(cfg):
    return [w.code for w in physics_warnings(cfg)]


# -- resonant scales -------------------------------------------------------------
def test_presets_resolve_the_resonance_and_do_not_warn():
    for preset in ("quick", "paper"):
        cfg = resolve_config(preset=preset)
        # 2 pi r_L / lambda_min = 63 > 10; 2 pi r_L = 0.63 < lambda_max = 100
        assert 2 * math.pi * cfg.particles.rl / cfg.turbulence.lambda_min == pytest.approx(62.83, rel=1e-3)
        assert physics_warnings(cfg) == []


def test_gyration_below_lambda_min_is_refused_naming_both_numbers():
    # r_L = 1e-3 L_c: 2 pi r_L = 0.006283 L_c < lambda_min = 0.01 L_c, no resonant mode
    with pytest.raises(ConfigError) as info:
        resolve_config({"particles": {"rl": 1e-3}})
    message = str(info.value)
    assert "lambda_min = 0.01" in message and "2 pi r_L = 0.006283" in message
    assert "no turbulent mode is resonant" in message and "allow_unresolved" in message


def test_lambda_min_above_a_tenth_of_the_gyration_scale_is_refused():
    # r_L = 0.01 L_c: 2 pi r_L / 10 = 0.006283 < lambda_min = 0.01; 0.005 passes
    with pytest.raises(ConfigError, match=r"lambda_min = 0.01 resolves .* \|mu\| >= 0.16 .*"
                                          r"must be <= 2 pi r_L / 10 = 0.006283"):
        resolve_config({"particles": {"rl": 0.01}})
    assert resolve_config({"particles": {"rl": 0.01}, "turbulence": {"lambda_min": 0.005}}).particles.rl == 0.01


def test_gyration_above_lambda_max_is_refused():
    with pytest.raises(ConfigError, match=r"lambda_max = 100.0: the gyration scale 2 pi r_L = 125.7 L_c"):
        resolve_config({"particles": {"rl": 20.0}})
    assert resolve_config({"particles": {"rl": 20.0}, "turbulence": {"lambda_max": 200.0}}).particles.rl == 20.0


def test_unresolved_is_allowed_by_the_key_without_changing_the_digest():
    allowed = resolve_config({"particles": {"rl": 1e-3}, "turbulence": {"allow_unresolved": True}})
    assert allowed.turbulence.allow_unresolved is True
    # the permission is written to config.toml, read back, and not part of the run's identity
    assert "allow_unresolved = true" in allowed.to_toml()
    assert config_from_toml_text(allowed.to_toml()) == allowed
    unresolved_config_as_stored = allowed.to_toml().replace("allow_unresolved = true\n", "")
    assert config_from_toml_text(unresolved_config_as_stored).digest() == allowed.digest()
    with pytest.raises(ConfigError, match="allow_unresolved = 'yes': must be true or false"):
        resolve_config({"turbulence": {"allow_unresolved": "yes"}})


@pytest.mark.parametrize("preset, digest", [("paper", PAPER_DIGEST), ("quick", QUICK_DIGEST)])
def test_preset_digests_and_toml_do_not_see_the_permission(preset, digest):
    plain = resolve_config(preset=preset)
    for value in (False, True):
        cfg = resolve_config({"turbulence": {"allow_unresolved": value}}, preset)
        assert cfg.digest() == digest
    assert "allow_unresolved" not in plain.to_toml() and "derived" not in plain.to_toml()
    assert resolve_config({"turbulence": {"allow_unresolved": False}}, preset) == plain


def test_stored_unresolved_run_stays_readable():
    """A run written before the check is read from its directory (strict=False)."""
    allowed = resolve_config({"particles": {"rl": 1e-3}, "turbulence": {"allow_unresolved": True}})
    text = allowed.to_toml().replace("allow_unresolved = true\n", "")
    assert config_from_toml_text(text).particles.rl == 1e-3


def test_cli_refuses_unresolved_resonance_before_any_file(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("[particles]\nrl = 0.001\n")
    code = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "lambda_min = 0.01" in err and "2 pi r_L = 0.006283" in err
    assert not (tmp_path / "run").exists()


# -- scattering time and the steady state ----------------------------------------
def test_mean_free_path_is_the_calibrated_quasi_linear_scaling():
    quick = resolve_config()
    # normalisation: 3 K_par / c of the paper preset at r_L = 0.1 L_c, sigma2 = 1
    assert parallel_mean_free_path(quick.turbulence, 0.1) == pytest.approx(LAMBDA_PAR_AT_RL_0_1, rel=1e-12)
    assert scattering_time(quick) == pytest.approx(3 * 0.5663 / 0.1, rel=1e-12)
    # Kolmogorov: r_L^(1/3) in the inertial range, r_L^2 above L_c, 1 / sigma2
    ratio = parallel_mean_free_path(quick.turbulence, 0.001) / parallel_mean_free_path(quick.turbulence, 0.1)
    assert ratio == pytest.approx(0.01 ** (1 / 3), rel=1e-12)
    ratio = parallel_mean_free_path(quick.turbulence, 4.0) / parallel_mean_free_path(quick.turbulence, 2.0)
    assert ratio == pytest.approx(4.0, rel=1e-12)
    strong = resolve_config({"turbulence": {"sigma2": 4.0}})
    assert parallel_mean_free_path(strong.turbulence, 0.1) == pytest.approx(LAMBDA_PAR_AT_RL_0_1 / 4, rel=1e-12)
    # no quasi-linear parallel scattering in 2D turbulence: no estimate, no warning
    flat = resolve_config({"turbulence": {"geometry": "2d"}, "integration": {"t_max": 2.0, "n_snapshots": 3}})
    assert scattering_time(flat) is None and "steady_state_not_reached" not in codes(flat)


def test_quick_preset_runs_past_the_steady_state_estimate():
    quick = resolve_config()
    # t_max = 300 is 17.7 scattering times of t Omega = 17.0 each
    assert quick.integration.t_max / scattering_time(quick) == pytest.approx(17.66, rel=1e-3)


def test_short_t_max_warns_with_the_length_needed():
    cfg = resolve_config({"integration": {"t_max": 50.0}})
    (warning,) = physics_warnings(cfg)
    assert warning.code == "steady_state_not_reached"
    assert "t_max = 50 is 2.94 estimated scattering times" in warning.message
    assert f"raise t_max to >= {STEADY_STATE_SCATTERING_TIMES * 3 * 0.5663 / 0.1:.3g}" in warning.message
    assert "\n" not in warning.message
    assert codes(resolve_config({"integration": {"t_max": 110.0}})) == []  # 6.5 scattering times


def test_no_turbulence_never_reaches_the_steady_state():
    cfg = resolve_config({"turbulence": {"sigma2": 0.0}})
    assert scattering_time(cfg) == math.inf
    assert codes(cfg) == ["steady_state_not_reached"] and "never scatter" in physics_warnings(cfg)[0].message
    # an absurd gyroradius, allowed unresolved, gives warnings, not an overflow
    huge = resolve_config({"particles": {"rl": 1e306}, "turbulence": {"allow_unresolved": True}})
    assert codes(huge) == ["steady_state_not_reached", "step_aliasing"]
    assert "beyond float64 at r_L / L_c = 1e+306" in physics_warnings(huge)[0].message


# -- step size -------------------------------------------------------------------
def test_large_rotation_per_step_warns_with_a_step_that_passes():
    # sigma2 = 100: sqrt(101) * 0.1 = 1.0 rad per step
    cfg = resolve_config({"turbulence": {"sigma2": 100.0}})
    (warning,) = [w for w in physics_warnings(cfg) if w.code == "step_rotation"]
    assert "sqrt(1 + sigma2) dt = 1 rad per step" in warning.message and "dt <= 0.049" in warning.message
    assert warning.suggested_dt == 0.049
    assert math.sqrt(101.0) * warning.suggested_dt <= MAX_ROTATION_PER_STEP
    fixed = resolve_config({"turbulence": {"sigma2": 100.0},
                            "integration": {"dt": 0.04, "t_max": 300.0, "t_min": 0.1}})
    assert "step_rotation" not in codes(fixed)


def test_aliased_modes_warn_with_a_step_that_passes():
    # r_L = 3 L_c, dt = 0.1: a step is 0.3 L_c, and modes shorter than 0.6 L_c carry 19 % of sigma2
    # (of 128 modes; the share depends slightly on how the modes sample the spectrum)
    cfg = resolve_config({"particles": {"rl": 3.0}, "turbulence": {"n_modes": 128}})
    (warning,) = physics_warnings(cfg)
    assert warning.code == "step_aliasing"
    assert "k_max r_L dt = 188 rad per step" in warning.message and "18.8% of sigma2" in warning.message
    assert warning.suggested_dt == 0.043
    fixed = resolve_config({"particles": {"rl": 3.0}, "turbulence": {"n_modes": 128},
                            "integration": {"dt": 0.04, "t_min": 0.1}})
    assert codes(fixed) == []
    assert codes(resolve_config({"particles": {"rl": 3.0}, "integration": {"dt": 0.04, "t_min": 0.1}})) == []
    # the presets: the fastest mode turns by 2 pi per step but carries < 1 % of sigma2
    assert MAX_ALIASED_POWER == 0.1 and codes(resolve_config(preset="paper")) == []


# -- physical inputs -------------------------------------------------------------
def test_gyroradius_constant_agrees_with_astropy():
    from astropy import constants
    from astropy import units as u

    exact = (u.TeV / (constants.e.si * u.uG * constants.c)).to(u.pc).value
    assert RL_PC_PER_TEV_PER_MICROGAUSS == pytest.approx(exact, rel=1e-4)  # 5 digits given
    assert lc_over_c_years(1.0) == pytest.approx(3.2616, rel=1e-4)  # a parsec is 3.2616 light years


def test_physical_record():
    assert physical_record(resolve_config()) is None
    cfg = resolve_config({"particles": PHYSICAL})
    rec = physical_record(cfg)
    rl = 1.0810e-3 * 1e4 / 3.0 / 30.0
    assert rec["rl"] == pytest.approx(rl, rel=1e-12) and rec["r_l_pc"] == pytest.approx(rl * 30.0, rel=1e-12)
    lc_yr = 30.0 * 3.26156  # L_c / c in years
    assert rec["lc_over_c_yr"] == pytest.approx(lc_yr, rel=1e-5)
    assert rec["gyro_period_lc_over_c"] == pytest.approx(2 * math.pi * rl, rel=1e-12)
    assert rec["gyro_period_yr"] == pytest.approx(2 * math.pi * rl * lc_yr, rel=1e-5)
    assert rec["t_max_lc_over_c"] == pytest.approx(300.0 * rl, rel=1e-12)
    assert rec["t_max_yr"] == pytest.approx(300.0 * rl * lc_yr, rel=1e-5)


def test_config_toml_carries_the_derived_values_without_changing_the_digest(tmp_path):
    cfg = resolve_config({"particles": PHYSICAL})
    text = cfg.to_toml()
    assert tomllib.loads(text)["derived"] == physical_record(cfg)
    assert config_from_toml_text(text) == cfg and config_from_toml_text(text).digest() == cfg.digest()
    # a run's config.toml is valid input again: rl with the physical triple it comes from
    (tmp_path / "c.toml").write_text(text)
    assert load_config(tmp_path / "c.toml").digest() == cfg.digest()
    with pytest.raises(ConfigError, match=r"either rl or .*not both \(rl = 0.2, they give r_L / L_c = 0.120111\)"):
        resolve_config({"particles": {**PHYSICAL, "rl": 0.2}})


def test_run_prints_the_physical_values_and_warnings_then_stores_them(tmp_path, capsys):
    toml = ("[particles]\nenergy_tev = 1e4\nb0_microgauss = 3.0\nlc_pc = 30.0\nnside = 1\n"
            "[turbulence]\nn_modes = 8\n[integration]\nt_max = 2.0\nn_snapshots = 3\n[ensemble]\nrealisations = 1\n")
    (tmp_path / "c.toml").write_text(toml)
    code = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--backend", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("crsky run: E = 10000 TeV, Z = 1, B0 = 3 microgauss, L_c = 30 pc: r_L / L_c = 0.1201")
    assert "gyro period 2 pi r_L / c = 73.84 yr = 0.7547 L_c / c" in lines[0]
    assert "t_max = 2 / Omega = 23.51 yr = 0.2402 L_c / c" in lines[0]
    assert lines[1].startswith("crsky run: warning: the steady state will not be reached: t_max = 2 is 0.133")
    stored = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert stored["derived"]["t_max_yr"] == pytest.approx(23.505, rel=1e-4)
