"""Objectives of the function-space dynamics as small composable pieces (docs/ntk_step.md §7, docs/spark.md §3).

An `Objective` holds two functions of the logits ``f`` ``[N, C]`` on the pooled data:

- ``loss(f)``: the mean of the per-sample loss over unmasked rows (a scalar);
- ``residual(f)``: ``Ñ · ∂loss/∂f`` (masked rows zero), so that the kernel flow is
  ``df/ds = -(1/Ñ) K residual(f)`` and a gradient step is ``Δw = -(η/Ñ) Jᵀ residual``.

Scalars such as the regularizer weight and temperature may be traced (annealed per round).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar


class Objective(NamedTuple):
    """``residual(f) -> [N, C]`` (``Ñ·∂loss/∂f``) and ``loss(f) -> scalar`` (mean over rows)."""

    residual: Callable[[Float[Array, "samples classes"]], Float[Array, "samples classes"]]
    loss: Callable[[Float[Array, "samples classes"]], Scalar]


class RowResidual:
    """A residual that is a function of each row of the logits, evaluable in either layout:
    ``residual(f)`` on ``[N, C]`` and ``residual.classes_first(g)`` on ``[C, N]`` (``= residual(g.T).T``).

    Why: the function-space solvers keep their state class-major, and on XLA:CPU a softmax
    over a minor axis of C = 10 classes runs ~3× slower than over the major one (the 33-point
    dense output of one exponential step: 1.0 ms against 0.32 ms; docs/ntk_step.md §8). The
    built-in objectives' residuals are `RowResidual`s; any other callable works through
    `classes_first`, transposed.

    ``fn(logits, axis)`` computes the residual with the classes on ``axis`` (-1 or 0).
    ``jacobian(g)``, optional, gives every row's C×C Jacobian at class-major logits ``g [C, N]``
    as ``[C, C, N]``, ``[b, a, n] = ∂r_an/∂g_bn``: the exponential solver needs it once per step
    (docs/ntk_step.md §8), and a closed form is ~10× cheaper on XLA:CPU than the C JVPs that
    `row_jacobian` otherwise takes.
    """

    __slots__ = ("_fn", "_jacobian")

    def __init__(
        self, fn: Callable[[Array, int], Array], jacobian: Callable[[Array], Array] | None = None
    ):
        self._fn = fn
        self._jacobian = jacobian

    def __call__(self, f: Float[Array, "samples classes"]) -> Float[Array, "samples classes"]:
        return self._fn(f, -1)

    def classes_first(self, g: Float[Array, "classes samples"]) -> Float[Array, "classes samples"]:
        return self._fn(g, 0)

    @property
    def jacobian(self) -> Callable[[Array], Array] | None:
        return self._jacobian


def classes_first(residual: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """`residual` on class-major logits ``[C, N]``: `RowResidual.classes_first` where it has one,
    else ``residual(g.T).T``."""
    direct = getattr(residual, "classes_first", None)
    return direct if direct is not None else (lambda g: residual(g.T).T)


def row_jacobian(
    residual: Callable[[Array], Array], g: Float[Array, "classes samples"]
) -> Float[Array, "classes classes samples"]:
    """Every row's Jacobian of `residual` at class-major logits `g`, ``[b, a, n] = ∂r_an/∂g_bn``:
    the closed form of a `RowResidual` that has one, else one JVP per class (for row-wise
    residuals: a residual that couples rows gets ``Σ_m ∂r_an/∂g_bm`` instead)."""
    closed = getattr(residual, "jacobian", None)
    if closed is not None:
        return closed(g)
    classes, n = g.shape
    _, lin = jax.linearize(classes_first(residual), g)
    basis = jnp.broadcast_to(jnp.eye(classes, dtype=g.dtype)[:, :, None], (classes, classes, n))
    return jax.vmap(lin)(basis)  # [b, a, n], as vmap lays it out (no transpose)


def _softmax_jacobian(g: Array) -> Array:
    """``[b, a, n] = p_an (δ_ab - p_bn)`` with ``p = softmax(g)`` over the classes (axis 0)."""
    p = jax.nn.softmax(g, axis=0)
    eye = jnp.eye(g.shape[0], dtype=g.dtype)[:, :, None]
    return p[None] * (eye - p[:, None])


def _row_mask(mask: Bool[Array, " samples"] | None, rows: int) -> Bool[Array, " samples"]:
    return jnp.ones((rows,), bool) if mask is None else mask


def _masked_mean(per_sample: Array, mask: Bool[Array, " samples"]) -> Scalar:
    count = jnp.maximum(jnp.sum(mask), 1).astype(per_sample.dtype)
    return jnp.sum(jnp.where(mask, per_sample, jnp.zeros((), per_sample.dtype))) / count


def _masked_rows(values: Array, mask: Bool[Array, " samples"], axis: int = -1) -> Array:
    """Zero the masked samples of `values`, whose classes lie on `axis` (-1: ``[N, C]``, 0: ``[C, N]``)."""
    keep = mask[:, None] if axis == -1 else mask[None, :]
    return jnp.where(keep, values, jnp.zeros((), values.dtype))


def _as(value: ArrayLike, like: Array, axis: int = -1) -> Array:
    """`value` (``[N, C]`` or a scalar) in `like`'s dtype and in the layout of classes on `axis`."""
    out = jnp.asarray(value, like.dtype)
    return out.T if axis == 0 and out.ndim == 2 else out


def _cross_entropy_rows(y_onehot: Array, mask: Bool[Array, " samples"]):
    """``(f, axis) -> softmax(f) - Y`` with masked rows zero, the classes on `axis`."""

    def rows(f, axis):
        return _masked_rows(jax.nn.softmax(f, axis=axis) - _as(y_onehot, f, axis), mask, axis)

    return rows


def cross_entropy(
    y_onehot: Float[Array, "samples classes"], mask: Bool[Array, " samples"] | None = None
) -> Objective:
    """Softmax cross-entropy against (one-hot or soft) labels `y_onehot` (docs/ntk_step.md §7).

    ``loss = mean_n -Σ_c y_nc log softmax(f_n)_c``; ``residual = softmax(f) - Y``.
    """
    mask = _row_mask(mask, y_onehot.shape[0])
    residual = RowResidual(
        _cross_entropy_rows(y_onehot, mask),
        lambda g: _masked_rows(_softmax_jacobian(g), mask, axis=0),
    )

    def loss(f):
        per_sample = -jnp.sum(_as(y_onehot, f) * jax.nn.log_softmax(f, axis=-1), axis=-1)
        return _masked_mean(per_sample, mask)

    return Objective(residual, loss)


def mse(
    y: Float[Array, "samples classes"], mask: Bool[Array, " samples"] | None = None
) -> Objective:
    """Squared error ``loss = mean_n ½‖f_n - y_n‖²``; ``residual = f - Y`` (docs/ntk_step.md §7, docs/dynamics.md §1)."""
    mask = _row_mask(mask, y.shape[0])

    def jacobian(g):
        eye = jnp.eye(g.shape[0], dtype=g.dtype)[:, :, None]
        return _masked_rows(jnp.broadcast_to(eye, (*eye.shape[:2], g.shape[1])), mask, axis=0)

    residual = RowResidual(lambda f, axis: _masked_rows(f - _as(y, f, axis), mask, axis), jacobian)

    def loss(f):
        return _masked_mean(0.5 * jnp.sum(jnp.square(f - _as(y, f)), axis=-1), mask)

    return Objective(residual, loss)


def soft_label_regularized(
    y_onehot: Float[Array, "samples classes"],
    teacher_logits: Float[Array, "samples classes"],
    mask: Bool[Array, " samples"] | None = None,
    *,
    weight: ArrayLike,
    temperature: ArrayLike,
) -> Objective:
    """SPARK's soft-label regularized cross-entropy (docs/spark.md §3).

    With λ = `weight`, T = `temperature` and teacher logits g:

        loss = (1 - λ) CE(f, Y) + λ T² KL(softmax(g/T) ‖ softmax(f/T)),
        residual = (1 - λ)(softmax(f) - Y) + λ T (softmax(f/T) - softmax(g/T)).

    λ and T may be traced scalars.
    """
    mask = _row_mask(mask, y_onehot.shape[0])
    ce = cross_entropy(y_onehot, mask)
    ce_rows = _cross_entropy_rows(y_onehot, mask)

    def rows(f, axis):
        lam, temp = _as(weight, f), _as(temperature, f)
        p_teacher = jax.nn.softmax(_as(teacher_logits, f, axis) / temp, axis=axis)
        soft = jax.nn.softmax(f / temp, axis=axis) - p_teacher
        return (1 - lam) * ce_rows(f, axis) + lam * temp * _masked_rows(soft, mask, axis)

    def jacobian(g):  # (1 - λ) J_softmax(g) + λ T · J_softmax(g / T) / T
        lam, temp = _as(weight, g), _as(temperature, g)
        mixed = (1 - lam) * _softmax_jacobian(g) + lam * _softmax_jacobian(g / temp)
        return _masked_rows(mixed, mask, axis=0)

    residual = RowResidual(rows, jacobian)

    def loss(f):
        lam, temp = _as(weight, f), _as(temperature, f)
        log_teacher = jax.nn.log_softmax(_as(teacher_logits, f) / temp, axis=-1)
        log_student = jax.nn.log_softmax(f / temp, axis=-1)
        kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
        return (1 - lam) * ce.loss(f) + lam * temp**2 * _masked_mean(kl, mask)

    return Objective(residual, loss)
