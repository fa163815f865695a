"""Actual DGD / ATC / CTA training of the real (nonlinear) model, the observations to predict.

The same conventions as `predict` (see `spark_tpu.dynamics._predict`): client q takes gradient
steps on L_q = (c/2)‖f(X_q; θ_q) − y_q‖² (default c = 1/D) with step size η and mixes once per
iteration with W_k; the reported loss is (1/(2D))‖f(X_q; θ_q) − y_q‖². Full-batch, float64,
one ``lax.scan`` over the iterations.
"""

from __future__ import annotations

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


def _client_fns(model_fn: ModelFn, x, y, scale: float):
    d = x.shape[1]

    def residual(p, xq, yq):
        out = jax.vmap(model_fn, in_axes=(None, 0))(p, xq)
        return jnp.reshape(out, (d, -1)) - jnp.reshape(yq, (d, -1))

    def objective(p, xq, yq):
        return 0.5 * scale * jnp.sum(residual(p, xq, yq) ** 2)

    def report(p, xq, yq):
        return 0.5 / d * jnp.sum(residual(p, xq, yq) ** 2)

    grad = lambda ps: jax.vmap(jax.grad(objective))(ps, x, y)
    loss = lambda ps: jax.vmap(report)(ps, x, y)
    return grad, loss


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
        stack = lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float64), (q, *jnp.shape(a)))
        params = jax.tree_util.tree_map(stack, params0)
        grad, loss = _client_fns(model_fn, jnp.asarray(x), jnp.asarray(y), scale)
        update = UPDATES[algorithm]
        xt = None if test_x is None else jnp.asarray(test_x, jnp.float64)

        def observe(ps):
            if xt is None:
                return loss(ps), None
            outs = jax.vmap(jax.vmap(model_fn, in_axes=(None, 0)), in_axes=(0, None))(ps, xt)
            return loss(ps), outs

        def body(ps, wk):
            return update(ps, wk, eta, grad), observe(ps)

        @jax.jit
        def run(ps, ws):
            final, (losses, outs) = jax.lax.scan(body, ps, ws)
            last_loss, last_out = observe(final)
            losses = jnp.concatenate([losses, last_loss[None]])
            if outs is not None:
                outs = jnp.concatenate([outs, last_out[None]])
            return final, losses, outs

        final, losses, outs = run(params, jnp.asarray(w_seq, jnp.float64))
    result = {
        "iterations": np.arange(len(w_seq) + 1),
        "loss": np.asarray(losses),
        "params": jax.tree_util.tree_map(np.asarray, final),
    }
    if outs is not None:
        result["test_outputs"] = np.asarray(outs)
    return result
