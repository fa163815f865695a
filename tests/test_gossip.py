"""Gossip under shard_map equals a float64 dense W @ X, for every topology and device count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from spark_tpu import gossip, topology

TOPOLOGIES = ["ring", "star", "complete", "torus", "regular", "erdos_renyi", "exponential"]


def _mesh(devices):
    return jax.make_mesh((devices,), (gossip.AXIS,), devices=jax.devices()[:devices])


def run_mix(plan, x, *, graph=0, link_failure=0.0, active=None, key=0):
    """Mixes x [Q, F] with the plan on its mesh; returns [Q, F] (phantoms dropped)."""
    d, slots, q = plan.num_devices, plan.slots, plan.num_clients
    mesh = _mesh(d)
    xp = np.zeros((d * slots,) + x.shape[1:], x.dtype)
    xp[:q] = x
    act = np.zeros(d * slots, bool)
    act[:q] = True if active is None else active
    tables = jax.tree.map(jnp.asarray, plan.device_tables())
    shard = NamedSharding(mesh, P(gossip.AXIS))

    @jax.jit
    @functools.partial(
        jax.shard_map, mesh=mesh,
        in_specs=(P(gossip.AXIS), P(gossip.AXIS), P(), P(), P()), out_specs=P(gossip.AXIS),
    )
    def step(xs, tabs, edges, valid, act):
        g = jnp.asarray(graph, jnp.int32)
        alive = gossip.sample_links(edges[g], valid[g], jax.random.key(key), link_failure, act)
        rg = gossip.round_graph(tabs, plan.static, g, edges[g], alive)
        return gossip.mix(xs, rg)

    out = step(
        jax.device_put(xp, shard), jax.device_put(tables, shard),
        jnp.asarray(plan.edges), jnp.asarray(plan.edge_valid), jnp.asarray(act),
    )
    return np.asarray(out)[:q]


@pytest.mark.parametrize("name", TOPOLOGIES)
@pytest.mark.parametrize("clients", [8, 30, 300])
@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_mix_equals_dense(name, clients, devices):
    degree = 4 if clients > 8 else 3
    topo = topology.Topology(
        name=name, clients=clients, degree=degree, mixing="metropolis",
        time_varying=False, edge_probability=0.3 if clients < 100 else 0.03, seed=1,
    )
    w = topo.mixing_matrices()[0]
    plan = topology.build_plan([w], devices, topo.weight_rule)
    x = np.random.default_rng(0).normal(size=(clients, 3)).astype(np.float32)
    got = run_mix(plan, x)
    want = w @ x.astype(np.float64)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_time_varying_pool_selects_graph():
    topo = topology.Topology(name="regular", clients=30, degree=5, pool_size=4, seed=3)
    ws = topo.mixing_matrices()
    plan = topology.build_plan(ws, 4, topo.weight_rule)
    x = np.random.default_rng(1).normal(size=(30, 2)).astype(np.float32)
    for g in range(4):
        np.testing.assert_allclose(run_mix(plan, x, graph=g), ws[g] @ x, atol=1e-6)


@pytest.mark.parametrize("rule", ["uniform", "metropolis"])
def test_link_failures_rebuild_row_stochastic_weights(rule):
    topo = topology.Topology(name="regular", clients=30, degree=4, mixing=rule, time_varying=False)
    adj = topo.adjacency()
    plan = topology.build_plan(topo.mixing_matrices(), 4, topo.weight_rule)
    x = np.random.default_rng(2).normal(size=(30, 2)).astype(np.float32)
    got = run_mix(plan, x, link_failure=0.3, key=7)
    # Independent reference: redraw the same failures, rebuild W from the surviving graph.
    edges, valid = plan.edges[0], plan.edge_valid[0]
    up = np.asarray(jax.random.uniform(jax.random.key(7), valid.shape, dtype=jnp.float32)) >= 0.3
    surv = np.zeros_like(adj)
    for (a, b), ok in zip(edges, valid & up):
        surv[a, b] = surv[b, a] = ok
    assert surv.sum() < adj.sum()  # some links did fail
    w = topology.mixing_matrix(surv, rule)
    np.testing.assert_allclose(got, w @ x, atol=1e-6)


def test_dropout_isolates_client():
    topo = topology.Topology(name="ring", clients=8, time_varying=False)
    plan = topology.build_plan(topo.mixing_matrices(), 2, topo.weight_rule)
    x = np.arange(8, dtype=np.float32)[:, None]
    active = np.ones(8, bool)
    active[3] = False
    got = run_mix(plan, x, active=active)[:, 0]
    assert got[3] == 3.0  # a dropped client keeps its own value
    np.testing.assert_allclose(got[2], (1 + 2) / 2)  # neighbour 2 renormalizes over {1, 2}


def _reference_matrix(adj, rule, base):
    """Independent float64 W of the surviving graph, entry by entry (docs/topologies.md §2, §4)."""
    q = len(adj)
    deg = [sum(bool(adj[i, j]) for j in range(q) if j != i) for i in range(q)]
    w = np.zeros((q, q))
    for i in range(q):
        for j in range(q):
            if j != i and adj[i, j]:
                w[i, j] = {
                    "uniform": 1.0 / (deg[i] + 1),
                    "metropolis": 1.0 / (1 + max(deg[i], deg[j])),
                    "fixed": base[i, j],
                }[rule]
        if rule == "uniform":
            w[i, i] = 1.0 / (deg[i] + 1)
        elif rule == "metropolis":
            w[i, i] = 1.0 - sum(w[i, j] for j in range(q) if j != i)
        else:  # the given weight of every dead link moves onto the diagonal
            w[i, i] = base[i, i] + sum(base[i, j] for j in range(q) if j != i and not adj[i, j])
    return w


def _round_matrix(plan, alive):
    """The round's dense W as `gossip.round_graph` builds it, device by device (no mesh needed:
    the rebuild is local to each device's tables)."""
    q = plan.num_clients
    w = np.zeros((plan.num_positions, plan.num_positions))
    tables = plan.device_tables()
    for d in range(plan.num_devices):
        mine = jax.tree.map(lambda v: jnp.asarray(v[d : d + 1]), tables)
        rg = gossip.round_graph(
            mine, plan.static, jnp.int32(0), jnp.asarray(plan.edges[0]), jnp.asarray(alive)
        )
        own = plan.placement[d * plan.slots : (d + 1) * plan.slots]
        np.add.at(w, (own[:, None], np.asarray(rg.neighbor_client)), np.asarray(rg.weight))
        w[own, own] = np.asarray(rg.self_weight)
    return w[:q, :q]


@pytest.mark.parametrize("rule", ["uniform", "metropolis", "fixed"])
@pytest.mark.parametrize("devices", [1, 4])
def test_host_and_round_build_the_same_matrix_after_link_failures(rule, devices):
    # One rule, two namespaces: `topology.mixing_matrix` (numpy, float64) and the rebuild inside
    # the round (jax.numpy, float32), both against the entry-by-entry reference.
    q, rng = 30, np.random.default_rng(5)
    adj = topology.erdos_renyi(q, 0.2, 4)
    if rule == "fixed":  # a random row-stochastic matrix on the graph, positive diagonal
        base = np.where(adj, rng.uniform(0.1, 1.0, (q, q)), 0.0) + np.diag(rng.uniform(0.5, 1, q))
        base /= base.sum(axis=1, keepdims=True)
    else:
        base = topology.mixing_matrix(adj, rule)
    plan = topology.build_plan([base], devices, rule)
    alive = plan.edge_valid[0] & (rng.random(plan.num_edges) >= 0.3)
    surv = np.zeros((q, q), bool)
    for (a, b), ok in zip(plan.edges[0], alive):
        surv[a, b] = surv[b, a] = ok
    assert 0 < surv.sum() < adj.sum()  # some links did fail
    want = _reference_matrix(surv, rule, base)
    host = topology.mixing_matrix(surv, rule, base=base if rule == "fixed" else None)
    np.testing.assert_allclose(host, want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(_round_matrix(plan, alive), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(want.sum(axis=1), 1.0, atol=1e-12)
