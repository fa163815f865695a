"""Two NTK-DFL rounds through the simulator against an independent float64 NumPy computation
written from SPEC sections 3 and 5: explicit Jacobians, explicit ODE integration (scipy DOP853),
explicit uniform averaging over a ring."""

import numpy as np
import pytest
from _reference import flat_params, ntk_step

from spark_tpu import simulator

ETA0, DECAY, HORIZONS, Q = 0.05, 0.07, (3, 6, 12, 48), 6  # 48: strided solver steps after 32


@pytest.mark.parametrize("devices", [1, 4])
def test_two_ntk_dfl_rounds_match_float64_reference(devices):
    cfg = simulator.Config(
        algorithm="ntk_dfl", dataset="digits", clients=Q, samples_per_client=10, rounds=2,
        topology="ring", time_varying=False, mixing="uniform", partition="iid", lr=ETA0,
        lr_decay=DECAY, horizons=HORIZONS, devices=devices, local_eval_samples=50,
    )
    sim = simulator.Simulation(cfg)
    a = sim.setup.arrays
    shapes, theta0 = flat_params(sim.setup.params.layers)
    x = np.asarray(a.x[:Q], np.float64).reshape(Q, a.x.shape[1], -1)
    y = np.eye(10)[np.asarray(a.y[:Q])]
    thetas = np.stack([theta0] * Q)
    for k in range(2):
        eta = ETA0 * np.exp(-DECAY * k)
        new = []
        for q in range(Q):
            hood = [(q - 1) % Q, q, (q + 1) % Q]
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
