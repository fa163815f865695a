"""NTK-FL (docs/ntk_fl.md) through the simulator: two rounds against an independent float64 NumPy
computation (explicit Jacobian of the pooled sampled clients' data at the global model, scipy
DOP853 at the grid points, horizon by the real network's cross-entropy); the sampled set on 1 and 4
devices; one global model on every client; bytes as documented in `algorithms/_ntk_fl.py`."""

import numpy as np
import pytest
from _reference import flat_params, ntk_step

from spark_tpu import algorithms, simulator
from spark_tpu.algorithms import _ntk_fl
from spark_tpu.simulator import _build

ETA, HORIZONS, Q, N, C = 0.05, (10, 50, 200, 800), 12, 10, 10
BASE = {
    "algorithm": "ntk_fl", "dataset": "digits", "clients": Q, "samples_per_client": N,
    "participation": 0.25, "partition": "iid", "lr": ETA, "horizons": HORIZONS,
    "local_eval_samples": 50, "rounds": 2,
}


def _simulate(devices, rounds=2, **kw):
    sim = simulator.Simulation(simulator.Config(**{**BASE, "devices": devices, **kw}))
    shapes, theta0 = flat_params(sim.setup.params.layers)
    metrics = {k: v[:, :Q] for k, v in sim.advance(rounds).items()}
    _, thetas = flat_params(sim.state.params.layers, clients=Q)
    return sim, shapes, theta0, metrics, thetas


@pytest.fixture(scope="module")
def runs():
    return {d: _simulate(d) for d in (1, 4)}


@pytest.mark.parametrize("devices", [1, 4])
def test_two_rounds_match_float64_reference(runs, devices):
    sim, shapes, theta0, metrics, got = runs[devices]
    a = sim.setup.arrays
    x = np.asarray(a.x[:Q], np.float64).reshape(Q, N, -1)
    y = np.eye(C)[np.asarray(a.y[:Q])]
    theta = theta0
    for k in range(2):
        sampled = np.flatnonzero(metrics["sampled"][k])
        new, tau = ntk_step(
            theta, shapes, np.concatenate(x[sampled]), np.concatenate(y[sampled]), ETA, HORIZONS
        )
        assert np.all(metrics["tau"][k] == tau)
        moved = np.linalg.norm(new - theta)
        assert moved > 1e-2  # the round did something
        theta = new
    assert len(set(metrics["tau"][:, 0])) > 1  # the horizon search picks different τ* per round
    err = np.linalg.norm(got - theta, axis=1)
    assert err.max() / np.linalg.norm(theta - theta0) < 1e-4, err


def test_same_sampled_set_on_1_and_4_devices(runs):
    one, four = runs[1][3], runs[4][3]
    np.testing.assert_array_equal(one["sampled"], four["sampled"])
    assert np.all(one["sampled"].sum(axis=1) == 3)  # round(0.25 · 12)
    assert not np.array_equal(one["sampled"][0], one["sampled"][1])  # redrawn every round
    np.testing.assert_allclose(runs[1][4], runs[4][4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("devices", [1, 4])
def test_every_client_holds_the_global_model(runs, devices):
    got = runs[devices][4]
    np.testing.assert_array_equal(got, np.broadcast_to(got[0], got.shape))


def test_bytes_as_documented(runs):
    sim, shapes, _, metrics, _ = runs[4]
    p = sum(int(np.prod(s)) for s in shapes)
    n = np.asarray(sim.setup.arrays.mask[:Q]).sum(axis=1)
    upload = n * (C * p * 4 + 4 + C * 4)  # Jacobian, labels (int32), logits
    select = len(HORIZONS) * (p + 1) * 4  # the |T| candidate steps received, |T| losses returned
    expected = np.where(metrics["sampled"] > 0, upload + 4 * p + select, 0.0)  # + w received
    np.testing.assert_allclose(metrics["bytes_sent"], expected, rtol=1e-6)
    loss = metrics["train_loss"]
    assert np.isnan(loss[metrics["sampled"] == 0]).all() and np.isfinite(loss[metrics["sampled"] > 0]).all()


def test_dropout_keeps_one_server_model_on_any_layout():
    """Dropped clients keep stale copies; the server evolves the freshest one."""
    res = {d: _simulate(d, rounds=4, client_dropout=0.4) for d in (1, 4)}
    np.testing.assert_allclose(res[1][4], res[4][4], rtol=1e-5, atol=1e-6)
    active, got = res[4][3]["active"], res[4][4]
    assert not active.all()
    fresh = got[active[-1]]
    np.testing.assert_array_equal(fresh, np.broadcast_to(fresh[0], fresh.shape))
    assert np.all(res[4][3]["sampled"][~active] == 0)


def test_mse_runs_the_closed_form():
    _, _, theta0, metrics, got = _simulate(2, rounds=1, loss="mse")
    assert np.isfinite(got).all() and np.linalg.norm(got[0] - theta0) > 0
    assert metrics["tau"][0, 0] in HORIZONS


def test_reference_horizons_unless_set(monkeypatch):
    seen = {}
    def fake(model, **kw):
        seen.update(kw)
        return algorithms.Algorithm(init=None, round=None)

    monkeypatch.setattr(_ntk_fl, "ntk_fl", fake)  # what the registered spec builds
    _build.make_algorithm(simulator.Config(algorithm="ntk_fl"), None, 10)
    assert seen["horizons"] == (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1500, 2000)
    assert seen["eta"] == 0.01 and seen["participation"] == 0.07
    _build.make_algorithm(simulator.Config(algorithm="ntk_fl", horizons=(5, 10)), None, 10)
    assert seen["horizons"] == (5, 10)


def test_replicated_server_step_gives_the_same_model():
    """The measurement-only variant (the step on every device) agrees with the default."""
    _, _, _, _, default = _simulate(4, rounds=3, client_dropout=0.3)
    sim = simulator.Simulation(simulator.Config(**{**BASE, "devices": 4, "client_dropout": 0.3}))
    sim.setup.algorithm = algorithms.ntk_fl(
        sim.setup.model, num_clients=Q, num_classes=C, participation=0.25, eta=ETA,
        horizons=HORIZONS, replicate_server=True,
    )
    sim.advance(3)
    _, replicated = flat_params(sim.state.params.layers, clients=Q)
    np.testing.assert_allclose(replicated, default, rtol=1e-6, atol=1e-7)
