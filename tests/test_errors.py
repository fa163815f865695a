"""Bad input and failures (issue 7): every bad flag stops with a message naming the flag and value;
missing data names the dataset, where it looked and the command that provides it; simulated
faults (dropped clients, failed links) keep data, weights and byte counts to the live links."""

import concurrent.futures
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from spark_tpu import algorithms, simulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    dataset="digits", clients=8, samples_per_client=20, rounds=2, degree=3, graph_pool=4,
    local_eval_samples=100, horizons=(4, 8), devices=2,
)
LAUNCH = [
    "--dataset=digits", "--clients=8", "--samples_per_client=20", "--rounds=5", "--degree=3",
    "--graph_pool=4", "--horizons=4,8", "--local_eval_samples=100", "--devices=2",
]


# Flags checked when the Config is built (the launcher parses them into one).
@pytest.mark.parametrize("flags, message", [
    (dict(alpha=-1.0), "--alpha=-1.0: the Dirichlet concentration must be > 0"),
    (dict(clients=1), "--clients=1: must be ≥ 2"),
    (dict(link_failure=1.5), "--link_failure=1.5: must be a probability in [0, 1)"),
    (dict(client_dropout=-0.1), "--client_dropout=-0.1: must be a probability in [0, 1)"),
    (dict(algorithm="sgd"), "--algorithm=sgd: choose one of dgd, atc"),
    (dict(horizons=(100, 50)), "--horizons=100,50: give increasing positive integers"),
    (dict(horizons=(0, 4)), "--horizons=0,4: give increasing positive integers"),
    (dict(rounds=0), "--rounds=0: must be ≥ 1"),
    (dict(lr=-1.0), "--lr=-1.0: the learning rate must be > 0"),
    (dict(partition="by_class"), "--partition=by_class: choose one of"),
    (dict(model="resnet"), "--model=resnet: choose one of"),
])
def test_config_rejects(flags, message):
    with pytest.raises(ValueError) as e:
        simulator.Config(**{**TINY, **flags})
    assert message in str(e.value)


def _write(path, matrix):
    np.savetxt(path, np.asarray(matrix))
    return str(path)


# Flags checked when the run is built (graphs, stage schedule), before the data loads.
@pytest.mark.parametrize("flags, message", [
    (dict(degree=5, clients=7), "--degree=5 with --clients=7: n·d = 35 is odd"),
    (dict(degree=8, clients=8), "--degree=8 with --clients=8: a d-regular graph needs 1 ≤ d ≤"),
    (dict(topology="torus", torus_shape=(3, 3), time_varying=False),
     "--torus_shape=3x3 has 9 clients but --clients=8"),
    (dict(topology="custom", time_varying=False, topology_file="not_stochastic"),
     "--topology_file: the mixing matrix must be non-negative with rows summing to 1"),
    (dict(topology="custom", time_varying=False, topology_file="wrong_shape"),
     "matrix has shape (4, 4), expected (8, 8) for --clients=8"),
    (dict(algorithm="spark", spark_stages="0: lam=2"), "--spark_stages='0: lam=2': lam=2.0 is outside"),
    (dict(algorithm="spark", spark_stages="5: mu=0.9"), "starts [5] must begin at 0"),
    (dict(algorithm="spark", spark_stages="0: beta=1"), "'beta=1' is not one of lam=, T=, mu="),
    (dict(algorithm="spark", spark_options=(("teacher", "oracle"),)), "--spark=teacher=oracle"),
])
def test_run_rejects(tmp_path, monkeypatch, flags, message):
    """...before the data loads: loading it here would be an error of its own."""
    def load_dataset(*args, **kwargs):
        raise AssertionError("the data loaded before the flags were checked")

    monkeypatch.setattr(simulator._build.data, "load_dataset", load_dataset)
    if flags.get("topology_file") == "not_stochastic":
        flags["topology_file"] = _write(tmp_path / "w.txt", np.full((8, 8), 0.2))
    elif flags.get("topology_file") == "wrong_shape":
        flags["topology_file"] = _write(tmp_path / "w.txt", np.full((4, 4), 0.25))
    with pytest.raises(ValueError) as e:
        simulator.run(simulator.Config(**{**TINY, **flags}), str(tmp_path / "out"), progress=False)
    assert message in str(e.value)


def test_missing_data_without_network_names_dataset_place_and_command(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise tfds.download.DownloadError("no network (simulated)")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", offline)
    empty = str(tmp_path / "empty")
    cfg = simulator.Config(**{**TINY, "dataset": "mnist", "data_dir": empty})
    with pytest.raises(FileNotFoundError) as e:
        simulator.run(cfg, str(tmp_path / "out"), progress=False)
    text = str(e.value)
    assert f"Dataset 'mnist' is not prepared in {empty}" in text
    assert f"python -m spark_tpu.data.prepare --dataset=mnist --data_dir={empty}" in text


# Through the launcher: non-zero exit status and the message on stderr.
LAUNCHER_CASES = {
    "degree": (["--degree=5", "--clients=7"], ["--degree=5 with --clients=7", "is odd"]),
    "link_failure": (["--link_failure=1.5"], ["--link_failure=1.5", "[0, 1)"]),
    "horizons": (["--horizons=100,abc"], ["--horizons=100,abc: give integers"]),
    "checkpoint_every": (["--eval_every=2", "--checkpoint_every=3"],
                         ["--checkpoint_every=3 with --eval_every=2", "multiple"]),
    "idx_dir": (["--dataset=mnist", "--data_dir={tmp}/data", "--idx_dir={tmp}"],
                ["--idx_dir={tmp} lacks the IDX files of 'mnist'"]),
    "divergence": (["--algorithm=dgd", "--lr=1e10", "--checkpoint_every=1"],
                   ["Round 3: client", "non-finite", "Last good checkpoint: round 2"]),
    # LAUNCH's --horizons=4,8 with a gradient method: refused, not ignored
    "unused_flag": (["--algorithm=dgd"], ["--horizons does nothing for --algorithm=dgd"]),
}
NTK_ONLY = ("--horizons",)  # LAUNCH flags that the gradient methods refuse


@pytest.fixture(scope="module")
def launcher_errors(tmp_path_factory):
    """Every LAUNCHER_CASES run, two at a time: {name: (returncode, stderr, tmp)}."""
    root = tmp_path_factory.mktemp("launcher_errors")

    def one(name):
        tmp = root / name
        tmp.mkdir()
        args = [a.format(tmp=tmp) for a in LAUNCHER_CASES[name][0]]
        launch = [a for a in LAUNCH if name != "divergence" or not a.startswith(NTK_ONLY)]
        cmd = [sys.executable, "-m", "launch_tpu.main", *launch, *args, f"--output_dir={tmp}/out"]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        p = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        return name, (p.returncode, p.stderr, tmp)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, LAUNCHER_CASES))


@pytest.mark.parametrize("name", list(LAUNCHER_CASES))
def test_launcher_stops_with_the_message(launcher_errors, name):
    rc, err, tmp = launcher_errors[name]
    assert rc != 0
    for expected in LAUNCHER_CASES[name][1]:
        assert expected.format(tmp=tmp) in err, err[-2000:]
    assert "Traceback" not in err
    if name != "divergence":  # a flag error leaves no checkpoint folder behind
        assert not (tmp / "out" / "ckpt").exists()


# Simulated faults: a dropped client neither sends nor updates, and its data is not pooled.

FAULTY = dict(TINY, algorithm="ntk_dfl", topology="ring", time_varying=False,
              link_failure=0.3, client_dropout=0.3)
Q = FAULTY["clients"]


def _observed(inner: algorithms.Algorithm) -> algorithms.Algorithm:
    """``inner`` plus per-client metrics: whose samples were pooled (a bit per client) and the
    mixing weights of the round."""

    def round_(state, ctx):
        new, metrics = inner.round(state, ctx)
        owner_of_sample = jnp.broadcast_to(ctx.client_ids[:, None], ctx.data.mask.shape)
        pooled, owner = algorithms.pool_neighbourhood(ctx, extra=owner_of_sample)
        everyone = jnp.arange(Q, dtype=owner.dtype)[None, None, :]
        present = jnp.any((owner[:, :, None] == everyone) & pooled.mask[:, :, None], axis=1)
        bits = jnp.left_shift(1, jnp.arange(Q, dtype=jnp.int32))[None, :]
        g = ctx.graph
        return new, dict(
            metrics, owners=jnp.sum(present.astype(jnp.int32) * bits, axis=1),
            self_weight=g.self_weight, weight_sum=g.self_weight + jnp.sum(g.weight, axis=1),
            dead_weight=jnp.sum(jnp.where(g.alive, 0.0, g.weight), axis=1),
        )

    return algorithms.Algorithm(inner.init, round_)


@pytest.fixture(scope="module")
def faulty_sim():
    sim = simulator.Simulation(simulator.Config(**FAULTY))
    sim.setup.algorithm = _observed(sim.setup.algorithm)
    return sim


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _members(bits: int) -> set[int]:
    return {j for j in range(Q) if bits >> j & 1}


def test_dropped_clients_and_dead_links_carry_nothing(faulty_sim):
    sim = faulty_sim
    p = algorithms.num_params(sim.setup.params)
    n, classes = np.asarray(sim.inputs.data.mask).sum(axis=1), sim.setup.dataset.num_classes
    h = len(FAULTY["horizons"])  # + the τ* choice: |T| candidate steps out, |T| losses back
    per_link = 2 * p * 4 + n * (classes * (p + 1) * 4 + 4) + h * (p + 1) * 4
    dropped = failed = 0
    for _ in range(6):
        before = _host(sim.state.params)
        m = {k: v[0, :Q] for k, v in sim.advance(1).items()}
        after = _host(sim.state.params)
        owners = [_members(int(b)) for b in m["owners"]]
        for q in range(Q):
            ring = {(q - 1) % Q, (q + 1) % Q}
            if not m["active"][q]:
                dropped += 1
                assert m["bytes_sent"][q] == 0
                assert all(q not in owners[r] for r in range(Q) if r != q)
                for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
                    np.testing.assert_array_equal(a[q], b[q])
                continue
            live = {r for r in ring if m["active"][r]}
            assert q in owners[q] and owners[q] - {q} <= live
            assert all((q in owners[r]) == (r in owners[q]) for r in live)
            failed += len(live - owners[q])
            assert m["bytes_sent"][q] == pytest.approx((len(owners[q]) - 1) * per_link[q], rel=1e-6)
            assert m["self_weight"][q] == pytest.approx(1 / len(owners[q]))
            assert m["weight_sum"][q] == pytest.approx(1.0) and m["dead_weight"][q] == 0
    assert dropped and failed  # the faults did happen


def test_a_dropped_clients_data_does_not_reach_its_neighbours(faulty_sim):
    """Re-running a round with a dropped client's data replaced changes nobody's model; the same
    change to a live client's data changes a neighbour's."""
    sim = faulty_sim
    data = sim.inputs.data
    for _ in range(10):
        start_state, start_round = _host(sim.state), int(sim.round)
        m = sim.advance(1)
        after = _host(sim.state.params)
        active = m["active"][0, :Q]
        owners = [_members(int(b)) for b in m["owners"][0, :Q]]
        if not active.all():
            break
    gone = int(np.flatnonzero(~active)[0])
    live = next(j for j in range(Q) if any(j in owners[r] for r in range(Q) if r != j))

    def rerun(client):
        x = np.array(data.x)
        x[client] = -5 * x[client] + 3
        sim.inputs = sim.inputs._replace(data=data._replace(x=jax.device_put(x, data.x.sharding)))
        sim.state = jax.tree.map(lambda h, d: jax.device_put(h, d.sharding), start_state, sim.state)
        sim.round = jax.device_put(np.int32(start_round), sim.round.sharding)
        try:
            sim.advance(1)
        finally:
            sim.inputs = sim.inputs._replace(data=data)
        return _host(sim.state.params)

    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(rerun(gone))):
        np.testing.assert_array_equal(a, b)
    changed = {
        q for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(rerun(live)))
        for q in range(Q) if not np.array_equal(a[q], b[q])
    }
    assert changed - {live}
