"""The step-size schedule of NTK-DFL (docs/ntk_step.md §6)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, Scalar


def lr_schedule(
    eta0: float, decay: float, *, dtype: DTypeLike = jnp.float32
) -> Callable[[ArrayLike], Scalar]:
    """``η_k = η_0 · exp(-λ_decay · k)`` as a function of the (possibly traced) round k.

    NTK-DFL's defaults are ``eta0=0.01, decay=0.07``.

    Examples:
        >>> schedule = lr_schedule(0.01, 0.07)
        >>> round(float(schedule(10)), 6)
        0.004966
    """

    def schedule(round_index: ArrayLike) -> Array:
        k = jnp.asarray(round_index, dtype)
        return jnp.asarray(eta0, dtype) * jnp.exp(jnp.asarray(-decay, dtype) * k)

    return schedule
