"""Configuration: presets, TOML in and out, physical units, and validation."""

import pytest

from crsky.config import ConfigError, PRESETS, config_from_toml_text, load_config, resolve_config
from crsky.units import gyroradius_lc


def test_quick_preset_is_the_default():
    cfg = resolve_config()
    assert cfg.particles.nside == 8 and cfg.turbulence.n_modes == 128
    assert cfg.ensemble.realisations == 16 and cfg.integration.t_max == 300.0


def test_paper_preset_is_spec_section_6():
    cfg = resolve_config(preset="paper")
    assert cfg.particles.rl == 0.1 and cfg.particles.nside == 32
    assert cfg.ensemble.realisations == 120 and cfg.turbulence.n_modes == 256
    t = cfg.turbulence
    assert (t.geometry, t.sigma2, t.lambda_min, t.lambda_max) == ("isotropic", 1.0, 0.01, 100.0)
    assert t.gamma == pytest.approx(11 / 3, rel=1e-15)


def test_file_overrides_preset_key_by_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[particles]\nnside = 4\n[ensemble]\nseed = 9\n")
    cfg = load_config(path, preset="paper")
    assert cfg.particles.nside == 4 and cfg.ensemble.seed == 9
    assert cfg.ensemble.realisations == 120  # untouched key keeps the preset's value


def test_toml_round_trip():
    cfg = resolve_config({"turbulence": {"geometry": "composite"}, "output": {"precision": "float32"}})
    assert config_from_toml_text(cfg.to_toml()) == cfg
    assert config_from_toml_text(cfg.to_toml()).digest() == cfg.digest()


def test_physical_units_give_rl():
    cfg = resolve_config({"particles": {"energy_tev": 10.0, "charge": 1, "b0_microgauss": 3.0, "lc_pc": 30.0}})
    # SPEC section 1: r_L / pc = 1.0810e-3 (E / TeV) / (Z B0 / muG)
    assert cfg.particles.rl == pytest.approx(1.0810e-3 * 10 / 3 / 30, rel=1e-12)
    assert cfg.particles.rl == pytest.approx(gyroradius_lc(10.0, 1, 3.0, 30.0))
    assert config_from_toml_text(cfg.to_toml()) == cfg
    iron = resolve_config({"particles": {"energy_tev": 10.0, "charge": 26, "b0_microgauss": 3.0, "lc_pc": 30.0}})
    assert iron.particles.rl == pytest.approx(cfg.particles.rl / 26)


def test_charge_sign():
    assert resolve_config().charge_sign == 1
    assert resolve_config({"particles": {"charge": -1}}).charge_sign == -1


BAD = [
    ({"particles": {"nside": 12}}, r"\[particles\] nside = 12: must be a power of 2"),
    ({"particles": {"nside": 0}}, r"nside = 0: must be a power of 2"),
    ({"particles": {"nside": 8.0}}, r"nside = 8.0: must be an integer"),
    ({"turbulence": {"n_modes": 0}}, r"n_modes = 0: must be >= 1"),
    ({"turbulence": {"lambda_min": 0.0}}, r"lambda_min = 0.0: must be > 0"),
    ({"turbulence": {"lambda_min": 5.0, "lambda_max": 1.0}}, r"lambda_max = 1.0: must be > lambda_min"),
    ({"turbulence": {"sigma2": -1}}, r"sigma2 = -1.0: must be >= 0"),
    ({"turbulence": {"sigma2": "big"}}, r"sigma2 = 'big': must be a number"),
    ({"turbulence": {"geometry": "fractal"}}, r"geometry = 'fractal': must be one of isotropic"),
    ({"turbulence": {"slab_fraction": 1.5}}, r"slab_fraction = 1.5: must be in \[0, 1\]"),
    ({"particles": {"rl": 0}}, r"rl = 0.0: must be > 0"),
    ({"particles": {"rl": True}}, r"rl = True: must be a number"),
    ({"particles": {"charge": 0}}, r"charge = 0: must be a non-zero integer"),
    ({"particles": {"energy_tev": 10.0}}, r"b0_microgauss, lc_pc missing"),
    ({"particles": {"rl": 0.1, "energy_tev": 1.0, "b0_microgauss": 1.0, "lc_pc": 1.0}}, r"either rl or"),
    ({"integration": {"dt": -0.1}}, r"dt = -0.1: must be > 0"),
    ({"integration": {"t_max": 0}}, r"t_max = 0.0: must be > 0"),
    ({"integration": {"n_snapshots": 0}}, r"n_snapshots = 0: must be >= 1"),
    ({"integration": {"t_max": 1.0, "n_snapshots": 1000}}, r"n_snapshots = 1000: must be <= the number of steps"),
    ({"ensemble": {"realisations": 0}}, r"realisations = 0: must be >= 1"),
    ({"ensemble": {"seed": -3}}, r"seed = -3: must be an integer in"),
    ({"output": {"precision": "float16"}}, r"precision = 'float16'"),
    ({"particles": {"nsid": 8}}, r"unknown key \[particles\] nsid"),
    ({"partikles": {"nside": 8}}, r"unknown section \[partikles\]"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_values_name_the_key_and_range(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_config(overrides)
    assert "\n" not in str(info.value)


def test_malformed_toml_reports_its_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[particles]\nnside = 8\nrl = = 0.1\n")
    with pytest.raises(ConfigError, match=r"malformed TOML .*line 3"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve_config(preset="huge")
    assert set(PRESETS) == {"quick", "paper"}
