"""Two NTK-DFL rounds through the simulator against an independent float64 NumPy computation
written from docs/ntk_step.md and docs/ntk_dfl.md: explicit Jacobians, explicit ODE integration (scipy DOP853),
explicit uniform averaging over a ring, and over a star, whose uneven degrees make the simulator
evolve the leaves on a shorter pooled width than the hub (`algorithms.degree_buckets`)."""

import numpy as np
import pytest
from _reference import flat_params, ntk_step

from spark_tpu import algorithms, simulator, topology

ETA0, DECAY, HORIZONS, Q = 0.05, 0.07, (3, 6, 12, 48), 6  # 48: strided solver steps after 32


@pytest.mark.parametrize(
    "devices,memory_bound,graph",
    [(1, False, "ring"), (4, False, "ring"), (1, True, "ring"), (1, False, "star"), (2, False, "star")],
)
def test_two_ntk_dfl_rounds_match_float64_reference(devices, memory_bound, graph, monkeypatch):
    if memory_bound:  # the accelerator path whose vmap must be split to fit: 6 clients, 4 fit
        from spark_tpu.algorithms import _ntk_dfl

        pooled = 3 * 10  # ring neighbourhood × samples per client
        per_client = _ntk_dfl._KERNEL_COPIES * 4 * pooled**2
        monkeypatch.setattr(_ntk_dfl, "_on_accelerator", lambda: True)
        monkeypatch.setattr(
            _ntk_dfl, "_device_bytes", lambda: int(4.5 * per_client / _ntk_dfl._MEMORY_SHARE)
        )
        assert _ntk_dfl.auto_client_batch(Q, pooled, _ntk_dfl._device_bytes()) == 4
        batches = []
        real = _ntk_dfl.ntk.batch_map
        monkeypatch.setattr(
            _ntk_dfl.ntk, "batch_map",
            lambda *a, **k: batches.append(k.get("batch_size")) or real(*a, **k),
        )
    cfg = simulator.Config(
        algorithm="ntk_dfl", dataset="digits", clients=Q, samples_per_client=10, rounds=2,
        topology=graph, time_varying=False, mixing="uniform", partition="iid", lr=ETA0,
        lr_decay=DECAY, horizons=HORIZONS, devices=devices, local_eval_samples=50,
    )
    sim = simulator.Simulation(cfg)
    buckets = algorithms.degree_buckets(sim.setup.plan)
    assert (buckets is not None) == (graph == "star")  # star: (2 slots, the hub at full width)
    adjacency = {"ring": topology.ring, "star": topology.star}[graph](Q)
    a = sim.setup.arrays
    shapes, theta0 = flat_params(sim.setup.params.layers)
    x = np.asarray(a.x[:Q], np.float64).reshape(Q, a.x.shape[1], -1)
    y = np.eye(10)[np.asarray(a.y[:Q])]
    thetas = np.stack([theta0] * Q)
    for k in range(2):
        eta = ETA0 * np.exp(-DECAY * k)
        new = []
        for q in range(Q):
            hood = [q, *np.flatnonzero(adjacency[q])]
            avg = thetas[hood].mean(axis=0)
            x_hood, y_hood = np.concatenate(x[hood]), np.concatenate(y[hood])
            new.append(ntk_step(avg, shapes, x_hood, y_hood, eta, HORIZONS)[0])
        thetas = np.stack(new)
    sim.advance(2)
    _, got = flat_params(sim.state.params.layers, clients=Q)
    moved = np.linalg.norm(thetas - theta0, axis=1)
    err = np.linalg.norm(got - thetas, axis=1)
    assert moved.min() > 1e-2  # the rounds did something
    assert err.max() / moved.min() < 1e-4, err / moved
    if memory_bound:
        assert 4 in batches, batches


def test_auto_client_batch_fits_the_device():
    from spark_tpu.algorithms._ntk_dfl import auto_client_batch

    gib = 2**30
    assert auto_client_batch(300, 1200, 80 * gib) == 0  # the 5-regular paper setting: vmap all
    k = auto_client_batch(300, 3200, 80 * gib)  # Erdős–Rényi padded to degree 15: split
    assert 0 < k < 300 and k * 8 * 4 * 3200**2 <= 0.4 * 80 * gib < (k + 1) * 8 * 4 * 3200**2
    assert auto_client_batch(300, 100_000, gib) == 1  # never zero clients per batch
