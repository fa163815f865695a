"""`spark_tpu.simulate`: the public entry point, with no file I/O (docs/extending.md §1).

Every argument is a built-in by name or your own object: an algorithm (a registered name, an
`AlgorithmSpec`, or a build function ``BuildContext -> Algorithm``), a model (a name, an Equinox
module, or a factory ``(input_shape, num_classes, *, key) -> module``), data (a data set name, a
`data.Dataset`, or numpy arrays ``(train_x, train_y, test_x, test_y)``), a partition (a name, a
`data.Partition`, or a list of per-client index arrays) and a graph (a name, a
`topology.Topology`, an adjacency or mixing matrix, or a list of them used in turn). Outputs,
checkpoints and the progress bar are callbacks; the launcher is this loop plus flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np

from spark_tpu import algorithms, topology
from spark_tpu import data as data_lib

from . import _build, _run
from ._config import CUSTOM, Config


def _algorithm_name(algorithm) -> str:
    if isinstance(algorithm, str):
        return algorithm
    if isinstance(algorithm, algorithms.AlgorithmSpec):
        algorithms.register(algorithm)
        return algorithm.name
    if callable(algorithm):  # a build function: registered under its import path
        path = f"{algorithm.__module__}:{algorithm.__qualname__}"
        algorithms.register(algorithms.as_spec(path, algorithm), replace=True)
        return path
    raise TypeError(f"algorithm: a name, an AlgorithmSpec or a build function, not "
                    f"{type(algorithm).__name__}.")


def _graph(graph, mixing: str):
    if isinstance(graph, (topology.Topology, topology.GraphSequence)):
        return graph
    if isinstance(graph, np.ndarray) and graph.ndim == 2:
        return topology.GraphSequence((graph,), mixing=mixing)
    if isinstance(graph, Sequence) and not isinstance(graph, str):
        return topology.GraphSequence(tuple(np.asarray(g) for g in graph), mixing=mixing)
    raise TypeError(f"graph: a topology name, a Topology, a matrix or a list of matrices, not "
                    f"{type(graph).__name__}.")


def simulate(
    algorithm: str | algorithms.AlgorithmSpec | Callable = "ntk_dfl",
    model: str | eqx.Module | Callable = "mlp",
    data: str | data_lib.Dataset | tuple = "fashion_mnist",
    graph: str | topology.Topology | np.ndarray | Sequence[np.ndarray] = "regular",
    *,
    partition: str | data_lib.Partition | Sequence[np.ndarray] = "dirichlet",
    rounds: int = 30,
    eval_every: int = 1,
    seed: int = 0,
    devices: int | None = None,
    callbacks: Sequence[_run.Callback] = (),
    progress: bool = False,
    **config: Any,
) -> _run.History:
    """Runs one simulation and returns its `History` (writes nothing unless a callback does).

    Args:
      algorithm: a registered name (``"ntk_dfl"``, ``"spark"``, ``"dgd"``, ...), an import path
        ``"pkg.mod:attr"``, an `algorithms.AlgorithmSpec`, or a build function.
      model: a name (``"mlp"``, ``"cnn"``, ...), an Equinox module (every client starts from it),
        or a factory ``(input_shape, num_classes, *, key) -> module``.
      data: a data set name (``"fashion_mnist"``, ``"digits"``, any tfds name), a
        `data.Dataset`, or ``(train_x, train_y, test_x, test_y)`` numpy arrays.
      graph: a topology name (``"regular"``, ``"ring"``, ...), a `topology.Topology`, one
        adjacency or mixing matrix, or a list of them (round r uses graph r mod G).
      partition: a partitioner name (``"dirichlet"``, ``"iid"``, ...), a `data.Partition`, or a
        list of per-client arrays of training-set indices (then ``clients`` is its length).
      rounds: communication rounds.
      eval_every: rounds per compiled chunk (the test accuracy is measured after each).
      seed: the root seed (data split, graphs, initialization, sampling).
      devices: devices to shard clients over (default: every visible device).
      callbacks: `Callback`s (e.g. `WriteOutputs`, a checkpointer).
      progress: show a progress bar.
      **config: any other `Config` field by its launcher flag name (``clients=30``,
        ``alpha=0.1``, ``lr=0.05``, ``samples_per_client=100``, ``horizons=(100, 200)``, ...).

    Returns:
      The `History`: per-round metric arrays, the summary and the final client states.

    Examples:
      >>> import spark_tpu
      >>> h = spark_tpu.simulate("dgd", "linear", "two_moons", "ring", rounds=2, clients=4,
      ...                        samples_per_client=20, local_eval_samples=50, devices=1)
      >>> h["round"].tolist(), h.summary["config"]["algorithm"]
      ([1, 2], 'dgd')
    """
    fields = dict(config, rounds=rounds, eval_every=eval_every, seed=seed)
    custom: dict[str, Any] = {}
    fields["algorithm"] = _algorithm_name(algorithm)
    if isinstance(model, str):
        fields["model"] = model
    else:
        custom["model"], fields["model"] = model, CUSTOM
    if isinstance(data, str):
        fields["dataset"] = data
    else:
        ds = data if isinstance(data, data_lib.Dataset) else data_lib.from_arrays(*data)
        custom["dataset"], fields["dataset"] = ds, ds.name
    if isinstance(partition, str):
        fields["partition"] = partition
    else:
        if not isinstance(partition, data_lib.Partition):
            partition = data_lib.from_index_lists([np.asarray(ix, np.int64) for ix in partition])
        custom["partition"], fields["partition"] = partition, CUSTOM
        fields.setdefault("clients", len(partition.sizes))
    if isinstance(graph, str):
        fields["topology"] = graph
    else:
        g = custom["graph"] = _graph(graph, fields.get("mixing", "uniform"))
        fields["topology"] = g.name if isinstance(g, topology.Topology) else CUSTOM
        fields.setdefault("clients", g.clients)
    fields["devices"] = devices or len(jax.devices())
    unknown = set(fields) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise TypeError(f"simulate: unknown option(s) {', '.join(sorted(unknown))}; the options "
                        "are the Config fields (the launcher's flag names).")
    cfg = Config(**fields)
    callbacks = ([_run.ProgressBar()] if progress else []) + list(callbacks)
    return _run.simulate_config(cfg, _build.Custom(**custom), callbacks)
