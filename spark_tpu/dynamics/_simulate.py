"""Actual DGD / ATC / CTA training of the real (nonlinear) model, the observations to predict.

The same conventions as `predict` (see `spark_tpu.dynamics._predict`): client q takes gradient
steps on L_q = (c/2)‖f(X_q; θ_q) − y_q‖² (default c = 1/D) with step size η and mixes once per
iteration with W_k; the reported loss is (1/(2D))‖f(X_q; θ_q) − y_q‖². Full-batch, float64,
one ``lax.scan`` over the iterations.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from ._linearize import ModelFn
from ._predict import _check_algorithm, mixing_sequence


def _mix(w, params):
    return jax.tree_util.tree_map(lambda a: jnp.tensordot(w, a, axes=1), params)


def _axpy(alpha: float, xs, ys):
    return jax.tree_util.tree_map(lambda a, b: a + alpha * b, xs, ys)


def _dgd(p, w, eta, grad):
    return _axpy(-eta, _mix(w, p), grad(p))


def _atc(p, w, eta, grad):
    return _mix(w, _axpy(-eta, p, grad(p)))


def _cta(p, w, eta, grad):
    psi = _mix(w, p)
    return _axpy(-eta, psi, grad(psi))


UPDATES = {"dgd": _dgd, "atc": _atc, "cta": _cta}  # seed eqs. 4, 5, 6


def _client_fns(model_fn: ModelFn, x, y, scale):
    d = x.shape[1]

    def residual(p, xq, yq):
        out = jax.vmap(model_fn, in_axes=(None, 0))(p, xq)
        return jnp.reshape(out, (d, -1)) - jnp.reshape(yq, (d, -1))

    def objective(p, xq, yq):
        return 0.5 * scale * jnp.sum(residual(p, xq, yq) ** 2)

    def report(p, xq, yq):
        return 0.5 / d * jnp.sum(residual(p, xq, yq) ** 2)

    def grad(ps):
        return jax.vmap(jax.grad(objective))(ps, x, y)

    def loss(ps):
        return jax.vmap(report)(ps, x, y)

    return grad, loss


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(model_fn: ModelFn, algorithm: str, params, x, y, w_seq, eta, scale, x_test):
    """One ``lax.scan`` over the iterations; compiled once per (model_fn, algorithm, shapes)."""
    grad, loss = _client_fns(model_fn, x, y, scale)
    update = UPDATES[algorithm]

    def observe(ps):
        if x_test is None:
            return loss(ps), None
        per_client = jax.vmap(jax.vmap(model_fn, in_axes=(None, 0)), in_axes=(0, None))
        return loss(ps), per_client(ps, x_test)

    def body(ps, wk):
        return update(ps, wk, eta, grad), observe(ps)

    final, (losses, outs) = jax.lax.scan(body, params, w_seq)
    last_loss, last_out = observe(final)
    losses = jnp.concatenate([losses, last_loss[None]])
    if outs is not None:
        outs = jnp.concatenate([outs, last_out[None]])
    return final, losses, outs


def simulate(
    model_fn: ModelFn,
    params0: Any,
    client_data: tuple[np.ndarray, np.ndarray],
    w: Float[np.ndarray, "... clients clients"],
    *,
    algorithm: str = "dgd",
    eta: float,
    steps: int | None = None,
    loss_scale: float | None = None,
    test_x: np.ndarray | None = None,
) -> dict[str, Any]:
    """Trains every client from the shared θ_0 with real DGD, ATC or CTA steps (seed eqs. 4–6).

    Args:
        model_fn, params0, client_data, w, algorithm, eta, steps, loss_scale, test_x: as in
            `spark_tpu.dynamics.predict`.

    Returns:
        ``iterations [T+1]``, ``loss [T+1, Q]`` (before each step, and after the last),
        ``params`` (the final per-client params, a pytree with a leading Q axis), and
        ``test_outputs [T+1, Q, N, ...]`` if test_x is given.

    Raises:
        ValueError: as `predict`.
    """
    _check_algorithm(algorithm)
    x, y = (np.asarray(a, dtype=np.float64) for a in client_data)
    q, d = x.shape[:2]
    w_seq, _ = mixing_sequence(w, q, steps)
    scale = 1.0 / d if loss_scale is None else float(loss_scale)
    with jax.enable_x64(True):
        f64 = functools.partial(jnp.asarray, dtype=jnp.float64)
        params = jax.tree_util.tree_map(
            lambda a: jnp.broadcast_to(f64(a), (q, *jnp.shape(a))), params0
        )
        xt = None if test_x is None else f64(test_x)
        args = (params, f64(x), f64(y), f64(w_seq), f64(eta), f64(scale), xt)
        final, losses, outs = _run(model_fn, algorithm, *args)
    result = {
        "iterations": np.arange(len(w_seq) + 1),
        "loss": np.asarray(losses),
        "params": jax.tree_util.tree_map(np.asarray, final),
    }
    if outs is not None:
        result["test_outputs"] = np.asarray(outs)
    return result
