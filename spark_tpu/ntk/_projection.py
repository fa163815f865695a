"""Random projection of per-layer Jacobians, without materializing J (docs/spark.md §5).

Each parameterized layer is viewed as one matrix ``W̃ [rows, cols]``: a dense layer as
``[W | b]`` (``rows = out``, ``cols = in + 1``), a convolution as ``[W_(kh·kw·cin) | b]`` per output
channel. The Jacobian row of sample n, class c is then the matrix ``J̃[n, c]`` of that shape; for a
dense layer it is the outer product ``g_{n,c} ⊗ ã_n`` with ``ã = [γ_w a, γ_b]``.

Two projections per layer, drawn from ``fold_in(key(seed), layer_index)`` so every client draws the
same ones, scaled so that ``E[P Pᵀ] = I`` (the projected kernel and the back-projected weight step
are unbiased):

- ``"gaussian"``: a dense ``P [rows·cols, k]`` with entries N(0, 1/k);
- ``"kronecker"``: ``P = P_rows ⊗ P_cols`` with ``P_rows [rows, k_r]``, ``P_cols [cols, k_c]``,
  entries N(0, 1/k_r) and N(0, 1/k_c), ``k_r = min(rows, round(√k))``, ``k_c = ⌈k / k_r⌉``;
  ``J̃ P = P_rowsᵀ J̃ P_cols`` costs two thin products (for dense layers, of g and ã separately).

A layer (or, for the Kronecker form, a factor) no larger than its target k is sent exactly
(identity projection): projection never sends more than J.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from ..models import AbstractSequential, Conv2d, Dense
from ._kernel import _NOT_SEQUENTIAL, _record_with_cotangents

_PRECISION = jax.lax.Precision.HIGHEST
_KINDS = ("gaussian", "kronecker")

ProjectedJacobian = tuple[Float[Array, "samples classes k"], ...]


def _layer_matrix_shape(layer) -> tuple[int, int]:
    if isinstance(layer, Dense):
        return layer.weight.shape[0], layer.weight.shape[1] + 1
    kh, kw, cin, cout = layer.weight.shape
    return cout, kh * kw * cin + 1


def _gaussian(key: PRNGKeyArray, dim: int, k: int, dtype) -> Array:
    """``[dim, k]`` with N(0, 1/k) entries, or the identity when k >= dim."""
    if k >= dim:
        return jnp.eye(dim, dtype=dtype)
    return jax.random.normal(key, (dim, k), dtype) / jnp.sqrt(jnp.asarray(k, dtype))


def kronecker_split(k: int, rows: int, cols: int) -> tuple[int, int]:
    """The factor sizes ``(k_r, k_c)`` of a Kronecker projection of target size k."""
    k_r = min(rows, max(1, round(math.sqrt(k))))
    return k_r, min(cols, -(-k // k_r))


def _check(k: int, kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"Unknown projection kind {kind!r}; choose one of {_KINDS}.")
    if int(k) < 1:
        raise ValueError(f"Projection size k must be a positive integer; got {k!r}.")


def projection_sizes(model: AbstractSequential, *, k: int, kind: str = "gaussian") -> tuple[int, ...]:
    """Per layer, the width ``k_l`` of ``J_l P_l`` (what one sample and class costs to send).

    ``min(k, rows·cols)`` for ``"gaussian"``, ``k_r·k_c`` for ``"kronecker"`` (may exceed k a
    little, never rows·cols): exactly the widths `layer_projections` draws. Static (shapes only).
    """
    _check(k, kind)
    sizes = []
    for layer in model.layers:
        rows, cols = _layer_matrix_shape(layer)
        if kind == "gaussian":
            sizes.append(min(int(k), rows * cols))
        else:
            k_r, k_c = kronecker_split(k, rows, cols)
            sizes.append(k_r * k_c)
    return tuple(sizes)


def layer_projections(
    model: AbstractSequential, *, k: int, seed: int | PRNGKeyArray, kind: str = "gaussian"
) -> tuple[tuple[Array, ...], ...]:
    """Per layer: ``(P,)`` with P ``[rows·cols, k']`` (gaussian) or ``(P_rows, P_cols)``."""
    _check(k, kind)
    root = jax.random.key(seed) if isinstance(seed, int) else seed
    out = []
    for index, layer in enumerate(model.layers):
        key = jax.random.fold_in(root, index)
        rows, cols = _layer_matrix_shape(layer)
        dtype = layer.weight.dtype
        if kind == "gaussian":
            out.append((_gaussian(key, rows * cols, k, dtype),))
        else:
            k_r, k_c = kronecker_split(k, rows, cols)
            key_r, key_c = jax.random.split(key)
            out.append((_gaussian(key_r, rows, k_r, dtype), _gaussian(key_c, cols, k_c, dtype)))
    return tuple(out)


def _dense_projection(layer: Dense, a: Array, g: Array, factors) -> Array:
    """``J̃ P`` of a dense layer from its inputs ``a [N, in]`` and cotangents ``g [N, C, out]``."""
    n = a.shape[0]
    ones = jnp.full((n, 1), layer.bias_gain, a.dtype)
    a_aug = jnp.concatenate([layer.weight_gain * a, ones], axis=-1)  # ã, [N, in + 1]
    if len(factors) == 2:
        p_rows, p_cols = factors
        gp = jnp.einsum("nci,ia->nca", g, p_rows, precision=_PRECISION)
        ap = jnp.matmul(a_aug, p_cols, precision=_PRECISION)
        return jnp.reshape(gp[..., :, None] * ap[:, None, None, :], (n, g.shape[1], -1))
    (p,) = factors
    p3 = jnp.reshape(p, (g.shape[-1], a_aug.shape[-1], -1))
    t = jnp.einsum("nj,ijk->nik", a_aug, p3, precision=_PRECISION)  # [N, out, k]
    return jnp.einsum("nci,nik->nck", g, t, precision=_PRECISION)


def _conv_matrix_rows(layer: Conv2d, a: Array, g: Array) -> Array:
    """Per-sample, per-class Jacobian matrices ``J̃ [N, C, cout, kh·kw·cin + 1]`` of a conv layer."""
    params, static = eqx.partition(layer, eqx.is_array)

    def rows(ai, gi):
        _, vjp_fn = jax.vjp(lambda p: eqx.combine(p, static)(ai), params)
        grads = jax.vmap(vjp_fn)(gi)[0]
        w = jnp.reshape(grads.weight, (gi.shape[0], -1, layer.weight.shape[-1]))
        return jnp.concatenate([jnp.swapaxes(w, 1, 2), grads.bias[..., None]], axis=-1)

    return jax.vmap(rows)(a, g)


def _matrix_projection(jac: Array, factors) -> Array:
    """``J̃ P`` for explicit Jacobian matrices ``jac [N, C, rows, cols]``."""
    n, c = jac.shape[:2]
    if len(factors) == 2:
        p_rows, p_cols = factors
        out = jnp.einsum("ncij,ia,jb->ncab", jac, p_rows, p_cols, precision=_PRECISION)
        return jnp.reshape(out, (n, c, -1))
    flat = jnp.reshape(jac, (n, c, -1))
    return jnp.matmul(flat, factors[0], precision=_PRECISION)


def project_jacobian(
    model: AbstractSequential,
    x: Float[Array, "samples ..."],
    *,
    k: int,
    seed: int | PRNGKeyArray,
    kind: str = "gaussian",
) -> ProjectedJacobian:
    """Per layer, the projected Jacobian ``J_l P_l`` as ``[N, C, k_l]`` (what a neighbour sends).

    Args:
        model: an `AbstractSequential` model (the linearization point).
        x: ``[N, *input_shape]`` inputs.
        k: target projection size per layer (static).
        seed: global seed (int) or key; layer l uses ``fold_in(key, l)``.
        kind: ``"gaussian"`` or ``"kronecker"``.
    """
    if not isinstance(model, AbstractSequential):
        raise TypeError(_NOT_SEQUENTIAL.format(type(model).__name__))
    return project_jacobian_with(model, x, layer_projections(model, k=k, seed=seed, kind=kind))


def project_jacobian_with(
    model: AbstractSequential, x: Float[Array, "samples ..."], projections
) -> ProjectedJacobian:
    """`project_jacobian` with the matrices of `layer_projections` given (drawn once per round
    and shared by every client in a per-client map, instead of redrawn per client)."""
    if not isinstance(model, AbstractSequential):
        raise TypeError(_NOT_SEQUENTIAL.format(type(model).__name__))
    _, inputs, _, cotangents = _record_with_cotangents(model, x)
    out = []
    for layer, a, g, factors in zip(model.layers, inputs, cotangents, projections):
        if isinstance(layer, Dense):
            out.append(_dense_projection(layer, a, g, factors))
        else:
            out.append(_matrix_projection(_conv_matrix_rows(layer, a, g), factors))
    return tuple(out)


def kernel_from_projection(
    projected: ProjectedJacobian, mask: Bool[Array, " samples"] | None = None
) -> Float[Array, "samples samples"]:
    """``(1/C) Σ_l Σ_c (J_l P_l)_c (J_l P_l)_cᵀ``, masked rows/columns zero."""
    num_classes = projected[0].shape[1]
    kernel = (
        sum(jnp.einsum("nck,mck->nm", jp, jp, precision=_PRECISION) for jp in projected)
        / num_classes
    )
    if mask is not None:
        kernel = jnp.where(mask[:, None] & mask[None, :], kernel, jnp.zeros((), kernel.dtype))
    return kernel


def projected_trace_kernel(
    model: AbstractSequential,
    x: Float[Array, "samples ..."],
    mask: Bool[Array, " samples"] | None = None,
    *,
    k: int,
    seed: int | PRNGKeyArray,
    kind: str = "gaussian",
) -> Float[Array, "samples samples"]:
    """The trace kernel from randomly projected Jacobians: an unbiased estimate of `trace_kernel`.

    Usable as ``kernel_fn`` of `ntk_evolution_step` via ``functools.partial``.
    """
    return kernel_from_projection(project_jacobian(model, x, k=k, seed=seed, kind=kind), mask)


def _unsplit(layer, delta: Array):
    """Maps a ``[rows, cols]`` update of ``W̃`` back to the layer's ``(weight, bias)``."""
    if isinstance(layer, Dense):
        return delta[:, :-1], delta[:, -1]
    w = jnp.reshape(jnp.swapaxes(delta[:, :-1], 0, 1), layer.weight.shape)
    return w, delta[:, -1]


def back_project(
    model: AbstractSequential,
    projected: ProjectedJacobian,
    r: Float[Array, "samples classes"],
    *,
    k: int,
    seed: int | PRNGKeyArray,
    kind: str = "gaussian",
) -> PyTree:
    """The unbiased estimate ``P (JP)ᵀ r`` of ``Jᵀ r`` (docs/spark.md §6), shaped like the model's params.

    The same `k`, `seed` and `kind` as for `project_jacobian` must be given.
    """
    return back_project_with(
        model, projected, r, layer_projections(model, k=k, seed=seed, kind=kind)
    )


def back_project_with(
    model: AbstractSequential, projected: ProjectedJacobian, r: Float[Array, "samples classes"],
    projections,
) -> PyTree:
    """`back_project` with the matrices of `layer_projections` given (as for
    `project_jacobian_with`)."""
    weights, biases = [], []
    for layer, jp, factors in zip(model.layers, projected, projections):
        rows, cols = _layer_matrix_shape(layer)
        v = jnp.einsum("nck,nc->k", jp, r.astype(jp.dtype), precision=_PRECISION)
        if len(factors) == 2:
            p_rows, p_cols = factors
            v = jnp.reshape(v, (p_rows.shape[1], p_cols.shape[1]))
            delta = jnp.linalg.multi_dot([p_rows, v, p_cols.T], precision=_PRECISION)
        else:
            delta = jnp.reshape(jnp.matmul(factors[0], v, precision=_PRECISION), (rows, cols))
        w, b = _unsplit(layer, delta)
        weights.append(w)
        biases.append(b)
    update = eqx.filter(model, eqx.is_array)
    return eqx.tree_at(
        lambda m: [leaf for layer in m.layers for leaf in (layer.weight, layer.bias)],
        update,
        [leaf for pair in zip(weights, biases) for leaf in pair],
    )
