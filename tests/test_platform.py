"""Emulated CPU devices: the XLA:CPU collective timeout is raised only with a flag jaxlib knows; BLAS runs on one thread."""

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


def test_emulation_runs_blas_on_one_thread():
    # conftest emulated the devices; the solvers' LAPACK calls (scipy's OpenBLAS, through jaxlib)
    # then run on the calling XLA thread only (platform.limit_blas_threads).
    import threadpoolctl

    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert any("scipy" in i["filepath"] for i in blas), blas  # scipy's own OpenBLAS is covered
    assert blas and all(i["num_threads"] == 1 for i in blas), blas
