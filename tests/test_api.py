"""The public API: `spark_tpu.simulate` with built-ins by name and the user's own objects, the
typed History, callbacks, import paths and flag-time validation (docs/extending.md)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spark_tpu
from spark_tpu import gossip, simulator

TINY = dict(rounds=2, clients=4, samples_per_client=20, local_eval_samples=50, devices=2)


def _ring(n):
    a = np.zeros((n, n), int)
    for q in range(n):
        a[q, (q + 1) % n] = a[(q + 1) % n, q] = 1
    return a


def _tag_then_mix(ctx: spark_tpu.BuildContext) -> spark_tpu.Algorithm:
    """Round 0: every model becomes (its value + its client id); later rounds only mix."""

    def round_(state, c):
        first = (c.round == 0).astype(jnp.int32)

        def tag(p):
            ids = (first * c.client_ids).astype(p.dtype)
            return p + ids.reshape((-1,) + (1,) * (p.ndim - 1))

        zeros = jnp.zeros(c.client_ids.shape, jnp.float32)
        new = gossip.mix(jax.tree.map(tag, state.params), c.graph)
        return spark_tpu.ParamsState(new), {"train_loss": zeros, "bytes_sent": zeros}

    return spark_tpu.Algorithm(spark_tpu.ParamsState, round_)


def test_a_graph_sequence_is_used_in_turn_against_dense_products():
    """Round r mixes with graph r mod G: the final models equal W0 W1 W0 W1 · (x0 + id) written
    with dense matrices, where the two graphs are each disconnected and their union is a ring."""
    n = 6
    ring = _ring(n)
    even = np.zeros_like(ring)
    odd = np.zeros_like(ring)
    for q in range(n):
        (even if q % 2 == 0 else odd)[q, (q + 1) % n] = 1
    even, odd = even | even.T, odd | odd.T
    spec = spark_tpu.AlgorithmSpec("tag_then_mix", _tag_then_mix)
    h = spark_tpu.simulate(spec, "linear", "two_moons", [even, odd], partition="iid",
                           rounds=4, samples_per_client=10, local_eval_samples=20, devices=2)

    def uniform(a):
        w = (a + np.eye(n)) / (a.sum(1, keepdims=True) + 1)
        return w

    w0, w1 = uniform(even), uniform(odd)
    bias0 = np.asarray(h.state.params.layers[0].bias)  # all clients start from one model
    start = np.zeros(n)  # the offset from the common start, per client
    x = w0 @ (start + np.arange(n))
    for w in (w1, w0, w1):
        x = w @ x
    got = bias0[:, 0] - bias0[:, 0].mean() - (x - x.mean())
    np.testing.assert_allclose(got, 0, atol=1e-5)  # float32 models
    assert h.summary["topology"]["pool_size"] == 2 and h.summary["topology"]["order"] == "cycle"


def test_history_metrics_summary_and_state():
    h = spark_tpu.simulate("dgd", "linear", "two_moons", "ring", eval_every=1, **TINY)
    assert isinstance(h, spark_tpu.History)
    assert h["round"].tolist() == [1, 2]
    assert h["aggregated_acc"].shape == (2,) and np.isfinite(h["aggregated_acc"]).all()
    assert h.summary["final"]["aggregated_acc"] == pytest.approx(h["aggregated_acc"][-1])
    assert len(h.rows) == 2 and h.rows[-1]["round"] == 2
    leaves = jax.tree.leaves(h.state.params)
    assert leaves and all(leaf.shape[0] == 4 for leaf in leaves)


@pytest.mark.slow  # whole simulations; test_history and the graph sequence keep the API in the fast tier
def test_own_model_own_data_and_own_partition():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 3
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(size=(300, 5))
    data = (x[:240], y[:240], x[240:], y[240:])
    by_label = [np.flatnonzero(y[:240] == c) for c in range(3)]
    split = [by_label[0][:30], by_label[1][:30], by_label[2][:30], np.concatenate(
        [by_label[0][30:40], by_label[1][30:40]])]

    class Net(eqx.Module):
        layer: eqx.nn.Linear

        def __init__(self, key):
            self.layer = eqx.nn.Linear(5, 3, key=key, dtype=jnp.float32)

        def __call__(self, v):
            return self.layer(v)

    h = spark_tpu.simulate("dgd", Net(jax.random.key(1)), data, "ring", partition=split,
                           rounds=3, local_eval_samples=60, devices=2, lr=0.1, batch_size=5)
    counts = np.asarray(h.summary["partition"]["client_sizes"]) if "client_sizes" in h.summary[
        "partition"] else None
    assert h.summary["config"]["clients"] == 4 and h.summary["config"]["partition"] == "custom"
    if counts is not None:
        assert counts.tolist() == [30, 30, 30, 20]
    assert h.state.params.layer.weight.shape == (4, 3, 5)
    assert h["aggregated_acc"][-1] > 0.5  # separable blobs: well above chance (1/3)


@pytest.mark.slow  # whole simulations; test_history and the graph sequence keep the API in the fast tier
def test_callbacks_are_called_in_order():
    calls = []

    class Record(spark_tpu.Callback):
        def start(self, sim, rows):
            calls.append("start")
            return rows

        def after_chunk(self, sim, rows):
            calls.append(f"chunk{rows[-1]['round']}")

        def finish(self, sim, history):
            calls.append("finish")

        def close(self):
            calls.append("close")

    spark_tpu.simulate("dgd", "linear", "two_moons", "ring", callbacks=[Record()],
                       **{**TINY, "rounds": 3})
    assert calls == ["start", "chunk1", "chunk2", "chunk3", "finish", "close"]


@pytest.mark.slow  # whole simulations; test_history and the graph sequence keep the API in the fast tier
def test_an_algorithm_by_import_path_with_its_own_options():
    cfg = simulator.Config(algorithm="api_plugin:offset_spec", dataset="two_moons", topology="ring",
                           algorithm_options=(("step", "0.5"),), **TINY)
    h = simulator.simulate_config(cfg)
    # every round adds 0.5 to every weight of every client, and mixing keeps equal offsets
    moved = [np.asarray(leaf) for leaf in jax.tree.leaves(h.state.params)]
    start = [np.asarray(leaf) for leaf in jax.tree.leaves(
        spark_tpu.simulate("api_plugin:offset_spec", "mlp", "two_moons", "ring",
                           algorithm_options=(("step", "0"),), **TINY).state.params)]
    for a, b in zip(moved, start):
        np.testing.assert_allclose(a - b, 2 * 0.5, rtol=1e-6)  # two rounds of +0.5
    with pytest.raises(ValueError, match="has no option 'speed'"):
        simulator.Config(algorithm="api_plugin:offset_spec", algorithm_options=(("speed", "1"),))
    with pytest.raises(ValueError, match="expected a float"):
        simulator.Config(algorithm="api_plugin:offset_spec", algorithm_options=(("step", "fast"),))
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        simulator.Config(algorithm="no_such_module:build")


def test_a_plain_build_function_by_import_path_reads_batch_size_not_horizons():
    simulator.Config(algorithm="api_plugin:build", batch_size=5)
    with pytest.raises(ValueError, match="--horizons does nothing for --algorithm=api_plugin:build"):
        simulator.refuse_unused(simulator.Config(algorithm="api_plugin:build"), ["horizons"])


def test_spark_stages_are_refused_when_the_config_is_built():
    with pytest.raises(ValueError, match="--spark_stages="):
        simulator.Config(algorithm="spark", spark_stages="0: lam=2")
    with pytest.raises(ValueError, match="--tau_selection=linearized with --spark=weight_step"):
        simulator.Config(algorithm="spark", tau_selection="linearized",
                         spark_options=(("projection", "gaussian"), ("projection_dim", "8")))


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(TypeError, match="unknown option"):
        spark_tpu.simulate("dgd", "linear", "two_moons", "ring", colour="red", **TINY)
    with pytest.raises(ValueError, match="union of the graphs is not connected"):
        spark_tpu.GraphSequence([np.zeros((4, 4), int)])
    with pytest.raises(ValueError, match="the partition has 2 clients but --clients=4"):
        spark_tpu.simulate("dgd", "linear", "two_moons", "ring", partition=[[0, 1], [2, 3]],
                           **TINY)


@pytest.mark.slow
def test_the_launcher_runs_an_algorithm_and_a_model_by_import_path(tmp_path):
    """A researcher's own algorithm and model, from their own module, through the launcher."""
    import json
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=here)
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "launch_tpu.main", "--algorithm=api_plugin:offset_spec",
         "--algorithm_option=step=0.5", "--model=api_plugin:make_net", "--dataset=digits",
         "--clients=4", "--samples_per_client=20", "--rounds=2", "--topology=ring",
         "--local_eval_samples=50", "--devices=2", f"--output_dir={out}"],
        cwd=os.path.dirname(here), env=env, capture_output=True, text=True, timeout=600,
        check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["algorithm"] == "api_plugin:offset_spec"
    assert summary["config"]["algorithm_options"] == [["step", "0.5"]]
    assert summary["hyperparameters"] == {"lr": 0.5}
