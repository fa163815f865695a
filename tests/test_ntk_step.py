"""The whole NTK evolution step against brute force (docs/ntk_step.md §4–5)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from spark_tpu.models import MLP, NTKMLP
from spark_tpu.ntk import (
    batch_map,
    cross_entropy,
    materialized_jacobian,
    mse,
    ntk_evolution_step,
    soft_label_regularized,
    solve_function_space,
    trace_kernel,
    trace_kernel_materialized,
)

F64 = jnp.float64


def _problem(n=10, c=3, d=6, seed=0, dtype=F64):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), dtype)
    y = jnp.asarray(np.eye(c)[rng.integers(0, c, n)], dtype)
    mask = jnp.arange(n) < n - 2
    return x, y, mask


def _float64(tree):
    """The same values in float64 (an exact cast): a float64 truth for a float32 computation."""
    return jax.tree.map(lambda a: a.astype(F64) if eqx.is_inexact_array(a) else a, tree)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Float32, the production dtype, against the float64 brute force on the same float32 values.
# (dtype, weight-step rtol (norm-wise in float32), candidate-loss rtol, initial-loss rtol.) The
# step chains the kernel, the flow (≤ 40 grid steps, non-expansive), Jᵀr and the loss; each adds
# round-off of a few eps32 ≈ 1.2e-7 of its terms, and the kernel's condition number on the valid
# rows (54) can amplify it: eps32 · 54 ≈ 7e-6, so 2e-5 on the step; the candidate losses (O(1),
# evaluated after the step) 1e-5, the initial loss (no step) 1e-6. Measured: 2.6e-7 on the step,
# 1.1e-6 and 4e-8 on the losses. τ* must be the same: the candidate losses differ by ≥ 4e-2.
STEP_TOLS = [(np.float64, 1e-9, 1e-10, 1e-12), (np.float32, 2e-5, 1e-5, 1e-6)]


@pytest.mark.parametrize("dtype, step_rtol, loss_rtol, initial_rtol", STEP_TOLS)
def test_step_picks_brute_force_argmin_and_explicit_delta(
    dtype, step_rtol, loss_rtol, initial_rtol
):
    x, y, mask = _problem(dtype=dtype)
    model = MLP((6,), hidden=(8,), num_classes=3, key=jax.random.key(0), dtype=dtype)
    teacher = jax.vmap(model)(x) * 0.5
    objective = soft_label_regularized(y, teacher, mask, weight=0.3, temperature=2.0)
    eta, horizons = 2.0, (40, 0, 5, 15)
    new, info = jax.jit(
        lambda m: ntk_evolution_step(m, x, objective, mask, eta=eta, horizons=horizons)
    )(model)
    assert info.losses.dtype == dtype

    # Brute force from the materialized Jacobian, in float64 on the same values.
    model, x, y, teacher = _float64((model, x, y, teacher))
    objective = soft_label_regularized(y, teacher, mask, weight=0.3, temperature=2.0)
    n_valid = int(mask.sum())
    f0 = jax.vmap(model)(x)
    sol = jax.jit(
        lambda k: solve_function_space(
            k, f0, objective.residual, eta=eta, horizons=horizons, num_samples=n_valid
        )
    )(jax.jit(trace_kernel_materialized)(model, x, mask))
    jac = np.asarray(jax.jit(materialized_jacobian)(model, x))
    flat0, unravel = ravel_pytree(eqx.filter(model, eqx.is_array))
    loss_at = jax.jit(lambda flat: objective.loss(jax.vmap(eqx.combine(unravel(flat), model))(x)))
    losses, deltas = [], []
    for h in range(len(horizons)):
        delta = -eta / n_valid * np.einsum("ncp,nc->p", jac, np.asarray(sol.residual_sums[h]))
        losses.append(float(loss_at(flat0 + delta)))
        deltas.append(delta)
    best = int(np.argmin(losses))
    assert len(set(np.round(losses, 6))) == len(horizons)  # a real choice among distinct losses
    assert int(info.tau_index) == best and int(info.tau) == horizons[best]
    np.testing.assert_allclose(info.losses, losses, rtol=loss_rtol)
    new_flat, _ = ravel_pytree(eqx.filter(new, eqx.is_array))
    if dtype == np.float64:
        np.testing.assert_allclose(new_flat - flat0, deltas[best], rtol=1e-9, atol=1e-12)
    else:  # a norm-wise bound: single entries of the step may cancel to near zero
        assert _rel(np.asarray(new_flat, np.float64) - flat0, deltas[best]) <= step_rtol
    np.testing.assert_allclose(info.initial_loss, objective.loss(f0), rtol=initial_rtol)
    np.testing.assert_allclose(info.linearized_losses[1], info.initial_loss, rtol=initial_rtol)


# Float32: 25 Euler steps against 25 float64 gradient-descent steps on the same values. Each step
# rounds the weights at a few eps32 ≈ 1.2e-7 of the largest, and gradient descent is stable here
# (η·L ≤ η·λ_max(K)/N · 1/2 = 0.8 < 2), so the errors add up at most linearly: 25 · a few eps32
# ≲ 1e-5 of the largest weight (measured: 3.8e-7); entry-wise relative errors would not do, small
# weights lose digits to cancellation (8.6e-6 measured). The loss: rtol 1e-6 (measured 1.2e-7).
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-6)])
def test_euler_step_of_linear_model_is_gradient_descent(dtype, rtol):
    # For an affine model the trace kernel is exact (Θ = K ⊗ I), so Euler's weight step for
    # horizon τ equals τ steps of real gradient descent on the mean cross-entropy.
    x, y, mask = _problem(seed=1, dtype=dtype)
    model = MLP((6,), hidden=(), num_classes=3, key=jax.random.key(1), dtype=dtype)
    objective = cross_entropy(y, mask)
    eta, tau = 0.7, 25
    new, info = ntk_evolution_step(
        model, x, objective, mask, eta=eta, horizons=(tau,), solver="euler"
    )
    assert info.losses.dtype == dtype
    model, x, y = _float64((model, x, y))  # the gradient descent below: float64
    objective = cross_entropy(y, mask)
    loss = lambda m: objective.loss(jax.vmap(m)(x))

    @eqx.filter_jit
    def gradient_descent(w):
        def body(_, w):
            return jax.tree.map(lambda p, g: p - eta * g, w, eqx.filter_grad(loss)(w))

        return jax.lax.fori_loop(0, tau, body, w)

    w = gradient_descent(model)
    got = np.asarray(ravel_pytree(eqx.filter(new, eqx.is_array))[0], np.float64)
    want = np.asarray(ravel_pytree(eqx.filter(w, eqx.is_array))[0])
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=rtol)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(info.losses[0], loss(w), rtol=rtol)
    np.testing.assert_allclose(info.linearized_losses[0], loss(w), rtol=rtol)


def test_step_vmaps_over_stacked_clients_with_traced_eta():
    x, y, mask = _problem(n=8, seed=2)
    keys = jax.random.split(jax.random.key(2), 3)
    build = lambda k: NTKMLP((6,), 16, 3, key=k, activation="sigmoid", dtype=F64)
    stacked = eqx.filter_vmap(build)(keys)
    xs = jnp.stack([x, -x, 2 * x])
    masks = jnp.stack([mask, mask, jnp.ones_like(mask)])
    etas = jnp.asarray([1.0, 2.0, 0.5])

    def step(m, xq, mq, e):
        return ntk_evolution_step(m, xq, cross_entropy(y, mq), mq, eta=e, horizons=(2, 9))

    new, info = eqx.filter_jit(eqx.filter_vmap(step))(stacked, xs, masks, etas)
    single = eqx.filter_jit(step)
    for q in range(3):
        new_q, info_q = single(build(keys[q]), xs[q], masks[q], etas[q])
        np.testing.assert_allclose(info.losses[q], info_q.losses, rtol=1e-10)
        np.testing.assert_allclose(
            new.layers[0].weight[q], new_q.layers[0].weight, rtol=1e-10, atol=1e-13
        )


def test_mse_closed_form_step_and_materialized_kernel_option():
    x, y, mask = _problem(seed=3)
    model = MLP((6,), hidden=(5,), num_classes=3, key=jax.random.key(3), dtype=F64)
    objective = mse(y, mask)
    kwargs = {"eta": 0.3, "horizons": (4, 12)}
    exact, info = jax.jit(
        lambda m: ntk_evolution_step(m, x, objective, mask, solver="mse_closed_form", **kwargs)
    )(model)
    ode, info_ode = jax.jit(
        lambda m: ntk_evolution_step(
            m, x, objective, mask, solver="rk4", substeps=16, kernel_fn=trace_kernel_materialized,
            **kwargs,
        )
    )(model)
    np.testing.assert_allclose(info.losses, info_ode.losses, rtol=1e-6)
    np.testing.assert_allclose(exact.layers[0].weight, ode.layers[0].weight, rtol=1e-6)
    assert trace_kernel(model, x, mask).shape == (10, 10)


def test_batch_map_strategies_agree():
    x, y, mask = _problem(n=6, seed=4)
    keys = jax.random.split(jax.random.key(4), 2)
    stacked = eqx.filter_vmap(lambda k: MLP((6,), hidden=(4,), num_classes=3, key=k, dtype=F64))(
        keys
    )
    xs = jnp.stack([x, 0.5 * x])

    def step(m, xq):
        return ntk_evolution_step(m, xq, cross_entropy(y, mask), mask, eta=1.0, horizons=(3,))[1]

    outs = [
        jax.jit(lambda m, xx, s=s: batch_map(step, m, xx, strategy=s))(stacked, xs)
        for s in ("vmap", "map", "auto")
    ]
    for out in outs[1:]:
        np.testing.assert_allclose(out.losses, outs[0].losses, rtol=1e-12)
    with pytest.raises(ValueError, match="Unknown strategy"):
        batch_map(step, stacked, xs, strategy="pmap")


def test_linearized_selection_scores_f0_plus_explicit_j_delta():
    """``selection="linearized"``: τ* minimizes the loss of f(X; w) + J Δw_τ, J materialized."""
    x, y, mask = _problem(seed=1)
    model = MLP((6,), hidden=(8,), num_classes=3, key=jax.random.key(1), dtype=F64)
    objective = cross_entropy(y, mask)
    eta, horizons = 2.0, (0, 5, 15, 40)
    step = lambda m, sel: ntk_evolution_step(  # noqa: E731
        m, x, objective, mask, eta=eta, horizons=horizons, selection=sel
    )
    new, info = jax.jit(lambda m: step(m, "linearized"))(model)
    _, pooled = jax.jit(lambda m: step(m, "pooled"))(model)
    jac = np.asarray(jax.jit(materialized_jacobian)(model, x))  # [N, C, P]
    f0 = np.asarray(jax.vmap(model)(x))
    flat0, unravel = ravel_pytree(eqx.filter(model, eqx.is_array))
    n_valid = int(mask.sum())
    sol = jax.jit(lambda k: solve_function_space(
        k, jnp.asarray(f0), objective.residual, eta=eta, horizons=horizons, num_samples=n_valid
    ))(jax.jit(trace_kernel_materialized)(model, x, mask))
    want = []
    for h in range(len(horizons)):
        delta = -eta / n_valid * np.einsum("ncp,nc->p", jac, np.asarray(sol.residual_sums[h]))
        want.append(float(objective.loss(jnp.asarray(f0 + np.einsum("ncp,p->nc", jac, delta)))))
    np.testing.assert_allclose(info.losses, want, rtol=1e-10)
    assert int(info.tau_index) == int(np.argmin(want))
    assert not np.allclose(info.losses, pooled.losses)  # a different score than the real network
    with pytest.raises(ValueError, match="selection='nearest'"):
        step(model, "nearest")
