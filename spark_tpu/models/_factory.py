"""Models by name, for configs and flags (docs/extending.md §3).

`MODELS` maps a name to a factory ``(input_shape, *, num_classes, key, **options) -> eqx.Module``;
each built-in registers in the module that defines it (`_mlp.py`, `_cnn.py`). A name may also be
an import path ``package.module:attribute`` naming a factory (or a ready Equinox module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
from jaxtyping import PRNGKeyArray

from spark_tpu.registry import Registry, is_import_path

ModelFactory = Callable[..., eqx.Module]
MODELS: Registry[ModelFactory] = Registry("model", "model")


def register(name: str, factory: ModelFactory, *, replace: bool = False) -> ModelFactory:
    """Makes ``factory`` ``(input_shape, *, num_classes, key, **options) -> eqx.Module``
    available as ``--model=name`` and to `spark_tpu.simulate`; returns it."""
    return MODELS.register(name, factory, replace=replace)


def make_model(
    name: str | ModelFactory | eqx.Module,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    key: PRNGKeyArray,
    **options: Any,
) -> eqx.Module:
    """Builds the model called `name` (a name of `MODELS`: "mlp", "cnn", "ntk_mlp", "linear", an
    affine map, or one you registered; or an import path ``package.module:attribute``).

    Args:
        name: model name, import path, or the factory itself (an Equinox module is returned as is).
        input_shape: shape of one example.
        num_classes: number of logits C.
        key: PRNG key for the initialization (one model, shared by all clients).
        **options: passed to the factory (e.g. ``hidden=(100,)``, ``s_w=1.0``, ``dtype``).
            ``ntk_mlp`` defaults to ``hidden=(256,)`` as in seed 002.

    Raises:
        ValueError: for an unknown name.
        TypeError: the factory returned something other than an Equinox module.

    Examples:
        >>> import jax
        >>> from spark_tpu.models import make_model
        >>> model = make_model("mlp", (28, 28), 10, key=jax.random.key(0))
        >>> model(jax.numpy.zeros((28, 28), jax.numpy.float32)).shape
        (10,)
        >>> make_model("resnet", (28, 28), 10, key=jax.random.key(0))
        Traceback (most recent call last):
        ...
        ValueError: Unknown model 'resnet'; choose one of cnn, mlp, linear, ntk_mlp, or give an import path package.module:attribute.
    """
    label = name if isinstance(name, str) else getattr(name, "__qualname__", type(name).__name__)
    if isinstance(name, str):
        if name not in MODELS and not is_import_path(name):
            raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}, or give "
                             "an import path package.module:attribute.")
        name = MODELS.get(name)
    if isinstance(name, eqx.Module):
        return name
    net = name(input_shape, num_classes=num_classes, key=key, **options)
    if not isinstance(net, eqx.Module):
        raise TypeError(f"--model={label}: the factory returned a {type(net).__name__}, not an "
                        "Equinox module.")
    return net
