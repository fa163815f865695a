"""Models by name, for configs and flags (docs/style.md §12)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
from jaxtyping import PRNGKeyArray

from ._cnn import CNN
from ._mlp import MLP, NTKMLP

def _linear(input_shape: Sequence[int], **options: Any) -> MLP:
    """An affine model f(x) = Wx + b: the MLP without hidden layers."""
    return MLP(input_shape, hidden=(), **options)


_MODELS: dict[str, Callable[..., eqx.Module]] = {
    "mlp": MLP, "cnn": CNN, "ntk_mlp": NTKMLP, "linear": _linear,
}
_NTK_MLP_DEFAULT_HIDDEN = (256,)


def make_model(
    name: str, input_shape: Sequence[int], num_classes: int, *, key: PRNGKeyArray, **options: Any
) -> eqx.Module:
    """Builds the model called `name` ("mlp", "cnn", "ntk_mlp" or "linear", an affine map).

    Args:
        name: model name.
        input_shape: shape of one example.
        num_classes: number of logits C.
        key: PRNG key for the initialization (one model, shared by all clients).
        **options: passed to the constructor (e.g. ``hidden=(100,)``, ``s_w=1.0``, ``dtype``).
            ``ntk_mlp`` defaults to ``hidden=(256,)`` as in seed 002.

    Raises:
        ValueError: for an unknown name.

    Examples:
        >>> import jax
        >>> from spark_tpu.models import make_model
        >>> model = make_model("mlp", (28, 28), 10, key=jax.random.key(0))
        >>> model(jax.numpy.zeros((28, 28), jax.numpy.float32)).shape
        (10,)
        >>> make_model("resnet", (28, 28), 10, key=jax.random.key(0))
        Traceback (most recent call last):
        ...
        ValueError: Unknown model 'resnet'; choose one of ['cnn', 'linear', 'mlp', 'ntk_mlp'].
    """
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(_MODELS)}.")
    if name == "ntk_mlp":
        options.setdefault("hidden", _NTK_MLP_DEFAULT_HIDDEN)
    return _MODELS[name](input_shape, num_classes=num_classes, key=key, **options)
