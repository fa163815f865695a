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


def _row_mask(mask: Bool[Array, " samples"] | None, rows: int) -> Bool[Array, " samples"]:
    return jnp.ones((rows,), bool) if mask is None else mask


def _masked_mean(per_sample: Array, mask: Bool[Array, " samples"]) -> Scalar:
    count = jnp.maximum(jnp.sum(mask), 1).astype(per_sample.dtype)
    return jnp.sum(jnp.where(mask, per_sample, jnp.zeros((), per_sample.dtype))) / count


def _masked_rows(values: Array, mask: Bool[Array, " samples"]) -> Array:
    return jnp.where(mask[:, None], values, jnp.zeros((), values.dtype))


def _as(value: ArrayLike, like: Array) -> Array:
    return jnp.asarray(value, like.dtype)


def cross_entropy(
    y_onehot: Float[Array, "samples classes"], mask: Bool[Array, " samples"] | None = None
) -> Objective:
    """Softmax cross-entropy against (one-hot or soft) labels `y_onehot` (docs/ntk_step.md §7).

    ``loss = mean_n -Σ_c y_nc log softmax(f_n)_c``; ``residual = softmax(f) - Y``.
    """
    mask = _row_mask(mask, y_onehot.shape[0])

    def residual(f):
        return _masked_rows(jax.nn.softmax(f, axis=-1) - _as(y_onehot, f), mask)

    def loss(f):
        per_sample = -jnp.sum(_as(y_onehot, f) * jax.nn.log_softmax(f, axis=-1), axis=-1)
        return _masked_mean(per_sample, mask)

    return Objective(residual, loss)


def mse(
    y: Float[Array, "samples classes"], mask: Bool[Array, " samples"] | None = None
) -> Objective:
    """Squared error ``loss = mean_n ½‖f_n - y_n‖²``; ``residual = f - Y`` (docs/ntk_step.md §7, docs/dynamics.md §1)."""
    mask = _row_mask(mask, y.shape[0])

    def residual(f):
        return _masked_rows(f - _as(y, f), mask)

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

    def residual(f):
        lam, temp = _as(weight, f), _as(temperature, f)
        p_teacher = jax.nn.softmax(_as(teacher_logits, f) / temp, axis=-1)
        soft = jax.nn.softmax(f / temp, axis=-1) - p_teacher
        return (1 - lam) * ce.residual(f) + lam * temp * _masked_rows(soft, mask)

    def loss(f):
        lam, temp = _as(weight, f), _as(temperature, f)
        log_teacher = jax.nn.log_softmax(_as(teacher_logits, f) / temp, axis=-1)
        log_student = jax.nn.log_softmax(f / temp, axis=-1)
        kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
        return (1 - lam) * ce.loss(f) + lam * temp**2 * _masked_mean(kl, mask)

    return Objective(residual, loss)
