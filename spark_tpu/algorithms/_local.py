"""Local training on one client's data: minibatch gradients and local SGD epochs (docs/baselines.md §1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ._base import LOSSES, Model


def _order(key, mask):
    """A random order of the samples with the valid ones first."""
    u = jax.random.uniform(key, mask.shape, dtype=jnp.float32)
    return jnp.argsort(jnp.where(mask, u, 2.0)).astype(jnp.int32)


def loss_and_grad(model: Model, params, x, y, mask, loss: str = "ce"):
    """Mean loss of the batch (``ce``: cross-entropy, ``mse``: ½‖f − onehot(y)‖²) and its
    gradient."""
    fn = LOSSES[loss]
    return jax.value_and_grad(lambda p: fn(model.apply(p, x), y, mask))(params)


def minibatch_grad(model: Model, params, x, y, mask, key, batch_size: int, loss: str = "ce"):
    """Loss and gradient on ``batch_size`` samples drawn without replacement from the valid ones."""
    idx = _order(key, mask)[:batch_size]
    return loss_and_grad(model, params, x[idx], y[idx], mask[idx], loss)


def local_sgd(
    model: Model, params, x, y, mask, key, optimizer, epochs: int, batch_size: int,
    loss: str = "ce",
):
    """``epochs`` passes of minibatch training with ``optimizer`` (state fresh each call).

    Returns the new params and the mean loss of the first epoch's batches.
    """
    n = x.shape[0]
    batches = -(-n // batch_size)
    pad = batches * batch_size - n

    def epoch(carry, k):
        p, opt_state = carry
        order = jnp.concatenate([_order(k, mask), jnp.zeros((pad,), jnp.int32)])
        valid = jnp.concatenate([jnp.ones((n,), bool), jnp.zeros((pad,), bool)])
        order, valid = order.reshape(batches, batch_size), valid.reshape(batches, batch_size)

        def step(c, b):
            p, s = c
            idx, ok = b
            value, g = loss_and_grad(model, p, x[idx], y[idx], mask[idx] & ok, loss)
            updates, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, updates), s), value

        (p, opt_state), losses = jax.lax.scan(step, (p, opt_state), (order, valid))
        return (p, opt_state), jnp.mean(losses)

    keys = jax.random.split(key, epochs)
    (params, _), losses = jax.lax.scan(epoch, (params, optimizer.init(params)), keys)
    return params, losses[0]
