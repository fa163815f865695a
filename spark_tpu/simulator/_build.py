"""Plug-ins by name (docs/style.md §12): a Config becomes data, model, topology and algorithm."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from absl import logging

from spark_tpu import algorithms, data, models, topology

from ._config import Config

# Reference hyperparameters (docs/ntk_dfl.md §3 and docs/baselines.md §7) used when a flag is left unset.
REFERENCE = {
    "dgd": dict(lr=0.1, batch_size=10),
    "atc": dict(lr=0.1, batch_size=10),
    "cta": dict(lr=0.1, batch_size=10),
    "dfedavg": dict(lr=0.1, batch_size=25, local_epochs=20, momentum=0.0),
    "dfedavgm": dict(lr=0.01, batch_size=50, local_epochs=20, momentum=0.9),
    "fedavg": dict(lr=0.1, batch_size=25, local_epochs=20, momentum=0.0),
    "centralized": dict(lr=0.1, batch_size=10),
    "ntk_dfl": dict(lr=0.01),
    "spark": dict(lr=0.01),
    "ntk_fl": dict(lr=0.01),
}


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The reference values for the algorithm, overridden by every flag the user set."""
    hp = dict(REFERENCE[cfg.algorithm])
    for name in ("lr", "batch_size", "local_epochs", "momentum"):
        if getattr(cfg, name) is not None:
            hp[name] = getattr(cfg, name)
    if hp.get("batch_size", 1) < 1:
        raise ValueError(f"--batch_size={hp['batch_size']}: must be ≥ 1.")
    return hp


def make_algorithm(
    cfg: Config, model: algorithms.Model, num_classes: int, plan: topology.GossipPlan | None = None
) -> algorithms.Algorithm:
    """The algorithm named by --algorithm with its hyperparameters closed over (``plan``: the
    gossip plan, whose degrees size the NTK step's pooled-data buckets)."""
    hp = hyperparameters(cfg)
    a = cfg.algorithm
    if a in ("dgd", "atc", "cta"):
        return algorithms.consensus(
            model, lr=hp["lr"], batch_size=hp["batch_size"], order=a, loss=cfg.loss
        )
    if a in ("dfedavg", "dfedavgm"):
        return algorithms.dfedavg(model, **hp, loss=cfg.loss)
    if a == "fedavg":
        return algorithms.fedavg(
            model, num_clients=cfg.clients, participation=cfg.participation, **hp, loss=cfg.loss
        )
    if a == "centralized":
        return algorithms.centralized(model, num_clients=cfg.clients, **hp, loss=cfg.loss)
    ntk_options = dict(
        num_classes=num_classes, eta0=hp["lr"], lr_decay=cfg.lr_decay, horizons=cfg.horizons,
        solver=cfg.solver, loss=cfg.loss, client_batch=cfg.client_batch,
        solver_stride=cfg.solver_stride, tau_selection=cfg.tau_selection,
    )
    if a in ("ntk_dfl", "spark") and cfg.degree_buckets and plan is not None:
        ntk_options["buckets"] = algorithms.degree_buckets(plan)
        if ntk_options["buckets"] is not None:
            slots, big = ntk_options["buckets"]
            logging.info(
                "pooled data in two widths: %d of %d neighbourhood slots for every client, all "
                "for the %d fullest per device (--degree_buckets)", slots, plan.max_degree + 1, big,
            )
    if a == "ntk_dfl":
        return algorithms.ntk_dfl(model, **ntk_options)
    if a == "spark":
        return algorithms.spark(
            model, stages=cfg.spark_stages, rounds=cfg.rounds, options=dict(cfg.spark_options),
            **ntk_options,
        )
    if a == "ntk_fl":  # docs/ntk_fl.md §2: constant η (--lr_decay is ignored); NTK-FL's horizons, unless
        # --horizons differs from the NTK-DFL default (passing exactly that default gives these).
        left_default = cfg.horizons == Config.__dataclass_fields__["horizons"].default
        return algorithms.ntk_fl(
            model, num_clients=cfg.clients, num_classes=num_classes,
            participation=cfg.participation, eta=hp["lr"], solver=cfg.solver, loss=cfg.loss,
            solver_stride=cfg.solver_stride, tau_selection=cfg.tau_selection,
            horizons=algorithms.NTK_FL_HORIZONS if left_default else cfg.horizons,
        )
    raise ValueError(f"--algorithm={a} is not available yet.")


def make_topology(cfg: Config) -> topology.Topology:
    name = "complete" if cfg.algorithm in ("fedavg", "centralized", "ntk_fl") else cfg.topology
    return topology.Topology(
        name=name, clients=cfg.clients, degree=cfg.degree, mixing=cfg.mixing,
        time_varying=cfg.time_varying and name in ("regular", "erdos_renyi"),
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
        and cfg.solver != "adaptive" and cfg.solver_stride > 1
    ):
        return (
            f"--topology={cfg.topology} is fixed and mixes slowly (spectral gap {gap:.2g}); with "
            f"--horizons up to {max(cfg.horizons)} and --solver={cfg.solver} "
            f"--solver_stride={cfg.solver_stride}, {cfg.algorithm} was measured to collapse on such "
            "graphs (README, 'Robustness to the topology'). Use the default --solver=adaptive, or "
            "--horizons=25,50,100,200."
        )
    return None


def build(cfg: Config, devices: int) -> Setup:
    """Draws the graphs and checks the flags that need no data, then loads data, partitions it
    and builds the model and algorithm (a bad flag fails before the data loads)."""
    hyperparameters(cfg)
    if cfg.algorithm == "spark":  # the stage schedule and options parse without data
        algorithms.parse_stages(cfg.spark_stages or algorithms.DEFAULT_SPARK_STAGES, cfg.rounds)
        algorithms.resolve_spark_options(dict(cfg.spark_options))
    topo = make_topology(cfg)  # --mesh: a torus may tile a 2-D mesh (topology docs)
    layout = topology.device_layout(topo.name, cfg.clients, devices, cfg.mesh, topo.torus_shape)
    plan = topology.build_plan(topo.mixing_matrices(), devices, topo.weight_rule, layout)
    ds = data.load_dataset(cfg.dataset, data_dir=cfg.data_dir, idx_dir=cfg.idx_dir)
    part = data.partition(
        ds.train_y, cfg.clients, method=cfg.partition, alpha=cfg.alpha,
        samples_per_client=cfg.samples_per_client, shards_per_client=cfg.shards_per_client,
        seed=cfg.seed,
    )
    arrays = data.pad_clients(data.federated_arrays(ds, part), devices)
    summary = topo.summary()
    if (warning := horizon_warning(cfg, summary)) is not None:
        logging.warning(warning)
    net = models.make_model(cfg.model, ds.input_shape, ds.num_classes, key=jax.random.key(cfg.seed))
    params, model = algorithms.split_model(net)
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
