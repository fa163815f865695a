"""Plug-ins by name (docs/style.md §12): a Config becomes data, model, topology and algorithm."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from spark_tpu import algorithms, data, models, topology

from ._config import CUSTOM, Config

# Reference hyperparameters of the registered algorithms (docs/ntk_dfl.md §3 and docs/baselines.md
# §7), used when a flag is left unset; each algorithm's spec carries its own.
REFERENCE = {name: dict(algorithms.get(name).reference) for name in algorithms.ALGORITHMS.names()}
HYPERPARAMETERS = ("lr", "batch_size", "local_epochs", "momentum")


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The reference values for the algorithm, overridden by every flag the user set."""
    spec = cfg.spec
    hp = dict(spec.reference)
    for name in HYPERPARAMETERS:
        if getattr(cfg, name) is not None and (name in hp or spec.reads(name)):
            hp[name] = getattr(cfg, name)
    if hp.get("batch_size", 1) < 1:
        raise ValueError(f"--batch_size={hp['batch_size']}: must be ≥ 1.")
    return hp


def make_algorithm(
    cfg: Config, model: algorithms.Model, num_classes: int, plan: topology.GossipPlan | None = None
) -> algorithms.Algorithm:
    """The algorithm named by --algorithm, built by its registered spec with its hyperparameters
    (``plan``: the gossip plan, whose degrees size the NTK step's pooled-data buckets)."""
    spec = cfg.spec
    ctx = algorithms.BuildContext(
        model=model, num_classes=num_classes, num_clients=cfg.clients, rounds=cfg.rounds,
        hyper=hyperparameters(cfg), options=algorithms.parse_options(spec, cfg.algorithm_options),
        config=cfg, plan=plan,
    )
    algorithm = spec.build(ctx)
    if not isinstance(algorithm, algorithms.Algorithm):
        raise TypeError(f"--algorithm={cfg.algorithm}: its build function returned a "
                        f"{type(algorithm).__name__}, not an Algorithm(init, round).")
    return algorithm


def make_topology(cfg: Config) -> topology.Topology:
    name = cfg.topology if cfg.spec.uses_graph else "complete"
    return topology.Topology(
        name=name, clients=cfg.clients, degree=cfg.degree, mixing=cfg.mixing,
        time_varying=cfg.time_varying and topology.GRAPHS.get(name).random,
        pool_size=cfg.graph_pool, edge_probability=cfg.edge_probability,
        torus_shape=cfg.torus_shape, path=cfg.topology_file, seed=cfg.seed,
    )


@dataclasses.dataclass
class Setup:
    """Host-side pieces of a run, before placement on the mesh."""

    cfg: Config
    dataset: Any
    arrays: Any  # data.ClientArrays padded to the device count
    partition_summary: dict
    topology_summary: dict
    plan: topology.GossipPlan
    params: Any
    model: algorithms.Model
    algorithm: algorithms.Algorithm


# Below this spectral gap a fixed graph mixes slowly. With a fixed-step solver at stride > 1 (the
# old default, rk4 / 4) NTK-DFL + momentum and SPARK collapsed there with τ up to 800; with the
# adaptive solver the same reduced ring (gap 0.0037 at 60 clients) stays stable (README,
# "Robustness to the topology"), so the warning is for strided fixed steps only.
SLOW_MIXING_GAP = 0.01


def horizon_warning(cfg: Config, topology_summary: dict) -> str | None:
    """A warning for NTK-DFL/SPARK runs with long horizons on a fixed, slowly mixing graph with a
    strided fixed-step solver."""
    gap = topology_summary["spectral_gap"]
    if (
        cfg.algorithm in ("ntk_dfl", "spark") and not topology_summary["time_varying"]
        and gap < SLOW_MIXING_GAP and max(cfg.horizons) > 200
        and cfg.solver_stride > 1
    ):
        return (
            f"--topology={cfg.topology} is fixed and mixes slowly (spectral gap {gap:.2g}); with "
            f"--horizons up to {max(cfg.horizons)} and --solver={cfg.solver} "
            f"--solver_stride={cfg.solver_stride}, {cfg.algorithm} was measured to collapse on such "
            "graphs (README, 'Robustness to the topology'). Use the default --solver=auto, or "
            "--horizons=25,50,100,200."
        )
    return None


class Custom(NamedTuple):
    """A user's own objects in place of the named built-ins (`spark_tpu.simulate`); the Config then
    holds the label ``custom`` (or the data set's name) for each."""

    model: Any = None  # an Equinox module, or a factory (input_shape, num_classes, *, key)
    dataset: Any = None  # a data.Dataset
    partition: Any = None  # a data.Partition
    graph: Any = None  # a topology.GraphSequence or topology.Topology


def make_model(cfg: Config, ds, custom: Custom):
    """The initial network: the user's module or factory, or ``--model`` (a registered name or
    ``package.module:attribute``) through `models.MODELS`."""
    if custom.model is None and cfg.model == CUSTOM:
        raise ValueError("--model=custom: pass the model object (spark_tpu.simulate(model=...)).")
    model = cfg.model if custom.model is None else custom.model
    return models.make_model(model, ds.input_shape, ds.num_classes, key=jax.random.key(cfg.seed))


def _check_partition(part, cfg: Config, ds) -> None:
    count = len(part.sizes)
    if count != cfg.clients:
        raise ValueError(f"the partition has {count} clients but --clients={cfg.clients}.")
    if (part.sizes < 1).any():
        raise ValueError(f"partition: client {int(np.argmin(part.sizes))} holds no examples.")
    top = int(part.indices[part.mask].max())
    if top >= len(ds.train_y) or int(part.indices[part.mask].min()) < 0:
        raise ValueError(f"partition: index {top} is outside the {len(ds.train_y)} training "
                         "examples.")


def build(cfg: Config, devices: int, custom: Custom = Custom()) -> Setup:
    """Draws the graphs and checks the flags that need no data, then loads data, partitions it
    and builds the model and algorithm (a bad flag fails before the data loads)."""
    hyperparameters(cfg)
    # a server algorithm runs on the complete graph whatever graph it is given
    use_custom = custom.graph is not None and cfg.spec.uses_graph
    topo = custom.graph if use_custom else make_topology(cfg)
    if topo.clients != cfg.clients:
        raise ValueError(f"the graph has {topo.clients} clients but --clients={cfg.clients}.")
    layout = topology.device_layout(topo.name, cfg.clients, devices, cfg.mesh, topo.torus_shape)
    plan = topology.build_plan(topo.mixing_matrices(), devices, topo.weight_rule, layout)
    if getattr(topo, "order", "random") != "random":
        plan = dataclasses.replace(plan, order=topo.order)
    if cfg.partition == "file":  # its format and client count need no data (docs/data.md §6)
        data.read_partition_file(cfg.partition_file, cfg.clients)
    if custom.dataset is not None:
        ds = custom.dataset
    else:
        ds = data.load_dataset(cfg.dataset, data_dir=cfg.data_dir, idx_dir=cfg.idx_dir)
    if custom.partition is not None:
        part = custom.partition
    elif cfg.partition == CUSTOM:
        raise ValueError("--partition=custom: pass the partition (spark_tpu.simulate(partition=...)).")
    else:
        part = data.partition(
            ds.train_y, cfg.clients, method=cfg.partition, alpha=cfg.alpha,
            samples_per_client=cfg.samples_per_client, shards_per_client=cfg.shards_per_client,
            seed=cfg.seed, path=cfg.partition_file, dataset=ds.name,
        )
    _check_partition(part, cfg, ds)
    arrays = data.pad_clients(data.federated_arrays(ds, part), devices)
    summary = topo.summary()
    if (warning := horizon_warning(cfg, summary)) is not None:
        logging.warning(warning)
    params, model = algorithms.split_model(make_model(cfg, ds, custom))
    return Setup(
        cfg=cfg, dataset=ds, arrays=arrays,
        partition_summary=data.partition_summary(part, ds.train_y, ds.num_classes),
        topology_summary=summary, plan=plan, params=params, model=model,
        algorithm=make_algorithm(cfg, model, ds.num_classes, plan),
    )


def test_arrays(ds, local_samples: int, devices: int):
    """Normalized test data: the first ``local_samples`` for local models, all (padded to the
    device count, with a mask) for the aggregated model."""
    x = data.normalize(ds.test_x, ds)
    y = np.asarray(ds.test_y, np.int32)
    n = len(y)
    pad = (-n) % devices
    full_x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    full_y = np.concatenate([y, np.zeros(pad, np.int32)])
    mask = np.arange(n + pad) < n
    k = min(local_samples, n)
    return x[:k], y[:k], full_x, full_y, mask
