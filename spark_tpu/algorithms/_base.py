"""The algorithm interface (docs/style.md §3): two pure functions over a stacked client state.

``init(params) -> state`` takes every client's parameters stacked along a leading client axis (all
clients start from one shared model) and returns the algorithm's state, every leaf of which has that
leading axis. ``round(state, ctx) -> (state, metrics)`` runs inside ``jax.shard_map`` on one
device's block of L clients; ``ctx`` carries the round's graph, keys and data. Metrics are per
client, shape [L]: at least ``train_loss`` and ``bytes_sent``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from spark_tpu.gossip import RoundGraph

BYTES_PER_FLOAT = 4  # everything is sent as float32
BYTES_PER_LABEL = 4  # labels are sent as int32 class indices


class ClientData(NamedTuple):
    """Stacked client data: x [clients, samples, ...], y [clients, samples], mask [clients, samples]."""

    x: Float[Array, "clients samples ..."]
    y: Int[Array, "clients samples"]
    mask: Bool[Array, "clients samples"]


class RoundContext(NamedTuple):
    """What one device's clients see in round ``round``."""

    round: Int[Array, ""]
    key: Array
    client_ids: Int[Array, " slots"]
    real: Bool[Array, " slots"]
    active: Bool[Array, " slots"]
    graph: RoundGraph
    data: ClientData


class Algorithm(NamedTuple):
    """A federated algorithm as a pair of pure functions (optax's GradientTransformation spirit)."""

    init: Callable[[Any], Any]
    round: Callable[[Any, RoundContext], tuple[Any, dict[str, Array]]]


class ParamsState(NamedTuple):
    """The state of algorithms that keep only a model per client."""

    params: Any


class Model(NamedTuple):
    """A model split into its arrays (per client) and its static structure (shared)."""

    static: Any

    def apply(self, params, x: Float[Array, "n ..."]) -> Float[Array, "n classes"]:
        """Logits of a batch."""
        return jax.vmap(eqx.combine(params, self.static))(x)


def split_model(model) -> tuple[Any, Model]:
    """(params, Model) for an Equinox module."""
    params, static = eqx.partition(model, eqx.is_array)
    return params, Model(static)


def num_params(params) -> int:
    """P, the number of parameters of one (unstacked) model."""
    return sum(int(x.size) for x in jax.tree.leaves(params))


def masked_mean(values: Float[Array, " n"], mask: Bool[Array, " n"]) -> Float[Array, ""]:
    """Mean over the unmasked entries (0 if none)."""
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)


def cross_entropy(logits: Float[Array, "n c"], labels: Int[Array, " n"], mask) -> Float[Array, ""]:
    """Mean cross-entropy over unmasked samples."""
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    return masked_mean(nll, mask)


def squared_error(logits: Float[Array, "n c"], labels: Int[Array, " n"], mask) -> Float[Array, ""]:
    """Mean over unmasked samples of ½‖f − onehot(y)‖² (the NTK methods' --loss=mse)."""
    target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return masked_mean(0.5 * jnp.sum(jnp.square(logits - target), axis=-1), mask)


LOSSES = {"ce": cross_entropy, "mse": squared_error}


def client_keys(key: Array, client_ids: Int[Array, " slots"]) -> Array:
    """One key per client, folded with its global id: the same on any device layout."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(client_ids)


def alive_degree(ctx: RoundContext) -> Float[Array, " slots"]:
    """Number of neighbours each local client exchanged with this round."""
    return jnp.sum(ctx.graph.alive, axis=1).astype(jnp.float32)


def model_bytes(params) -> int:
    """Bytes to send one model."""
    return num_params(params) * BYTES_PER_FLOAT


def tree_where(cond: Bool[Array, " slots"], new, old):
    """Per-client select between two stacked pytrees."""

    def one(a, b):
        return jnp.where(cond.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(one, new, old)
