"""Configuration: presets, TOML in and out, physical units, and validation."""

import pytest

from crsky.config import (
    MAX_CONFIG_BYTES,
    PRESETS,
    ConfigError,
    config_from_toml_text,
    load_config,
    resolve_config,
)
from crsky.units import gyroradius_lc


def test_quick_preset_is_the_default():
    cfg = resolve_config()
    assert cfg.particles.nside == 16 and cfg.turbulence.n_modes == 64
    assert cfg.ensemble.realisations == 32 and cfg.integration.t_max == 300.0


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
    # r_L = 1.2e-4 L_c: lambda_min must come down to resolve the resonance (<= 2 pi r_L / 10)
    resolved = {"lambda_min": 1e-5}
    cfg = resolve_config({"particles": {"energy_tev": 10.0, "charge": 1, "b0_microgauss": 3.0, "lc_pc": 30.0},
                          "turbulence": resolved})
    # docs/conventions.md, "Units": r_L / pc = 1.0810e-3 (E / TeV) / (Z B0 / muG)
    assert cfg.particles.rl == pytest.approx(1.0810e-3 * 10 / 3 / 30, rel=1e-12)
    assert cfg.particles.rl == pytest.approx(gyroradius_lc(10.0, 1, 3.0, 30.0))
    assert config_from_toml_text(cfg.to_toml()) == cfg
    iron = resolve_config({"particles": {"energy_tev": 10.0, "charge": 26, "b0_microgauss": 3.0, "lc_pc": 30.0},
                           "turbulence": {"lambda_min": 1e-6}})
    assert iron.particles.rl == pytest.approx(cfg.particles.rl / 26)


def test_charge_sign():
    assert resolve_config().charge_sign == 1
    assert resolve_config({"particles": {"charge": -1}}).charge_sign == -1


#: Digests of the presets as resolved before slab_fraction, the step count and the
#: snapshot schedule were checked: existing run directories must keep their identity.
PAPER_DIGEST = "b961d1cd70768a1ae6677ca380f57ecbe3c58533ca0bbd6f14896baec7852c93"
#: Changed deliberately when the quick preset was resized (64 modes, nside 16, 32
#: realisations, so that Fig. 3 shows the perpendicular shape above the noise): a run
#: directory of the old quick preset is a different configuration to `crsky run`.
QUICK_DIGEST = "e2c316c99476a0f148bc584357b9e491db0d5f05d13b63325a34b308fee0b24f"

PHYSICAL = {"energy_tev": 10.0, "b0_microgauss": 3.0, "lc_pc": 30.0}

BAD = [
    ({"particles": {"nside": 12}}, r"\[particles\] nside = 12: must be a power of 2"),
    ({"particles": {"nside": 0}}, r"nside = 0: must be a power of 2"),
    ({"particles": {"nside": 8.0}}, r"nside = 8.0: must be an integer"),
    ({"turbulence": {"n_modes": 0}}, r"n_modes = 0: must be >= 1"),
    ({"turbulence": {"lambda_min": 0.0}}, r"lambda_min = 0.0: must be > 0"),
    ({"turbulence": {"lambda_min": 5.0, "lambda_max": 1.0}}, r"lambda_max = 1.0: must be > lambda_min"),
    ({"turbulence": {"sigma2": -1}}, r"sigma2 = -1.0: must be in \[0, 10000\]"),
    ({"turbulence": {"sigma2": 1e300}}, r"sigma2 = 1e\+300: must be in \[0, 10000\]"),
    ({"turbulence": {"sigma2": "big"}}, r"sigma2 = 'big': must be a number"),
    ({"turbulence": {"geometry": "fractal"}}, r"geometry = 'fractal': must be one of isotropic"),
    ({"turbulence": {"geometry": "composite", "slab_fraction": 1.5}}, r"slab_fraction = 1.5: must be in \[0, 1\]"),
    ({"particles": {"rl": 0}}, r"rl = 0.0: must be > 0"),
    ({"particles": {"rl": True}}, r"rl = True: must be a number"),
    ({"particles": {"charge": 0}}, r"charge = 0: must be a non-zero integer"),
    ({"particles": {"energy_tev": 10.0}}, r"b0_microgauss, lc_pc missing"),
    ({"particles": {**PHYSICAL, "charge": 0}}, r"\[particles\] charge = 0: must be a non-zero integer"),
    ({"particles": {**PHYSICAL, "charge": "1"}}, r"\[particles\] charge = '1': must be an integer, got str"),
    ({"particles": {**PHYSICAL, "charge": 2**64}}, r"charge = 18446744073709551616: must be a 64-bit integer"),
    ({"particles": {**PHYSICAL, "energy_tev": "big"}}, r"\[particles\] energy_tev = 'big': must be a number"),
    ({"particles": {**PHYSICAL, "energy_tev": -1.0}}, r"energy_tev = -1.0: must be a finite number > 0 \(in TeV\)"),
    ({"particles": {**PHYSICAL, "b0_microgauss": float("nan")}}, r"b0_microgauss = nan: must be a finite number"),
    ({"particles": {**PHYSICAL, "lc_pc": float("inf")}}, r"lc_pc = inf: must be a finite number"),
    ({"particles": {**PHYSICAL, "energy_tev": 1e-300, "b0_microgauss": 1e300}},
     r"give r_L / L_c = 0.0: must be a finite number > 0"),
    ({"particles": {"lc_pc": 30.0}}, r"\[particles\] energy_tev, b0_microgauss missing"),
    ({"particles": {"charge": 1.5}}, r"charge = 1.5: must be an integer"),
    ({"turbulence": {"n_modes": 2**63}}, r"n_modes = 9223372036854775808: must be a 64-bit integer"),
    ({"integration": {"t_max": 1e30, "dt": 1e-10, "t_min": 1e-9}},
     r"t_max / dt = 1e\+30 / 1e-10 = 1e\+40 steps: must be <= 1e\+09"),
    ({"integration": {"t_max": 1e300, "dt": 1e-300, "t_min": 1e-300}}, r"= inf steps: must be <= 1e\+09"),
    ({"integration": {"t_max": 1.1, "dt": 0.4, "t_min": 0.4}},
     r"t_max = 1.1: must be a whole number of steps dt = 0.4 .* e.g. 0.8 or 1.2"),
    ({"integration": {"t_min": 0.5, "t_max": 1.0, "n_snapshots": 10}},
     r"n_snapshots = 10: must be <= 6, the number of distinct steps dt = 0.1 from t_min = 0.5 to t_max = 1.0"),
    ({"turbulence": {"slab_fraction": 0.5}},
     r"slab_fraction = 0.5: used only by geometry = 'composite', ignored by geometry = 'isotropic'"),
    ({"turbulence": {"geometry": "slab", "slab_fraction": 0.0}}, r"ignored by geometry = 'slab'"),
    ({"particles": {"rl": 0.1, "energy_tev": 1.0, "b0_microgauss": 1.0, "lc_pc": 1.0}}, r"either rl or"),
    ({"integration": {"dt": -0.1}}, r"dt = -0.1: must be > 0"),
    ({"integration": {"t_max": 0}}, r"t_max = 0.0: must be > 0"),
    ({"integration": {"n_snapshots": 0}}, r"n_snapshots = 0: must be >= 1"),
    ({"integration": {"t_max": 1.0, "n_snapshots": 1000}}, r"n_snapshots = 1000: must be <= 10, the number of"),
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


def test_slab_fraction_default_is_accepted_and_keeps_the_digest():
    """A run's config.toml (which carries the default slab_fraction for every
    geometry) loads as input and names the same run."""
    plain = resolve_config({"turbulence": {"geometry": "2d"}})
    explicit = resolve_config({"turbulence": {"geometry": "2d", "slab_fraction": 0.2}})
    assert explicit == plain and explicit.digest() == plain.digest()
    assert config_from_toml_text(plain.to_toml()).digest() == plain.digest()
    composite = resolve_config({"turbulence": {"geometry": "composite", "slab_fraction": 0.7}})
    assert composite.turbulence.slab_fraction == 0.7


def test_stored_config_with_ignored_slab_fraction_still_reads_unchanged():
    """A run directory written before the check may hold any slab_fraction with an
    isotropic field: it is read as stored, so its digest (and its files) stay valid."""
    text = resolve_config().to_toml().replace("slab_fraction = 0.2", "slab_fraction = 0.5")
    cfg = config_from_toml_text(text)
    assert cfg.turbulence.slab_fraction == 0.5 and cfg.to_toml() == text


def test_paper_and_quick_digests_unchanged():
    """The resolved presets, and therefore their run directories, are as before."""
    assert resolve_config(preset="paper").digest() == PAPER_DIGEST
    assert resolve_config(preset="quick").digest() == QUICK_DIGEST


def test_t_max_within_rounding_of_a_whole_step_is_accepted():
    # 0.3 / 0.1 = 2.9999999999999996 and 2000 / 0.1 = 20000.000000000004 in float64
    assert resolve_config({"integration": {"t_max": 0.3, "n_snapshots": 2}}).integration.t_max == 0.3
    assert resolve_config(preset="paper").integration.t_max == 2000.0


def _write_bytes(tmp_path, data: bytes):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    return path


def test_utf8_byte_order_mark_is_skipped(tmp_path):
    path = _write_bytes(tmp_path, b"\xef\xbb\xbf[particles]\nnside = 4\n")
    assert load_config(path).particles.nside == 4


def test_non_utf8_bytes_are_refused_with_their_line(tmp_path):
    path = _write_bytes(tmp_path, b"[particles]\n# caf\xe9\nnside = 4\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text: byte 0xe9 on line 2"):
        load_config(path)


def test_utf16_file_is_refused(tmp_path):
    path = _write_bytes(tmp_path, "[particles]\nnside = 4\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text: byte 0xff on line 1"):
        load_config(path)


def test_huge_file_is_refused_without_reading_it_all(tmp_path):
    path = _write_bytes(tmp_path, b"# " + b"x" * (MAX_CONFIG_BYTES + 10))
    with pytest.raises(ConfigError, match=r"larger than 1024 KiB"):
        load_config(path)


def test_dev_zero_is_refused():
    with pytest.raises(ConfigError, match=r"/dev/zero is larger than 1024 KiB"):
        load_config("/dev/zero")


def test_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not a TOML file"):
        load_config(tmp_path)


@pytest.mark.parametrize("args, message", [
    ((10.0, 0, 3.0, 30.0), "charge = 0: must be a non-zero integer"),
    ((10.0, "1", 3.0, 30.0), "charge = '1': must be a non-zero integer"),
    ((-1.0, 1, 3.0, 30.0), "energy_tev = -1.0: must be a finite number > 0"),
    ((10.0, 1, float("nan"), 30.0), "b0_microgauss = nan: must be a finite number > 0"),
    ((10.0, 1, 3.0, 0.0), "lc_pc = 0.0: must be a finite number > 0"),
])
def test_unit_conversion_refuses_bad_inputs(args, message):
    from crsky.errors import InputError

    with pytest.raises(InputError, match=message):
        gyroradius_lc(*args)


def test_stored_config_of_an_older_run_stays_readable():
    """A run written before t_max had to be a whole step, or with sigma2 above the
    bound for new runs, is still read from its directory (to analyse it), while the
    same values are refused for a new run."""
    text = resolve_config().to_toml().replace("t_max = 300.0", "t_max = 300.05").replace("sigma2 = 1.0", "sigma2 = 20000.0")
    cfg = config_from_toml_text(text)
    assert (cfg.integration.t_max, cfg.turbulence.sigma2) == (300.05, 2e4) and cfg.to_toml() == text
    with pytest.raises(ConfigError, match="sigma2 = 20000.0"):
        resolve_config({"turbulence": {"sigma2": 2e4}})
    with pytest.raises(ConfigError, match="t_max = 300.05: must be a whole number of steps"):
        resolve_config({"integration": {"t_max": 300.05}})
