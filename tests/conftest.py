"""Test-wide JAX configuration (docs/style.md §14): 8 emulated CPU devices, float64 available,
strict dtype promotion and rank promotion errors. Library code always names its dtypes."""

import jax

from spark_tpu import platform

platform.emulate_cpu_devices(8)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
