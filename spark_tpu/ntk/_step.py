"""The whole NTK evolution step for one pooled dataset (docs/ntk_step.md §1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Scalar

from ._closed_form import closed_form_from_residual
from ..models import AbstractSequential
from ._kernel import trace_kernel, trace_kernel_materialized
from ._objective import Objective
from ._solver import (
    AUTO,
    FunctionSpaceSolution,
    check_horizons,
    solve_function_space,
)
from ._weights import batched_forward


class StepInfo(NamedTuple):
    """What the step chose and saw.

    Attributes:
        tau_index: index into `horizons` of the chosen τ*.
        tau: the chosen horizon τ* (grid steps).
        losses: ``[H]`` objective of the real network at ``w + Δw_τ``, per horizon.
        linearized_losses: ``[H]`` objective of the linearized predictions ``f(s_τ)``.
        initial_loss: objective at the linearization point.
        solver_products: kernel products the function-space solve took.
        solver_flagged: a fixed-step solve left its accuracy (stability) region, see
            `FunctionSpaceSolution.flagged`.
    """

    tau_index: Int[Array, ""]
    tau: Int[Array, ""]
    losses: Float[Array, " horizons"]
    linearized_losses: Float[Array, " horizons"]
    initial_loss: Scalar
    solver_products: Int[Array, ""]
    solver_flagged: Bool[Array, ""]


def weight_steps(
    vjp_fn: Callable[[Array], tuple[PyTree]],
    residual_sums: Float[Array, "horizons samples classes"],
    *,
    eta: ArrayLike,
    num_samples: ArrayLike,
) -> PyTree:
    """``Δw_τ = -(η/Ñ) Jᵀ r_τ`` for all horizons at once: the VJP vmapped over horizons (docs/ntk_step.md §4).

    Returns the params pytree with a leading horizon axis on every leaf.
    """
    (grads,) = jax.vmap(vjp_fn)(residual_sums)
    return jax.tree.map(
        lambda g: (-jnp.asarray(eta, g.dtype) / jnp.asarray(num_samples, g.dtype)) * g, grads
    )


SELECTIONS = ("pooled", "linearized")


def select_horizon(
    params: PyTree,
    apply: Callable[[PyTree, Array], Array],
    x: Array,
    deltas: PyTree,
    objective: Objective,
    selection: str = "pooled",
) -> tuple[Int[Array, ""], Float[Array, " horizons"]]:
    """``τ* = argmin_τ loss(·)`` over the candidate steps; NaN never wins.

    ``selection="pooled"`` (docs/ntk_step.md §5): the loss of the real network ``f(X; w + Δw_τ)``.
    ``selection="linearized"``: the loss of the linearized model ``f(X; w) + J Δw_τ`` (one JVP per
    horizon), which a client can evaluate from the Jacobians it already holds.
    """
    if selection == "linearized":
        f0, jvp = jax.linearize(lambda p: apply(p, x), params)
        losses = jax.vmap(lambda d: objective.loss(f0 + jvp(d)))(deltas)
    elif selection == "pooled":
        losses = jax.vmap(lambda d: objective.loss(apply(eqx.apply_updates(params, d), x)))(deltas)
    else:
        raise ValueError(f"selection={selection!r}: choose one of {', '.join(SELECTIONS)}.")
    safe = jnp.where(jnp.isnan(losses), jnp.asarray(jnp.inf, losses.dtype), losses)
    return jnp.argmin(safe).astype(jnp.int32), losses


def _solve(kernel, f0, objective, n, *, eta, horizons, solver, **options) -> FunctionSpaceSolution:
    if solver == "mse_closed_form":
        del options
        # Exact when residual(f) = f - y on unmasked rows (the `mse` objective).
        return closed_form_from_residual(
            kernel, f0, objective.residual(f0), eta=eta, horizons=horizons, num_samples=n
        )
    return solve_function_space(
        kernel, f0, objective.residual, eta=eta, horizons=horizons, num_samples=n,
        solver=solver, **options,
    )  # fmt: skip


def ntk_evolution_step(
    model: eqx.Module,
    x: Float[Array, "samples ..."],
    objective: Objective,
    mask: Bool[Array, " samples"] | None = None,
    *,
    eta: ArrayLike,
    horizons: Sequence[int],
    solver: str = AUTO,
    kernel_fn: Callable[..., Array] | None = None,
    linearize_fn: Callable[..., tuple[Array, Callable[[Array], PyTree]]] | None = None,
    selection: str = "pooled",
    **solver_options,
) -> tuple[eqx.Module, StepInfo]:
    """One NTK evolution step linearized at `model` on one pooled dataset (docs/ntk_step.md §1).

    Kernel K (`kernel_fn`), the function-space flow under ``objective.residual`` on the grid
    ``s_t = t·η``, ``Δw_τ = -(η/Ñ) Jᵀ r_τ`` for every τ by one VJP, and the horizon that minimizes
    ``objective.loss`` of the real network. Pure in (model, data): vmap it over clients.

    Args:
        model: linearization point w.
        x: ``[N, *input_shape]`` pooled inputs (padded rows allowed).
        objective: the `Objective` on the same rows (its mask must agree with `mask`).
        mask: optional ``[N]`` booleans marking real rows; Ñ = their count.
        eta: step size η (may be traced).
        horizons: static tuple of integer horizons T.
        solver: ``"auto"`` (default: exponential or adaptive by the number of rows,
            `resolve_solver`), ``"adaptive"``, ``"exponential"``, a key of `spark_tpu.ntk.TABLEAUX`
            (fixed steps) or ``"mse_closed_form"`` (MSE objectives only).
        kernel_fn: ``(model, x, mask) -> [N, N]``; by default `trace_kernel` for the package's
            `AbstractSequential` models and `trace_kernel_materialized` (the explicit Jacobian)
            for any other module (docs/extending.md §3).
        linearize_fn: optional ``(model, x, mask) -> (K, jtr)`` replacing both `kernel_fn` and the
            exact VJP: ``jtr(r [N, C])`` returns an estimate of ``Jᵀ r`` shaped like the model's
            array params, e.g. the back-projection ``P (JP)ᵀ r`` of docs/spark.md §6 (projected Jacobians
            computed once for the kernel and the weight step).
        **solver_options: static options of `solve_function_space` (``stride``, ``substeps``,
            ``rtol``, ...; ignored by ``"mse_closed_form"``).
        selection: how τ* is chosen, see `select_horizon` (``"pooled"``: the real network).

    Returns:
        ``(w + Δw_τ*, StepInfo)``.
    """
    horizons = check_horizons(horizons)
    mask = jnp.ones(x.shape[:1], bool) if mask is None else mask
    params, apply = batched_forward(model)
    f0, vjp_fn = jax.vjp(lambda p: apply(p, x), params)
    n = jnp.maximum(jnp.sum(mask), 1).astype(f0.dtype)
    if kernel_fn is None:
        sequential = isinstance(model, AbstractSequential)
        kernel_fn = trace_kernel if sequential else trace_kernel_materialized
    if linearize_fn is None:
        kernel = kernel_fn(model, x, mask).astype(f0.dtype)
    else:
        kernel, jtr = linearize_fn(model, x, mask)
        kernel = kernel.astype(f0.dtype)
        vjp_fn = lambda r: (jtr(r),)  # noqa: E731
    solution = _solve(
        kernel, f0, objective, n, eta=eta, horizons=horizons, solver=solver, **solver_options
    )
    deltas = weight_steps(vjp_fn, solution.residual_sums, eta=eta, num_samples=n)
    index, losses = select_horizon(params, apply, x, deltas, objective, selection)
    chosen = jax.tree.map(lambda d: d[index], deltas)
    info = StepInfo(
        tau_index=index,
        tau=jnp.asarray(horizons, jnp.int32)[index],
        losses=losses,
        linearized_losses=jax.vmap(objective.loss)(solution.logits),
        initial_loss=objective.loss(f0),
        solver_products=jnp.asarray(solution.products, jnp.int32),
        solver_flagged=jnp.asarray(solution.flagged, bool),
    )
    return eqx.apply_updates(model, chosen), info
