"""Weight-space pieces of the NTK step: batched forward, Jᵀr by one VJP (docs/ntk_step.md §4)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree


def batched_forward(
    model: eqx.Module,
) -> tuple[PyTree, Callable[[PyTree, Array], Float[Array, "samples classes"]]]:
    """Splits `model` into its array params and ``apply(params, x) -> [N, C]`` (vmapped forward)."""
    params, static = eqx.partition(model, eqx.is_array)

    def apply(p: PyTree, x: Array) -> Array:
        return jax.vmap(eqx.combine(p, static))(x)

    return params, apply


def jacobian_transpose_product(
    model: eqx.Module,
    x: Float[Array, "samples ..."],
    r: Float[Array, "samples classes"],
) -> PyTree:
    """``Σ_n Σ_c J[n, c, :] r[n, c]`` as ONE vector–Jacobian product of the batched forward.

    Args:
        model: the linearization point w.
        x: ``[N, *input_shape]`` inputs.
        r: ``[N, C]`` cotangent (e.g. a residual sum ``r_τ``; padded rows zero).

    Returns:
        A pytree shaped like ``eqx.filter(model, eqx.is_array)`` (None at non-array leaves), so
        ``eqx.apply_updates(model, scaled)`` applies it.
    """
    params, apply = batched_forward(model)
    _, vjp_fn = jax.vjp(lambda p: apply(p, x), params)
    return vjp_fn(r.astype(_output_dtype(params)))[0]


def _output_dtype(params: PyTree):
    leaves = jax.tree.leaves(params)
    return leaves[0].dtype if leaves else jnp.float32


def scale_tree(tree: PyTree, factor: ArrayLike) -> PyTree:
    """``factor * tree`` leafwise, casting `factor` to each leaf's dtype (strict promotion)."""
    return jax.tree.map(lambda leaf: jnp.asarray(factor, leaf.dtype) * leaf, tree)
