"""A small convolutional network whose layers the NTK engine can read (docs/data.md §1 datasets)."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, DTypeLike, Float, PRNGKeyArray

from ._factory import register
from ._layers import Conv2d, Dense, kaiming_conv, kaiming_dense
from ._sequential import AbstractSequential


def _avg_pool2(h: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c"]:
    """2x2 average pooling, stride 2, VALID (an odd trailing row/column is dropped)."""
    summed = jax.lax.reduce_window(h, 0.0, jax.lax.add, (2, 2, 1), (2, 2, 1), "VALID")
    return summed * 0.25


class CNN(AbstractSequential):
    """conv3x3–ReLU–avgpool2, twice, then a dense head to C logits.

    Kaiming-normal weights, zero biases. Images are channels-last: `input_shape` is ``(H, W)`` or
    ``(H, W, C_in)``.

    Args:
        input_shape: shape of one example.
        num_classes: number of logits C.
        key: PRNG key.
        channels: output channels of the two convolutions.
        dtype: parameter dtype.
    """

    layers: tuple[Conv2d, Conv2d, Dense]
    input_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        key: PRNGKeyArray,
        channels: tuple[int, int] = (8, 16),
        dtype: DTypeLike = jnp.float32,
    ):
        shape = tuple(int(d) for d in input_shape)
        if len(shape) not in (2, 3) or min(shape[:2]) < 4:
            raise ValueError(
                f"CNN needs input_shape (H, W) or (H, W, C_in) with H, W >= 4; got {shape}."
            )
        c_in = shape[2] if len(shape) == 3 else 1
        k1, k2, k3 = jax.random.split(key, 3)
        flat = (shape[0] // 4) * (shape[1] // 4) * channels[1]
        self.layers = (
            kaiming_conv(k1, c_in, channels[0], 3, dtype),
            kaiming_conv(k2, channels[0], channels[1], 3, dtype),
            kaiming_dense(k3, flat, num_classes, dtype),
        )
        self.input_shape = shape

    def _prepare(self, x: Array) -> Float[Array, "h w c"]:
        return jnp.reshape(x, (*self.input_shape[:2], -1))

    def _between(self, index: int, z: Array) -> Array:
        h = _avg_pool2(jax.nn.relu(z))
        return h if index == 0 else jnp.reshape(h, (-1,))


register("cnn", CNN)
