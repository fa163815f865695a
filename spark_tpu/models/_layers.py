"""Parameterized layers whose structure the NTK engine reads (docs/ntk_step.md §2, docs/dynamics.md §6).

Every layer computes ``z = weight_gain * (W ⊛ a) + bias_gain * b``. The gains are static: 1.0 for
the standard parameterization, ``s_w / sqrt(fan_in)`` and ``s_b`` for the NTK parameterization of
seed 002, eq. (1). Keeping them explicit lets `spark_tpu.ntk.trace_kernel` form the kernel layer by
layer without a Jacobian.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, DTypeLike, Float, PRNGKeyArray

# Full float32 accuracy in every contraction: on GPUs the default is TF32, which would make the
# kernel, the solver and the horizon choice disagree at the 1e-3 level.
PRECISION = jax.lax.Precision.HIGHEST


def kaiming_normal(
    key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int, dtype: DTypeLike
) -> Float[Array, "*shape"]:
    """Kaiming-normal (He) initialization: entries ~ N(0, 2 / fan_in) (docs/ntk_dfl.md §4)."""
    std = math.sqrt(2.0 / fan_in)
    return std * jax.random.normal(key, shape, dtype)


class Dense(eqx.Module):
    """``z = weight_gain * W a + bias_gain * b`` on one unbatched input vector.

    Attributes:
        weight: ``[out, in]``.
        bias: ``[out]``.
        weight_gain: static multiplier of ``W a`` (``s_w / sqrt(in)`` in NTK parameterization).
        bias_gain: static multiplier of ``b`` (``s_b`` in NTK parameterization).
    """

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"]
    weight_gain: float = eqx.field(static=True)
    bias_gain: float = eqx.field(static=True)

    def __init__(
        self,
        weight: Float[Array, "out in"],
        bias: Float[Array, " out"],
        *,
        weight_gain: float = 1.0,
        bias_gain: float = 1.0,
    ):
        if weight.ndim != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(
                f"Dense needs weight [out, in] and bias [out]; got {weight.shape} and {bias.shape}."
            )
        self.weight = weight
        self.bias = bias
        self.weight_gain = float(weight_gain)
        self.bias_gain = float(bias_gain)

    @property
    def fan_in(self) -> int:
        return self.weight.shape[-1]

    def __call__(self, a: Float[Array, " in"]) -> Float[Array, " out"]:
        z = jnp.matmul(self.weight, a, precision=PRECISION)
        return self.weight_gain * z + self.bias_gain * self.bias


class Conv2d(eqx.Module):
    """A 2-D convolution on one channels-last image ``[H, W, C_in]``, stride 1, SAME padding.

    Attributes:
        weight: ``[kh, kw, C_in, C_out]`` (HWIO).
        bias: ``[C_out]``.
        weight_gain, bias_gain: static multipliers, as in `Dense`.
    """

    weight: Float[Array, "kh kw cin cout"]
    bias: Float[Array, " cout"]
    weight_gain: float = eqx.field(static=True)
    bias_gain: float = eqx.field(static=True)

    def __init__(
        self,
        weight: Float[Array, "kh kw cin cout"],
        bias: Float[Array, " cout"],
        *,
        weight_gain: float = 1.0,
        bias_gain: float = 1.0,
    ):
        if weight.ndim != 4 or bias.shape != weight.shape[-1:]:
            raise ValueError(
                "Conv2d needs weight [kh, kw, C_in, C_out] and bias [C_out]; "
                f"got {weight.shape} and {bias.shape}."
            )
        self.weight = weight
        self.bias = bias
        self.weight_gain = float(weight_gain)
        self.bias_gain = float(bias_gain)

    def __call__(self, a: Float[Array, "h w cin"]) -> Float[Array, "h w cout"]:
        z = jax.lax.conv_general_dilated(
            a[None],
            self.weight,
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=PRECISION,
        )[0]
        return self.weight_gain * z + self.bias_gain * self.bias[None, None, :]


def kaiming_dense(key: PRNGKeyArray, fan_in: int, fan_out: int, dtype: DTypeLike) -> Dense:
    """A `Dense` layer with Kaiming-normal weights and zero biases."""
    weight = kaiming_normal(key, (fan_out, fan_in), fan_in, dtype)
    return Dense(weight, jnp.zeros((fan_out,), dtype))


def kaiming_conv(
    key: PRNGKeyArray, c_in: int, c_out: int, kernel_size: int, dtype: DTypeLike
) -> Conv2d:
    """A `Conv2d` layer with Kaiming-normal weights (fan_in = C_in·k·k) and zero biases."""
    shape = (kernel_size, kernel_size, c_in, c_out)
    weight = kaiming_normal(key, shape, c_in * kernel_size * kernel_size, dtype)
    return Conv2d(weight, jnp.zeros((c_out,), dtype))
