"""Multilayer perceptrons: the reference MLP (docs/ntk_dfl.md §4) and the NTK-parameterized MLP (docs/dynamics.md §6)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, DTypeLike, Float, PRNGKeyArray

from ._factory import register
from ._layers import Dense, kaiming_dense
from ._sequential import AbstractSequential, get_activation


def _widths(input_shape: Sequence[int], hidden: int | Sequence[int], num_classes: int) -> list[int]:
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    widths = [math.prod(input_shape), *hidden, num_classes]
    if any(int(w) < 1 for w in widths):
        raise ValueError(
            f"Layer widths must be positive; got {widths} (input, hidden..., classes)."
        )
    return [int(w) for w in widths]


class _AbstractMLP(AbstractSequential):
    layers: eqx.AbstractVar[tuple[Dense, ...]]
    input_shape: eqx.AbstractVar[tuple[int, ...]]
    activation: eqx.AbstractVar[str]

    def _prepare(self, x: Array) -> Float[Array, " features"]:
        return jnp.reshape(x, (-1,))

    def _between(self, index: int, z: Array) -> Array:
        del index
        return get_activation(self.activation)(z)

    @property
    def elementwise_activation(self) -> Callable[[Array], Array] | None:
        return get_activation(self.activation)


class MLP(_AbstractMLP):
    """Flatten, then Dense–ReLU–…–Dense, Kaiming-normal weights and zero biases (docs/ntk_dfl.md §4).

    The default 784-100-10 network has P = 79,510 parameters.

    Args:
        input_shape: shape of one example, e.g. ``(28, 28)``; it is flattened.
        hidden: width(s) of the hidden layers.
        num_classes: number of logits C.
        key: PRNG key for the weights.
        dtype: parameter dtype.
        activation: hidden activation, a key of `spark_tpu.models.ACTIVATIONS`.
    """

    layers: tuple[Dense, ...]
    input_shape: tuple[int, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: int | Sequence[int] = (100,),
        num_classes: int = 10,
        *,
        key: PRNGKeyArray,
        dtype: DTypeLike = jnp.float32,
        activation: str = "relu",
    ):
        get_activation(activation)
        widths = _widths(input_shape, hidden, num_classes)
        keys = jax.random.split(key, len(widths) - 1)
        self.layers = tuple(
            kaiming_dense(k, fan_in, fan_out, dtype)
            for k, fan_in, fan_out in zip(keys, widths[:-1], widths[1:])
        )
        self.input_shape = tuple(int(d) for d in input_shape)
        self.activation = activation


def linear(input_shape: Sequence[int], **options) -> MLP:
    """An affine model f(x) = Wx + b: the MLP without hidden layers."""
    return MLP(input_shape, hidden=(), **options)


register("mlp", MLP)
register("linear", linear)


class NTKMLP(_AbstractMLP):
    """An MLP in NTK parameterization (arXiv 2409.15267, eq. (1); docs/dynamics.md §6).

    Trainable ``W, b ~ N(0, 1)``; layer l computes ``(s_w / sqrt(n_l)) W a + s_b b``.

    Args:
        input_shape: shape of one example; it is flattened.
        hidden: width(s) of the hidden layers.
        num_classes: number of outputs C.
        key: PRNG key for the weights.
        s_w: weight standard deviation (static).
        s_b: bias standard deviation (static).
        activation: a key of `spark_tpu.models.ACTIVATIONS` (seed 002 uses ``"sigmoid"``).
        dtype: parameter dtype.
    """

    layers: tuple[Dense, ...]
    input_shape: tuple[int, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: int | Sequence[int],
        num_classes: int,
        *,
        key: PRNGKeyArray,
        s_w: float = 1.0,
        s_b: float = 0.1,
        activation: str = "relu",
        dtype: DTypeLike = jnp.float32,
    ):
        get_activation(activation)
        widths = _widths(input_shape, hidden, num_classes)
        keys = jax.random.split(key, len(widths) - 1)
        layers = []
        for k, fan_in, fan_out in zip(keys, widths[:-1], widths[1:]):
            kw, kb = jax.random.split(k)
            layers.append(
                Dense(
                    jax.random.normal(kw, (fan_out, fan_in), dtype),
                    jax.random.normal(kb, (fan_out,), dtype),
                    weight_gain=s_w / math.sqrt(fan_in),
                    bias_gain=s_b,
                )
            )
        self.layers = tuple(layers)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.activation = activation


def ntk_mlp(
    input_shape: Sequence[int], *, num_classes: int, key: PRNGKeyArray,
    hidden: int | Sequence[int] = (256,), **options,
) -> NTKMLP:
    """`NTKMLP` with seed 002's default width, ``hidden=(256,)``."""
    return NTKMLP(input_shape, hidden, num_classes, key=key, **options)


register("ntk_mlp", ntk_mlp)
