"""Pooled data in two widths (`algorithms.degree_buckets`): the bound that makes it exact, and SPARK
with every option that touches the pooled rows giving the padded computation's result."""

import jax
import numpy as np
import pytest

from spark_tpu import algorithms, simulator, topology


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_buckets_cover_every_graph_of_the_pool(devices):
    pool = [topology.uniform_weights(topology.erdos_renyi(64, 5 / 63, s)) for s in range(16)]
    plan = topology.build_plan(pool, devices, "uniform")
    slots, big = algorithms.degree_buckets(plan)
    k1 = plan.max_degree + 1
    assert 1 <= slots < k1 and big < plan.slots
    for w in pool:  # degrees from the matrices themselves, devices by the flat layout
        degree = (w > 0).sum(axis=1) - 1
        for d in range(devices):
            assert (degree[d * plan.slots:(d + 1) * plan.slots] >= slots).sum() <= big
    full = plan.slots * k1**2
    assert plan.slots * slots**2 + big * k1**2 <= 0.8 * full  # worth it


@pytest.mark.parametrize("make", [lambda: topology.ring(16), lambda: topology.random_regular(16, 4, 0)])
def test_no_buckets_on_regular_graphs(make):
    plan = topology.build_plan([topology.uniform_weights(make())], 2, "uniform")
    assert algorithms.degree_buckets(plan) is None


def test_star_puts_only_the_hub_at_full_width():
    plan = topology.build_plan([topology.uniform_weights(topology.star(32))], 4, "uniform")
    assert algorithms.degree_buckets(plan) == (2, 1)


def _params(options, buckets, **kw):
    cfg = simulator.Config(
        algorithm="spark", dataset="digits", clients=24, samples_per_client=8, rounds=5,
        topology="erdos_renyi", edge_probability=0.15, graph_pool=4, partition="dirichlet",
        alpha=0.3, horizons=(3, 6, 12), devices=2, local_eval_samples=50,
        spark_stages="0: lam=0.5, T=2, mu=0.9", spark_options=options, degree_buckets=buckets, **kw,
    )
    sim = simulator.Simulation(cfg)
    sim.advance(cfg.rounds)
    flat = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(sim.state.params)])
    return flat, sim


@pytest.mark.parametrize(
    "options", [(), (("teacher", "neighbor"), ("buffer", "gossip"), ("momentum", "heavy_ball"))]
)
def test_spark_with_buckets_equals_the_padded_step(options):
    # Buckets of 6 of 9 slots here; failed links leave holes among a client's neighbour slots,
    # which compaction must close before the first 6 are taken.
    padded, sim0 = _params(options, False, link_failure=0.3)
    bucketed, sim = _params(options, True, link_failure=0.3)
    assert algorithms.degree_buckets(sim.setup.plan) is not None
    start = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(sim0.setup.params)])
    moved = np.abs(padded - np.tile(start, len(padded) // len(start))).max()
    assert moved > 1e-2
    np.testing.assert_allclose(bucketed, padded, atol=1e-5 * moved)
