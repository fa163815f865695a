"""Compiled round chunks and evaluation under ``jax.shard_map`` (docs/architecture.md §2, layer 8).

A chunk is ``lax.scan`` over rounds of one algorithm's round function, inside one shard_map over
the client mesh axes ("clients", or "rows" × "cols" for a torus tiled on a 2-D mesh, flattened into
one client axis): one XLA program per chunk length, no host round-trips inside it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from spark_tpu import gossip
from spark_tpu.algorithms import Algorithm, ClientData, Model, RoundContext, tree_where
from spark_tpu.topology import GossipPlan

C = P(gossip.AXIS)  # the client axis on a 1-D mesh; ``client_spec(mesh)`` for any mesh
R = P()


def client_spec(mesh) -> P:
    """PartitionSpec of the client axis: sharded over every axis of ``mesh``, row-major."""
    names = tuple(mesh.axis_names)
    return P(names[0] if len(names) == 1 else names)


class Faults(NamedTuple):
    """Per-round simulated faults (docs/topologies.md §4, issue 7)."""

    link_failure: float = 0.0
    client_dropout: float = 0.0


class Inputs(NamedTuple):
    """Everything a chunk reads besides the state; placed on the mesh once per run."""

    data: ClientData  # sharded [Q_pad, n, ...]
    client_ids: Any  # sharded int32 [Q_pad]
    tables: dict  # sharded, device axis first
    edges: Any  # replicated int32 [G, E, 2]
    edge_valid: Any  # replicated bool [G, E]
    real: Any  # replicated bool [Q_pad]
    root_key: Any  # replicated key


def _in_specs(c: P) -> Inputs:
    return Inputs(ClientData(c, c, c), c, c, R, R, R, R)


def round_context(inputs: Inputs, plan: GossipPlan, faults: Faults, r) -> RoundContext:
    """The round's keys, graph, faults and local data, identical on any device layout."""
    key = jax.random.fold_in(inputs.root_key, r)
    k_graph, k_fail, k_drop, k_algo = jax.random.split(key, 4)
    if plan.order == "cycle":
        g = jnp.mod(r, plan.pool_size).astype(jnp.int32)
    else:
        g = jax.random.randint(k_graph, (), 0, plan.pool_size, dtype=jnp.int32)
    q_pad = plan.slots * plan.num_devices
    up = jax.random.uniform(k_drop, (q_pad,), dtype=jnp.float32) >= faults.client_dropout
    active_all = up & inputs.real
    alive = gossip.sample_links(
        inputs.edges[g], inputs.edge_valid[g], k_fail, faults.link_failure, active_all
    )
    rg = gossip.round_graph(
        inputs.tables,
        g,
        inputs.edges[g],
        alive,
        plan.weight_rule,
        plan.shifts,
        plan.mesh_shape,
        q_pad,
    )
    ids = inputs.client_ids
    return RoundContext(
        round=r,
        key=k_algo,
        client_ids=ids,
        real=inputs.real[ids],
        active=active_all[ids],
        graph=rg,
        data=inputs.data,
    )


def _finite(params) -> jax.Array:
    sums = [jnp.sum(x.reshape(x.shape[0], -1), axis=1) for x in jax.tree.leaves(params)]
    return jnp.isfinite(sum(sums))


def make_chunk(algorithm: Algorithm, plan: GossipPlan, mesh, faults: Faults, length: int):
    """jit(shard_map(scan(round))) for ``length`` rounds: (state, round, inputs) -> (state,
    round + length, metrics [length, Q_pad] per key)."""

    def device_fn(state, start, inputs: Inputs):
        def body(state, r):
            ctx = round_context(inputs, plan, faults, r)
            new, metrics = algorithm.round(state, ctx)
            new = tree_where(ctx.active, new, state)
            metrics = dict(metrics, active=ctx.active, finite=_finite(new.params))
            return new, metrics

        rounds = start + jnp.arange(length, dtype=jnp.int32)
        state, metrics = jax.lax.scan(body, state, rounds)
        return state, start + length, metrics

    c = client_spec(mesh)
    sharded = jax.shard_map(
        device_fn,
        mesh=mesh,
        in_specs=(c, R, _in_specs(c)),
        out_specs=(c, R, P(None, *c)),
        check_vma=False,
    )
    return jax.jit(sharded, donate_argnums=(0,))


class TestSet(NamedTuple):
    """Test data: a replicated subset for every local model, and the full set sharded by rows
    for the aggregated model."""

    local_x: Any
    local_y: Any
    full_x: Any
    full_y: Any
    full_mask: Any


def make_evaluate(model: Model, mesh, num_clients: int):
    """jit(shard_map(...)): (params, client_ids, real, test) -> per-client accuracy [Q_pad], aggregated-model
    accuracy, consensus distance (1/Q) Σ_q ‖w_q − w̄‖² (docs/metrics.md §2)."""

    def device_fn(params, ids, real, test: TestSet):
        w = real[ids].astype(jnp.float32)

        def scale(x):
            return x * w.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)

        mean = jax.tree.map(
            lambda s: s / num_clients, gossip.client_sum(jax.tree.map(scale, params))
        )
        dist = jax.tree.map(
            lambda p, m: jnp.sum((p - m[None]) ** 2, axis=tuple(range(1, p.ndim))), params, mean
        )
        dist = sum(jax.tree.leaves(dist)).astype(jnp.float32)  # float64 params: x64 runs
        dist = gossip.client_sum(w * dist) / num_clients

        def acc(p, x, y):
            return jnp.mean(
                (jnp.argmax(model.apply(p, x), axis=1).astype(y.dtype) == y).astype(jnp.float32)
            )

        local = jax.vmap(acc, in_axes=(0, None, None))(params, test.local_x, test.local_y)
        pred = jnp.argmax(model.apply(mean, test.full_x), axis=1).astype(test.full_y.dtype)
        hits = (pred == test.full_y) & test.full_mask
        correct = gossip.client_sum(hits.astype(jnp.float32))
        total = gossip.client_sum(test.full_mask.astype(jnp.float32))
        return local, correct / total, dist

    c = client_spec(mesh)
    sharded = jax.shard_map(
        device_fn,
        mesh=mesh,
        in_specs=(c, c, R, TestSet(R, R, c, c, c)),
        out_specs=(c, R, R),
        check_vma=False,
    )
    return jax.jit(sharded)


def place(tree, mesh, spec):
    """Places a host pytree on the mesh with one PartitionSpec for every leaf.

    Every process holds the same host arrays (the partition is seeded) and places only the
    shards its own devices hold, so the same code serves one process or many (multi-host).
    """
    sharding = jax.sharding.NamedSharding(mesh, spec)

    def one(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return (
                jax.device_put(x, sharding)
                if jax.process_count() == 1
                else _replicate_key(x, sharding)
            )
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree)


def _replicate_key(key, sharding):
    data = np.asarray(jax.random.key_data(key))
    arr = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
    return jax.random.wrap_key_data(arr)


def to_host(x) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every process."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def stack_clients(params, count: int):
    """The shared initialization broadcast along a leading client axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (count,) + x.shape), params)
