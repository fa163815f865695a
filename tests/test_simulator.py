"""The simulator loop: determinism across device layouts, one compilation, outputs."""

import csv
import os

import numpy as np
import pytest

from spark_tpu import algorithms, simulator

SMALL = dict(
    dataset="digits", clients=12, samples_per_client=20, rounds=3, degree=3, graph_pool=4,
    local_eval_samples=100, horizons=(4, 8, 16), partition="dirichlet", alpha=0.5,
)


def _run(tmp_path, name, **kw):
    cfg = simulator.Config(**{**SMALL, **kw})
    out = os.path.join(tmp_path, name)
    simulator.run(cfg, out, progress=False)
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _numbers(rows, skip=("seconds",)):
    return np.array([[float(v or "nan") for k, v in r.items() if k not in skip] for r in rows])


@pytest.mark.parametrize("algorithm", ["dgd", "dfedavgm", "ntk_dfl"])
def test_same_metrics_on_1_2_4_8_devices(tmp_path, algorithm):
    """12 clients on 1 device (no exchange), 2 (6 per device) and 8 (padded to 16, 2 per device)
    against each other; 4 devices (3 per device, no padding) added no case of its own and a
    quarter of this test's time."""
    base = _numbers(_run(tmp_path, "d8", algorithm=algorithm, devices=8))
    for d in (1, 2):
        other = _numbers(_run(tmp_path, f"d{d}", algorithm=algorithm, devices=d))
        np.testing.assert_allclose(other, base, rtol=1e-5, atol=1e-5)


def test_repeat_is_bit_identical(tmp_path):
    a = _numbers(_run(tmp_path, "a", algorithm="spark", devices=4, rounds=3))
    b = _numbers(_run(tmp_path, "b", algorithm="spark", devices=4, rounds=3))
    np.testing.assert_array_equal(a, b)


def test_round_traced_once_however_many_rounds(tmp_path):
    cfg = simulator.Config(**{**SMALL, "algorithm": "dgd", "devices": 2})
    sim = simulator.Simulation(cfg)
    traces = []
    inner = sim.setup.algorithm

    def counting_round(state, ctx):
        traces.append(1)
        return inner.round(state, ctx)

    sim.setup.algorithm = algorithms.Algorithm(inner.init, counting_round)
    for _ in range(4):
        sim.advance(2)
    assert len(traces) == 1
    assert int(sim.round) == 8


def test_outputs_and_summary(tmp_path):
    cfg = simulator.Config(**{**SMALL, "algorithm": "dfedavg", "devices": 2, "target_accuracy": 0.3})
    s = simulator.run(cfg, str(tmp_path), progress=False)
    for name in ("metrics.csv", "summary.json", "accuracy.png"):
        assert os.path.exists(tmp_path / name)
    rows = simulator.read_metrics(str(tmp_path / "metrics.csv"))
    assert [r["round"] for r in rows] == [1, 2, 3]
    # 3-regular graph, every client sends its model to 3 neighbours per round.
    p = 64 * 100 + 100 + 100 * 10 + 10
    assert rows[0]["bytes_per_client"] == pytest.approx(3 * p * 4)
    assert rows[-1]["bytes_total"] == pytest.approx(3 * 12 * 3 * p * 4)
    assert s["partition"] and s["topology"]["spectral_gap"] > 0
    assert s["rounds_to_target"] is not None


def test_rounds_copy_nothing_from_host_to_device():
    """Data and state are placed once; a chunk of rounds runs with host-to-device copies banned."""
    import jax
    import jax.numpy as jnp

    cfg = simulator.Config(**{**SMALL, "algorithm": "dfedavg", "devices": 4})
    sim = simulator.Simulation(cfg)
    sim.advance(2)  # compile outside the guard
    with jax.transfer_guard_host_to_device("disallow"):
        sim.advance(2)
        sim.advance(2)
        with pytest.raises(Exception, match="[Dd]isallowed host-to-device transfer"):
            jnp.asarray(np.ones(3)) + 1  # the guard is live: an explicit copy fails
    assert int(sim.round) == 6


def test_long_horizons_on_a_slow_fixed_graph_warn_with_a_strided_fixed_solver():
    from spark_tpu.simulator import _build

    def warning(**kw):
        cfg = simulator.Config(clients=60, **kw)
        return _build.horizon_warning(cfg, _build.make_topology(cfg).summary())

    assert warning(algorithm="spark", topology="ring", time_varying=False) is None  # adaptive
    ring = dict(topology="ring", time_varying=False, solver="rk4", solver_stride=4)
    assert "--horizons=25,50,100,200" in warning(algorithm="spark", **ring)
    assert "spectral gap 0.0037" in warning(algorithm="ntk_dfl", **ring)
    assert warning(algorithm="spark", horizons=(25, 50, 100, 200), **ring) is None
    assert warning(algorithm="dfedavg", **ring) is None
    assert warning(algorithm="spark") is None  # a fresh 5-regular graph every round
    assert warning(algorithm="spark", topology="complete", time_varying=False) is None
