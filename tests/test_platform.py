"""Emulated CPU devices: the XLA:CPU collective timeout is raised only with a flag jaxlib knows."""

import os

import jax

from spark_tpu import platform


def test_conftest_emulation_raised_the_collective_timeout():
    assert len(jax.devices()) == 8
    assert platform._jaxlib_knows(platform._TIMEOUT_FLAG)  # jaxlib 0.10.x defines it
    assert f"--{platform._TIMEOUT_FLAG}={platform.CPU_COLLECTIVE_TIMEOUT_S}" in os.environ.get(
        "XLA_FLAGS", ""
    )


def test_unknown_flags_are_never_added():
    # An unknown XLA flag aborts the process at backend start, so the probe must say no.
    assert not platform._jaxlib_knows("xla_cpu_no_such_flag_for_spark_tpu_tests")
