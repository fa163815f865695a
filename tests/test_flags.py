"""Every flag × every algorithm: a flag the user sets either changes the run or is refused with one
line naming the flag and why.

The launcher passes the flags the user set to `simulator.refuse_unused`; `simulator.APPLIES` says
which algorithms each algorithm-specific option changes. Here, for every Config field:

- general options (data, model, rounds, seed, evaluation, devices, checkpoints) change every
  algorithm's run and are listed in GENERAL, so a new flag cannot go unclassified;
- for an algorithm outside a flag's APPLIES, `refuse_unused` must raise a one-line error naming it;
- for an algorithm inside, setting the flag to another value must change the run: the graphs for
  the graph options (every graph algorithm mixes over them), else two rounds of a tiny simulation
  (final models and per-client metrics);
- options that by design change how, not what, is computed (EXECUTION) are only checked for
  refusal; their equality with the default path is tested in test_degree_buckets.py and
  test_ntk_dfl_reference.py.
"""

import dataclasses

import jax
import numpy as np
import pytest

from spark_tpu import simulator
from spark_tpu.simulator import APPLIES, ALGORITHMS, refuse_unused
from spark_tpu.simulator._build import make_topology

GENERAL = {
    "algorithm", "dataset", "data_dir", "idx_dir", "partition", "alpha", "shards_per_client",
    "clients", "samples_per_client", "model", "rounds", "lr", "seed", "devices", "mesh",
    "eval_every", "local_eval_samples", "target_accuracy", "checkpoint_every", "keep_checkpoints",
    "algorithm_options",  # checked against the algorithm's own AlgorithmSpec.defaults
    "partition_file",
}
EXECUTION = {"client_batch", "degree_buckets"}
GRAPH_FLAGS = {  # field: (base settings where the option matters, another value)
    "topology": ({}, "ring"),
    "degree": ({}, 3),
    "mixing": ({"topology": "star"}, "metropolis"),
    "time_varying": ({}, False),
    "graph_pool": ({}, 2),
    "edge_probability": ({"topology": "erdos_renyi", "edge_probability": 0.5}, 0.8),
    "torus_shape": ({"topology": "torus", "torus_shape": (2, 4)}, (4, 2)),
    "topology_file": ({"topology": "custom"}, None),  # files written in the test
}
RUN_FLAGS = {  # field: (base settings where the option matters, another value)
    "link_failure": ({}, 0.5),
    "client_dropout": ({"participation": 0.5}, 0.3),  # FedAvg/NTK-FL: several sampled clients
    "lr_decay": ({}, 0.5),
    "batch_size": ({}, 3),
    "local_epochs": ({}, 2),
    "momentum": ({}, 0.5),
    "participation": ({}, 0.75),
    "horizons": ({}, (2, 6)),
    "solver": ({}, "euler"),
    "solver_stride": ({"horizons": (2, 40), "solver": "rk4"}, 2),  # strides start after step 32
    "tau_selection": ({}, "linearized"),
    "loss": ({}, "mse"),
    "spark_stages": ({}, "0: lam=0.5, T=2, mu=0.5"),
    "spark_options": ({}, (("projection", "kronecker"), ("projection_dim", "16"))),
}
TINY = dict(dataset="digits", clients=8, samples_per_client=6, rounds=2, local_eval_samples=10,
            devices=1, graph_pool=4, horizons=(2, 4), eval_every=2, lr=0.05)
FIELDS = [f.name for f in dataclasses.fields(simulator.Config)]


def test_every_flag_is_classified():
    classified = GENERAL | EXECUTION | set(GRAPH_FLAGS) | set(RUN_FLAGS)
    assert set(FIELDS) == classified, set(FIELDS) ^ classified
    assert set(APPLIES) == set(FIELDS) - GENERAL


@pytest.mark.parametrize("flag, algorithm", [(f, a) for f in sorted(APPLIES) for a in ALGORITHMS])
def test_refused_where_it_does_nothing(flag, algorithm):
    cfg = simulator.Config(algorithm=algorithm)
    if algorithm in APPLIES[flag][0]:
        refuse_unused(cfg, [flag])  # accepted
        return
    with pytest.raises(ValueError) as e:
        refuse_unused(cfg, [flag])
    name = "--spark" if flag == "spark_options" else f"--{flag}"
    text = str(e.value)
    assert text.startswith(f"{name} does nothing for --algorithm={algorithm}: ")
    assert "\n" not in text


def test_solver_is_refused_with_mse():
    cfg = simulator.Config(algorithm="ntk_dfl", loss="mse")
    for flag in ("solver", "solver_stride"):
        with pytest.raises(ValueError, match=f"--{flag} does nothing with --loss=mse"):
            refuse_unused(cfg, [flag])


def test_spark_refuses_mse_at_construction():
    with pytest.raises(ValueError, match="--loss does nothing for --algorithm=spark"):
        simulator.Config(algorithm="spark", loss="mse")


@pytest.mark.parametrize("flag", sorted(GRAPH_FLAGS))
def test_graph_options_change_the_graphs(flag, tmp_path):
    base, value = GRAPH_FLAGS[flag]
    cfg = simulator.Config(**{**TINY, "algorithm": "dgd", **base})
    if flag == "topology_file":
        ring, star = np.roll(np.eye(8), 1, 1) + np.roll(np.eye(8), -1, 1), np.zeros((8, 8))
        star[0, 1:] = star[1:, 0] = 1
        np.save(tmp_path / "ring.npy", ring)
        np.save(tmp_path / "star.npy", star)
        cfg = cfg.replace(topology_file=str(tmp_path / "ring.npy"))
        value = str(tmp_path / "star.npy")
    other = cfg.replace(**{flag: value})
    a = np.asarray(make_topology(cfg).mixing_matrices())
    b = np.asarray(make_topology(other).mixing_matrices())
    assert a.shape != b.shape or not np.array_equal(a, b), flag


def _run(cfg):
    sim = simulator.Simulation(cfg)
    metrics = sim.advance(cfg.rounds)
    leaves = [np.asarray(x) for x in jax.tree.leaves(sim.state)]
    return leaves, {k: np.asarray(v) for k, v in metrics.items()}


_BASELINES = {}


def _baseline(algorithm, base):
    key = (algorithm, tuple(sorted(base.items())))
    if key not in _BASELINES:
        _BASELINES[key] = _run(simulator.Config(**{**TINY, "algorithm": algorithm, **base}))
    return _BASELINES[key]


RUN_PAIRS = [(f, a) for f in sorted(RUN_FLAGS) for a in APPLIES[f][0]]


@pytest.mark.slow  # 56 two-round simulations
@pytest.mark.parametrize("flag, algorithm", RUN_PAIRS)
def test_applicable_options_change_the_run(flag, algorithm):
    base, value = RUN_FLAGS[flag]
    leaves, metrics = _baseline(algorithm, base)
    cfg = simulator.Config(**{**TINY, "algorithm": algorithm, **base, flag: value})
    other_leaves, other_metrics = _run(cfg)
    same = len(leaves) == len(other_leaves) and all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(leaves, other_leaves)
    ) and metrics.keys() == other_metrics.keys() and all(
        np.array_equal(metrics[k], other_metrics[k], equal_nan=True) for k in metrics
    )
    assert not same, f"--{flag}={value} did not change a run of {algorithm}"
