"""Gossip under ``jax.shard_map``: the only module that calls collectives (docs/architecture.md §2, layer 5).

Inside the sharded round each device holds L client slots. ``round_graph`` turns the plan's typed
tables (``topology.DeviceTables``, ``topology.StaticPlan``; docs/topologies.md §6) and this round's
surviving links into neighbour indices and mixing weights; ``halo`` runs one ``ppermute`` per
device offset of the plan; ``mix`` and ``neighbors`` are then local gathers.

The client axis is sharded over a 1-D mesh (axis "clients") or a 2-D mesh (axes "rows", "cols",
flattened row-major into one logical client axis). An offset along one mesh axis is a ``ppermute``
over that axis alone (neighbours on the interconnect when the mesh comes from JAX's mesh
utilities); any other offset permutes the flattened axis. ``client_sum`` reduces over whichever of
these axes the enclosing ``shard_map`` has.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from spark_tpu.topology import DeviceTables, Links, StaticPlan, link_weights

AXIS = "clients"
GRID_AXES = ("rows", "cols")


def mesh_axes(ndim: int) -> tuple[str, ...]:
    """Mesh axis names for a client axis sharded over an ``ndim``-D mesh (1 or 2)."""
    if ndim not in (1, 2):
        raise ValueError(f"client meshes are 1-D or 2-D, not {ndim}-D")
    return (AXIS,) if ndim == 1 else GRID_AXES


def client_axes() -> tuple[str, ...]:
    """The mesh axes the client axis is sharded over in the enclosing ``shard_map``."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    names = tuple(getattr(get(), "axis_names", ())) if get is not None else ()
    return GRID_AXES if set(GRID_AXES) <= set(names) else (AXIS,)


class RoundGraph(NamedTuple):
    """This round's graph as seen by one device's L clients (K = max degree of the pool)."""

    halo_index: Int[Array, "slots k"]
    neighbor_client: Int[Array, "slots k"]
    weight: Float[Array, "slots k"]
    self_weight: Float[Array, " slots"]
    alive: Bool[Array, "slots k"]
    send: tuple[Int[Array, " rows"], ...]
    shifts: tuple[tuple[int, ...], ...]
    mesh_shape: tuple[int, ...]

    @property
    def num_devices(self) -> int:
        return math.prod(self.mesh_shape)


def degrees(edges: Int[Array, "e 2"], alive: Bool[Array, " e"], num_clients: int) -> Array:
    """Number of surviving links of every client (replicated computation, E is small)."""
    ones = alive.astype(jnp.int32)
    return jax.ops.segment_sum(ones, edges[:, 0], num_segments=num_clients) + jax.ops.segment_sum(
        ones, edges[:, 1], num_segments=num_clients
    )


def round_graph(
    tables: DeviceTables,
    static: StaticPlan,
    graph: Int[Array, ""],
    edges: Int[Array, "e 2"],
    edge_alive: Bool[Array, " e"],
) -> RoundGraph:
    """Selects graph ``graph`` of the pool and rebuilds its weights from the surviving links.

    ``tables`` are this device's slice of ``GossipPlan.device_tables()`` (leading axis 1) and
    ``static`` is ``GossipPlan.static``. ``edge_alive`` marks links that exist in this graph and
    survived failures and dropouts; mixing weights are rebuilt from them by the plan's rule, the
    same `topology.link_weights` the host builds W with (docs/topologies.md §2, §4), so W stays
    row-stochastic every round.
    """
    t = jax.tree.map(lambda v: v[0, graph], tables)
    alive_ext = jnp.concatenate([edge_alive, jnp.zeros((1,), bool)])
    alive = alive_ext[t.neighbor_edge]
    deg = degrees(edges, edge_alive, static.num_positions).astype(jnp.float32)
    my_deg = jnp.sum(alive, axis=1).astype(jnp.float32)
    links = Links(alive, my_deg, deg[t.neighbor_client], t.base_weight, t.base_self)
    weight, self_weight = link_weights(static.weight_rule, links, jnp)
    return RoundGraph(
        halo_index=t.neighbor_halo,
        neighbor_client=t.neighbor_client,
        weight=weight.astype(jnp.float32),
        self_weight=self_weight.astype(jnp.float32),
        alive=alive,
        send=t.send,
        shifts=static.shifts,
        mesh_shape=static.mesh_shape,
    )


def _exchange(offset: tuple[int, ...], mesh_shape: tuple[int, ...]):
    """(axis name(s), permutation) of the ppermute that sends device e to e + offset."""
    names = mesh_axes(len(mesh_shape))
    moving = [i for i, v in enumerate(offset) if v]
    if len(moving) == 1:  # along one mesh axis: pairs of indices on that axis
        (i,) = moving
        n = mesh_shape[i]
        return names[i], [(e, (e + offset[i]) % n) for e in range(n)]
    coords = np.stack(np.unravel_index(np.arange(math.prod(mesh_shape)), mesh_shape), axis=1)
    dst = np.ravel_multi_index(tuple(((coords + offset) % mesh_shape).T), mesh_shape)
    return names, [(int(e), int(f)) for e, f in enumerate(dst)]


def halo(tree, rg: RoundGraph):
    """Own rows followed by the rows received from every offset: leaves [L, ...] -> [H, ...]."""
    exchanges = [_exchange(offset, rg.mesh_shape) for offset in rg.shifts]

    def one(x):
        parts = [x]
        for (axis, perm), rows in zip(exchanges, rg.send):
            parts.append(jax.lax.ppermute(x[rows], axis, perm))
        return jnp.concatenate(parts, axis=0)

    return jax.tree.map(one, tree)


def neighbors(tree, rg: RoundGraph):
    """Every client's closed neighbourhood, self first: leaves [L, ...] -> [L, K + 1, ...].

    Rows of absent or failed neighbours are the client's own row; use ``neighbor_mask``.
    """
    full = halo(tree, rg)
    slots = jnp.arange(rg.halo_index.shape[0], dtype=rg.halo_index.dtype)
    index = jnp.concatenate([slots[:, None], rg.halo_index], axis=1)
    return jax.tree.map(lambda h: h[index], full)


def neighbor_mask(rg: RoundGraph) -> Bool[Array, "slots k1"]:
    """True for self and for every neighbour whose link is alive this round."""
    return jnp.concatenate([jnp.ones_like(rg.alive[:, :1]), rg.alive], axis=1)


def mix(tree, rg: RoundGraph):
    """x_q ← W_qq x_q + Σ_r W_qr x_r for every local client, with ppermute-only communication."""
    full = halo(tree, rg)

    def one(x, h):
        nb = h[rg.halo_index]  # [L, K, ...]
        w = rg.weight.reshape(rg.weight.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
        ws = rg.self_weight.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        return ws * x + jnp.sum(w * nb, axis=1)

    return jax.tree.map(one, tree, full)


def client_sum(x):
    """Sum over every client on every device (a server's aggregation; psum over the mesh)."""
    axes = client_axes()
    return jax.tree.map(lambda v: jax.lax.psum(jnp.sum(v, axis=0), axes), x)


def sample_links(
    edges: Int[Array, "e 2"],
    edge_valid: Bool[Array, " e"],
    key: Array,
    link_failure: float,
    active: Bool[Array, " clients"],
) -> Bool[Array, " e"]:
    """Links that carry traffic this round: present, not failed (prob. ``link_failure``), and
    between two clients that did not drop out. Replicated: every device draws the same links."""
    up = jax.random.uniform(key, edge_valid.shape, dtype=jnp.float32) >= link_failure
    return edge_valid & up & active[edges[:, 0]] & active[edges[:, 1]]
