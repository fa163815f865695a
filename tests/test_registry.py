"""Registries (docs/extending.md §1): a model, graph, partitioner or data set registered in one line
(or named by import path) runs through `spark_tpu.simulate` and passes `Config` validation; an
unknown name is a one-line error listing the choices; a taken name cannot be silently replaced."""

from __future__ import annotations

import _plugins
import jax
import numpy as np
import pytest

import spark_tpu
from spark_tpu import data, models, registry, simulator, topology

NAMES = dict(model="reg_net", data="reg_blobs", graph="reg_path", partition="reg_contiguous")
PATHS = dict(model="_plugins:make_net", data="_plugins:load_blobs", graph="_plugins:path_graph",
             partition="_plugins:contiguous")
RUN = dict(rounds=1, clients=4, samples_per_client=10, local_eval_samples=20, devices=1)
REGISTRIES = (models.MODELS, data.DATASETS, topology.GRAPHS, data.PARTITIONERS)


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Registers this file's objects (every name starts with reg_) and removes them afterwards, so
    other test files see only the built-ins."""
    # One registration line each, as a user's package would have them.
    models.register("reg_net", _plugins.make_net)
    data.register_dataset("reg_blobs", _plugins.load_blobs)
    topology.register(topology.GraphSpec("reg_path", _plugins.path_graph))
    data.register_partitioner("reg_contiguous", _plugins.contiguous, disjoint=True)
    # A random graph, and objects that break the contracts.
    topology.register(topology.GraphSpec("reg_random_path", _plugins.path_graph, random=True))
    topology.register(topology.GraphSpec("reg_loop", lambda t, seed: np.eye(t.clients, dtype=bool)))
    models.register("reg_bad_net", lambda input_shape, *, num_classes, key: np.zeros(3))
    data.register_dataset("reg_bad_loader", lambda: np.zeros(3))
    yield
    for reg in REGISTRIES:
        for name in reg.names():
            if name.startswith("reg_"):
                reg.unregister(name)


@pytest.mark.parametrize("names", [NAMES, PATHS], ids=["registered", "import_path"])
@pytest.mark.slow  # one simulation per registry; the Config and error checks stay fast
def test_simulate_runs_on_the_users_model_data_graph_and_partition(names):
    _plugins.CALLS.clear()
    h = spark_tpu.simulate("dgd", names["model"], names["data"], names["graph"],
                           partition=names["partition"], seed=3, **RUN)
    assert h["round"].tolist() == [1]
    config = h.summary["config"]
    assert (config["model"], config["dataset"], config["topology"], config["partition"]) == (
        names["model"], names["data"], names["graph"], names["partition"])
    assert _plugins.CALLS == [{"seed": 0}]  # the loader got the keyword it names, not data_dir
    first = h.state.params.layers[0].weight  # make_net's 3-8-2 MLP, one per client
    assert first.shape == (4, 8, 3)
    graph = h.summary["topology"]  # the path: end clients have one neighbour
    assert (graph["degree_min"], graph["degree_max"], graph["time_varying"]) == (1, 2, False)
    split = h.summary["partition"]  # the contiguous blocks: 4 × 10 distinct examples
    sizes = split["sizes"]
    assert (sizes["min"], sizes["max"], split["distinct_examples"]) == (10, 10, 40)


@pytest.mark.parametrize("names", [NAMES, PATHS], ids=["registered", "import_path"])
def test_config_accepts_them(names):
    cfg = simulator.Config(model=names["model"], partition=names["partition"],
                           dataset=names["data"], topology=names["graph"], time_varying=False)
    built = simulator._build.make_topology(cfg)
    assert built.adjacency().sum() == 2 * (cfg.clients - 1)


def test_each_registry_lists_its_builtins():
    assert {"mlp", "cnn", "ntk_mlp", "linear"} <= set(models.MODELS)
    assert set(topology.TOPOLOGIES) == {"ring", "star", "complete", "torus", "regular",
                                        "erdos_renyi", "exponential", "custom"}
    assert {"dirichlet", "dirichlet_disjoint", "iid", "shards"} <= set(data.PARTITIONERS)
    assert {"two_moons", "digits"} <= set(data.DATASETS)
    assert dict(data.PARTITIONERS)["iid"] is data.iid  # still reads as a mapping
    assert data.PARTITIONERS["shards"] is data.shards
    assert simulator._config.MODELS == models.MODELS.names()[:4]
    assert simulator._config.PARTITIONS == data.PARTITIONERS.names()[:4]
    # Hidden: accepted, not listed.
    assert "ring_shuffled" not in topology.TOPOLOGIES
    ring = topology.Topology(name="ring_shuffled", clients=6, time_varying=False)
    assert ring.adjacency().sum(axis=1).tolist() == [2] * 6


@pytest.mark.parametrize("make, message", [
    (lambda: simulator.Config(model="resnet"),
     "--model=resnet: choose one of cnn, mlp, linear, ntk_mlp"),
    (lambda: simulator.Config(partition="by_class"),
     "--partition=by_class: choose one of dirichlet, dirichlet_disjoint, iid, shards"),
    (lambda: topology.Topology(name="hypercube"),
     "--topology=hypercube: choose one of ring, star, complete, torus, regular"),
    (lambda: models.make_model("resnet", (2,), 2, key=jax.random.key(0)),
     "Unknown model 'resnet'; choose one of cnn, mlp"),
    (lambda: data.partition(np.arange(8) % 2, 2, method="by_class", seed=0),
     "--partition=by_class: choose one of dirichlet"),
    (lambda: data.load_dataset("_plugins:missing"),
     "--dataset=_plugins:missing: module '_plugins' has no 'missing'"),
    (lambda: models.make_model("no_such_pkg.nets:build", (2,), 2, key=jax.random.key(0)),
     "--model=no_such_pkg.nets:build: cannot import 'no_such_pkg.nets'"),
])
def test_unknown_names_are_one_line_errors_with_the_choices(make, message):
    with pytest.raises(ValueError) as e:
        make()
    text = str(e.value)
    assert message in text and "\n" not in text


def test_time_varying_needs_a_random_graph():
    with pytest.raises(ValueError, match=r"--time_varying with --topology=reg_path: only random "
                                         r"topologies \(regular, erdos_renyi"):
        topology.Topology(name=NAMES["graph"], clients=4)
    assert topology.Topology(name="reg_random_path", clients=4, pool_size=2).time_varying


def test_a_taken_name_is_not_silently_replaced():
    def other_net(input_shape, *, num_classes, key):
        return models.MLP(input_shape, hidden=(4,), num_classes=num_classes, key=key)

    for register, name, obj in [
        (models.register, "mlp", other_net),
        (data.register_dataset, "digits", _plugins.load_blobs),
        (data.register_partitioner, "iid", _plugins.contiguous),
        (lambda n, o: topology.register(topology.GraphSpec(n, o)), "ring", _plugins.path_graph),
    ]:
        with pytest.raises(ValueError, match=f"named {name!r} is already registered"):
            register(name, obj)
    models.register(NAMES["model"], _plugins.make_net)  # the same object again: a no-op
    models.register("reg_replaced", _plugins.make_net, replace=True)
    models.register("reg_replaced", other_net, replace=True)
    assert models.MODELS.get("reg_replaced") is other_net


def test_bad_user_objects_are_refused_with_the_flag():
    with pytest.raises(TypeError, match="--model=reg_bad_net: the factory returned a ndarray"):
        models.make_model("reg_bad_net", (3,), 2, key=jax.random.key(0))
    with pytest.raises(TypeError, match="--dataset=reg_bad_loader: the loader returned a ndarray"):
        data.load_dataset("reg_bad_loader")
    with pytest.raises(ValueError, match="--topology=reg_loop: the adjacency must be symmetric"):
        topology.Topology(name="reg_loop", clients=4, time_varying=False).adjacency()


def test_import_paths_are_told_apart_from_tfds_versions():
    assert registry.is_import_path("my_pkg.nets:build")
    assert not registry.is_import_path("mnist:3.0.1")
    assert not registry.is_import_path("emnist/digits")


def test_launcher_help_lists_the_registered_names():
    from launch_tpu import _flags  # noqa: F401  (defines the flags)
    from absl import flags

    helps = {name: flags.FLAGS[name].help for name in ("model", "topology", "partition", "dataset")}
    for name in models.MODELS.names()[:4]:
        assert name in helps["model"]
    for name in topology.TOPOLOGIES:
        assert name in helps["topology"]
    for name in data.PARTITIONERS.names()[:4]:
        assert name in helps["partition"]
    for name in ("two_moons", "digits"):
        assert name in helps["dataset"]
    assert "package.module:attribute" in helps["model"]
    assert "package.module:attribute" in helps["dataset"]


def test_a_spec_names_the_free_resume_options_that_change_its_trajectory():
    """``--rounds`` may change on a resume, except where the algorithm's spec lists it in
    ``trajectory_options``: SPARK anneals its last stage up to ``--rounds``, so there the change
    is a trajectory change; NTK-DFL's trajectory does not depend on it."""
    from spark_tpu import algorithms, checkpoint

    assert algorithms.get("spark").trajectory_options == ("rounds",)
    for algorithm, expected in (("spark", ["--rounds: saved 10, now 20"]), ("ntk_dfl", [])):
        saved = simulator.Config(algorithm=algorithm, rounds=10).to_dict()
        now = simulator.Config(algorithm=algorithm, rounds=20).to_dict()
        state, trajectory = checkpoint._manager.flag_differences(saved, now)
        assert state == [] and trajectory == expected, algorithm
