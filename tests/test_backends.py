"""Backend selection and the CPU vector-width switch (crsky.backends)."""

import os
import subprocess
import sys

import llvmlite.binding as ll
import pytest

from crsky.backends import VECTOR_BITS_ENV, configure_cpu_vectors, wide_vector_features
from crsky.errors import InputError

AVX512 = "+64bit,+avx,+avx2,+avx512f,+fma"
AVX2 = "+64bit,+avx,+avx2,-avx512f,+fma"


def test_wide_vectors_only_on_avx512():
    assert wide_vector_features(AVX512, {}) == AVX512 + ",-prefer-256-bit"
    assert wide_vector_features(AVX2, {}) is None
    assert wide_vector_features(AVX2, {VECTOR_BITS_ENV: "512"}) is None  # nothing to widen


def test_user_settings_win():
    assert wide_vector_features(AVX512, {VECTOR_BITS_ENV: "256"}) is None
    assert wide_vector_features(AVX512, {"NUMBA_CPU_FEATURES": "+avx2"}) is None
    assert wide_vector_features(AVX512, {"NUMBA_CPU_NAME": "haswell"}) is None
    assert wide_vector_features(AVX512, {VECTOR_BITS_ENV: " 512 "}) is not None


def test_bad_vector_bits_names_the_variable():
    with pytest.raises(InputError, match=VECTOR_BITS_ENV):
        wide_vector_features(AVX512, {VECTOR_BITS_ENV: "1024"})


def test_after_numba_import_nothing_changes():
    import numba  # noqa: F401 - the condition under test

    env = {}
    assert "already imported" in configure_cpu_vectors(env)
    assert env == {}


def test_command_line_process_gets_wide_vectors():
    # A fresh process, as the console script runs: main() configures before numba loads.
    code = (
        "import sys; from crsky.cli import main; main(['bgk', '--p', '0.5', '--lmax', '3']);"
        "import numba; print('FEATURES=' + str(numba.config.CPU_FEATURES))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", VECTOR_BITS_ENV)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    line = [x for x in out.stdout.splitlines() if x.startswith("FEATURES=")][0]
    if "+avx512f" in ll.get_host_cpu_features().flatten().split(","):
        assert line.endswith(",-prefer-256-bit")
    else:
        assert line == "FEATURES=None"
