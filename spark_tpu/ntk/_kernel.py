"""The trace kernel K = (1/C) Σ_c J_c J_cᵀ, by layer structure and by brute force (docs/ntk_step.md §2).

Structured form. For a layer ``z = γ_w W ⊛ a + γ_b b`` with pre-activation cotangents
``g_{n,c} = ∂f_c(x_n)/∂z``, the Jacobian rows of a dense layer are ``γ_w g ⊗ a`` and ``γ_b g``, so

    K_layer[n, m] = (1/C) Σ_c (γ_w² a_n·a_m + γ_b²) (g_{n,c}·g_{m,c}).

For the last dense layer g is one-hot, giving ``γ_w² a_n·a_m + γ_b²``. When the map into the last
dense layer (weights V, gain γ_V) is an elementwise activation φ, the second-to-last layer has
``g_{n,c} = φ'(z_n) ⊙ γ_V V_c`` and the class sum collapses to ``Σ_j s_j φ'_{nj} φ'_{mj}`` with
``s_j = γ_V² Σ_c V_{cj}²``. Convolutions share weights across positions, so their per-sample,
per-class Jacobian rows (a few thousand numbers for a small conv layer) are formed from the layer's
own VJP; the full P-wide Jacobian is never built.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..models import AbstractSequential, Conv2d, Dense

_PRECISION = jax.lax.Precision.HIGHEST
_NOT_SEQUENTIAL = (
    "trace_kernel needs a spark_tpu.models.AbstractSequential model (MLP, NTKMLP, CNN); got {}. "
    "For other models use trace_kernel_materialized."
)


_BLOCKS = 3  # a Gram matrix u uᵀ as 3 × 3 blocks, the 6 on and above the diagonal computed
_BLOCKED_FROM = 384  # rows; below, one product


def _self_gram(u: Array) -> Array:
    """``u_flat @ u_flatᵀ``, computing only the blocks on and above the diagonal: 6 of 9 block
    products (on CPU, [1194, 784]: 7.9 ms against 10.8 ms for one product, the same numbers);
    the mirrored blocks are exact transposes."""
    u = jnp.reshape(u, (u.shape[0], -1))
    n = u.shape[0]
    if n < _BLOCKED_FROM:
        return jnp.matmul(u, u.T, precision=_PRECISION)
    edges = [n * i // _BLOCKS for i in range(_BLOCKS + 1)]
    parts = [u[edges[i] : edges[i + 1]] for i in range(_BLOCKS)]
    upper = {
        (i, j): jnp.matmul(parts[i], parts[j].T, precision=_PRECISION)
        for i in range(_BLOCKS)
        for j in range(i, _BLOCKS)
    }
    rows = [
        jnp.concatenate([upper[i, j] if i <= j else upper[j, i].T for j in range(_BLOCKS)], axis=1)
        for i in range(_BLOCKS)
    ]
    return jnp.concatenate(rows, axis=0)


def _record_with_cotangents(model: AbstractSequential, x: Array):
    """Per example: logits ``[N, C]``, layer inputs, pre-activations, and cotangents ``[N, C, ...]``."""
    example = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    out_shapes = jax.eval_shape(lambda e: model.record(e)[2], example)

    def one(xi):
        taps = tuple(jnp.zeros(s.shape, s.dtype) for s in out_shapes)

        def forward(t):
            logits, inputs, outputs = model.record(xi, t)
            return logits, (inputs, outputs)

        logits, vjp_fn, (inputs, outputs) = jax.vjp(forward, taps, has_aux=True)
        eye = jnp.eye(logits.shape[-1], dtype=logits.dtype)
        (cotangents,) = jax.vmap(vjp_fn)(eye)
        return logits, inputs, outputs, cotangents

    return jax.vmap(one)(x)


def _dense_factor(layer: Dense, a: Array) -> Array:
    """``γ_w² a_n·a_m + γ_b²``, the input factor of a dense layer's kernel term."""
    return layer.weight_gain**2 * _self_gram(a) + layer.bias_gain**2


def _conv_term(layer: Conv2d, a: Array, g: Array) -> Array:
    """``Σ_c J_c J_cᵀ`` of one conv layer from its per-sample, per-class parameter VJPs."""
    params, static = eqx.partition(layer, eqx.is_array)

    def rows(ai, gi):
        _, vjp_fn = jax.vjp(lambda p: eqx.combine(p, static)(ai), params)
        grads = jax.vmap(vjp_fn)(gi)[0]
        return jnp.concatenate(
            [jnp.reshape(leaf, (gi.shape[0], -1)) for leaf in jax.tree.leaves(grads)], axis=-1
        )

    jac = jax.vmap(rows)(a, g)  # [N, C, P_layer]
    return jnp.einsum("ncp,mcp->nm", jac, jac, precision=_PRECISION)


def _collapsed_cotangent_gram(model: AbstractSequential, z: Array) -> Array:
    """``Σ_c g_{n,c}·g_{m,c}`` of the second-to-last layer when the last map is elementwise."""
    last = model.layers[-1]
    phi = model.elementwise_activation
    slope = jax.jvp(phi, (z,), (jnp.ones_like(z),))[1]  # φ'(z), [N, width]
    s = last.weight_gain**2 * jnp.sum(jnp.square(last.weight), axis=0)
    return _self_gram(slope * jnp.sqrt(s)[None, :])  # s >= 0: Σ_j s_j φ'_nj φ'_mj


def _can_collapse(model: AbstractSequential) -> bool:
    layers = model.layers
    return (
        len(layers) >= 2
        and isinstance(layers[-1], Dense)
        and isinstance(layers[-2], Dense)
        and model.elementwise_activation is not None
    )


def trace_kernel(
    model: AbstractSequential,
    x: Float[Array, "samples ..."],
    mask: Bool[Array, " samples"] | None = None,
) -> Float[Array, "samples samples"]:
    """The trace kernel ``(1/C) Σ_c J_c J_cᵀ`` without materializing J (docs/ntk_step.md §2).

    Args:
        model: an `AbstractSequential` model (`MLP`, `NTKMLP`, `CNN`), one example per call.
        x: ``[N, *input_shape]`` inputs.
        mask: optional ``[N]`` booleans; rows and columns of masked-out samples are zero.

    Returns:
        ``[N, N]`` kernel in the model's dtype.

    Raises:
        TypeError: if `model` is not an `AbstractSequential`.
    """
    if not isinstance(model, AbstractSequential):
        raise TypeError(_NOT_SEQUENTIAL.format(type(model).__name__))
    logits, inputs, outputs, cotangents = _record_with_cotangents(model, x)
    num_classes = logits.shape[-1]
    layers = model.layers
    collapse = _can_collapse(model)
    kernel = jnp.zeros((x.shape[0], x.shape[0]), logits.dtype)
    for i, layer in enumerate(layers):
        if i == len(layers) - 1 and isinstance(layer, Dense):
            term = num_classes * _dense_factor(layer, inputs[i])
        elif i == len(layers) - 2 and collapse:
            term = _dense_factor(layer, inputs[i]) * _collapsed_cotangent_gram(model, outputs[i])
        elif isinstance(layer, Dense):
            term = _dense_factor(layer, inputs[i]) * _self_gram(cotangents[i])
        else:
            term = _conv_term(layer, inputs[i], cotangents[i])
        kernel = kernel + term
    kernel = kernel / num_classes
    if mask is not None:
        kernel = jnp.where(mask[:, None] & mask[None, :], kernel, jnp.zeros((), kernel.dtype))
    return kernel


def materialized_jacobian(
    model: eqx.Module, x: Float[Array, "samples ..."]
) -> Float[Array, "samples classes params"]:
    """The full Jacobian ``∂f(x_n)/∂w`` as ``[N, C, P]`` (leaves in `jax.tree.leaves` order).

    For tests and benchmarks only: it is P/N times larger than the kernel.
    """
    params, static = eqx.partition(model, eqx.is_array)

    def one(xi):
        jac = jax.jacrev(lambda p: eqx.combine(p, static)(xi))(params)
        leaves = jax.tree.leaves(jac)
        return jnp.concatenate([jnp.reshape(l, (l.shape[0], -1)) for l in leaves], axis=-1)

    return jax.vmap(one)(x)


def trace_kernel_materialized(
    model: eqx.Module,
    x: Float[Array, "samples ..."],
    mask: Bool[Array, " samples"] | None = None,
) -> Float[Array, "samples samples"]:
    """The reference trace kernel from the explicit Jacobian (jax.jacrev), as NTK-DFL forms it.

    Works for any model mapping one example to logits ``[C]``. Same contract as `trace_kernel`.
    """
    jac = materialized_jacobian(model, x)
    kernel = jnp.einsum("ncp,mcp->nm", jac, jac, precision=_PRECISION) / jac.shape[1]
    if mask is not None:
        kernel = jnp.where(mask[:, None] & mask[None, :], kernel, jnp.zeros((), kernel.dtype))
    return kernel
