"""Server-based references (docs/baselines.md §5–6): FedAvg with partial participation, and centralized SGD on
the pooled data of all clients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from spark_tpu import gossip

from ._base import Algorithm, Model, ParamsState, RoundContext, client_keys, model_bytes
from ._local import local_sgd, minibatch_grad
from ._spec import AlgorithmSpec, BuildContext, register


def sample_clients(key, ctx: RoundContext, num_clients: int, fraction: float):
    """Which local clients the server samples this round: the same draw on every device."""
    count = max(1, int(round(fraction * num_clients)))
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (num_clients,), dtype=jnp.float32)))
    ids = jnp.minimum(ctx.client_ids, num_clients - 1)
    return (rank[ids] < count) & ctx.real & ctx.active


def _broadcast(tree, like):
    return jax.tree.map(lambda g, p: jnp.broadcast_to(g, p.shape), tree, like)


def fedavg(
    model: Model, *, num_clients: int, lr: float, batch_size: int, local_epochs: int,
    participation: float, momentum: float = 0.0, loss: str = "ce",
) -> Algorithm:
    """FedAvg: sampled clients train locally from the global model; the server averages them
    weighted by sample count and broadcasts the result to everyone."""
    optimizer = optax.sgd(lr, momentum=momentum if momentum else None)
    train = functools.partial(
        local_sgd, model, optimizer=optimizer, epochs=local_epochs, batch_size=batch_size,
        loss=loss,
    )

    def round_(state: ParamsState, ctx: RoundContext):
        k_sample, k_train = jax.random.split(ctx.key)
        chosen = sample_clients(k_sample, ctx, num_clients, participation)
        d = ctx.data
        local, loss = jax.vmap(train)(
            state.params, d.x, d.y, d.mask, client_keys(k_train, ctx.client_ids)
        )
        w = jnp.where(chosen, jnp.sum(d.mask, axis=1), 0).astype(jnp.float32)
        total = gossip.client_sum(w)
        avg = gossip.client_sum(
            jax.tree.map(lambda p: p * w.reshape((-1,) + (1,) * (p.ndim - 1)), local)
        )
        new = _broadcast(jax.tree.map(lambda a: a / total, avg), state.params)
        one = jax.tree.map(lambda p: p[0], state.params)
        sent = jnp.where(chosen, 2.0 * model_bytes(one), 0.0)
        return ParamsState(new), {"train_loss": jnp.where(chosen, loss, jnp.nan), "bytes_sent": sent}

    return Algorithm(init=ParamsState, round=round_)


def centralized(
    model: Model, *, num_clients: int, lr: float, batch_size: int, loss: str = "ce"
) -> Algorithm:
    """Centralized SGD on the pooled data: one step per round on the union of every client's
    minibatch (batch_size per client). No communication is counted: it is the reference."""
    loss_name = loss

    def round_(state: ParamsState, ctx: RoundContext):
        d = ctx.data
        keys = client_keys(ctx.key, ctx.client_ids)
        loss, grads = jax.vmap(
            lambda p, x, y, m, k: minibatch_grad(model, p, x, y, m, k, batch_size, loss_name)
        )(state.params, d.x, d.y, d.mask, keys)
        w = ctx.real.astype(jnp.float32)
        mean = gossip.client_sum(
            jax.tree.map(lambda g: g * w.reshape((-1,) + (1,) * (g.ndim - 1)), grads)
        )
        new = jax.tree.map(lambda p, g: p - (lr / num_clients) * g[None], state.params, mean)
        return ParamsState(new), {"train_loss": loss, "bytes_sent": jnp.zeros_like(loss)}

    return Algorithm(init=ParamsState, round=round_)


def _build_fedavg(ctx: BuildContext) -> Algorithm:
    return fedavg(ctx.model, num_clients=ctx.num_clients, participation=ctx.config.participation,
                  **ctx.hyper, loss=ctx.config.loss)


def _build_centralized(ctx: BuildContext) -> Algorithm:
    return centralized(ctx.model, num_clients=ctx.num_clients, **ctx.hyper, loss=ctx.config.loss)


# Reference hyperparameters: docs/baselines.md §7.
register(AlgorithmSpec(
    "fedavg", _build_fedavg, uses_graph=False,
    reference=dict(lr=0.1, batch_size=25, local_epochs=20, momentum=0.0),
    options=("batch_size", "local_epochs", "momentum", "participation", "client_dropout", "loss"),
    description="FedAvg: sampled clients train locally, the server averages"))
register(AlgorithmSpec(
    "centralized", _build_centralized, uses_graph=False, reference=dict(lr=0.1, batch_size=10),
    options=("batch_size", "loss"), description="SGD on the pooled data (the reference)"))
