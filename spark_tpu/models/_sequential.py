"""The layered model shape that the NTK engine relies on (docs/ntk_step.md §2).

A model is a chain ``x -> prepare -> L_0 -> between_0 -> L_1 -> ... -> L_{last}`` of parameterized
layers (`Dense`, `Conv2d`) joined by parameter-free maps. `AbstractSequential.record` runs that chain
on one example with an optional additive *tap* on every layer output: the cotangent of the logits
with respect to a zero tap is the cotangent with respect to that layer's pre-activation, which is
all the kernel needs besides the layer inputs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._layers import Conv2d, Dense

Layer = Dense | Conv2d

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "erf": jax.scipy.special.erf,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "identity": lambda z: z,
}

_UNKNOWN_ACTIVATION = "Unknown activation {name!r}; choose one of {choices}."


def get_activation(name: str) -> Callable[[Array], Array]:
    """The activation function called `name` (a key of `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            _UNKNOWN_ACTIVATION.format(name=name, choices=sorted(ACTIVATIONS))
        ) from None


class AbstractSequential(eqx.Module):
    """A chain of parameterized layers; `__call__` maps ONE example to logits ``[C]``.

    Subclasses define `layers`, `input_shape`, `_prepare` and `_between`. Array leaves are the
    layer weights only, so a stack of models (leading client axis) works with `eqx.filter_vmap`.
    """

    layers: eqx.AbstractVar[tuple[Layer, ...]]
    input_shape: eqx.AbstractVar[tuple[int, ...]]

    @abc.abstractmethod
    def _prepare(self, x: Array) -> Array:
        """Maps the raw example to the first layer's input."""

    @abc.abstractmethod
    def _between(self, index: int, z: Array) -> Array:
        """Maps layer `index`'s output to layer ``index + 1``'s input."""

    @property
    def elementwise_activation(self) -> Callable[[Array], Array] | None:
        """The map between the last two layers when it is elementwise, else None.

        When it is, and the last layer is `Dense`, the class-summed cotangent Gram of the
        second-to-last layer collapses from ``C·width`` to ``width`` columns.
        """
        return None

    def record(
        self, x: Array, taps: Sequence[Array] | None = None
    ) -> tuple[Float[Array, " classes"], tuple[Array, ...], tuple[Array, ...]]:
        """Runs the chain on one example.

        Args:
            x: one example of shape `input_shape`.
            taps: optional arrays added to each layer's output (pre-activation); zeros leave the
                function unchanged and their cotangents are the pre-activation cotangents.

        Returns:
            ``(logits, layer_inputs, layer_outputs)``.
        """
        h = self._prepare(x)
        inputs, outputs = [], []
        for i, layer in enumerate(self.layers):
            inputs.append(h)
            z = layer(h)
            if taps is not None:
                z = z + taps[i]
            outputs.append(z)
            if i + 1 < len(self.layers):
                h = self._between(i, z)
        return outputs[-1], tuple(inputs), tuple(outputs)

    def __call__(self, x: Array) -> Float[Array, " classes"]:
        return self.record(x)[0]


def num_parameters(model: eqx.Module) -> int:
    """The number of scalar parameters (array leaves) of `model`."""
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_array))
    return sum(int(leaf.size) for leaf in leaves)
