"""``--mode=predict``: the seed-002 learning-dynamics predictions on a user's own setting.

The run's data, partition, model and (static) mixing matrix are built as for training; the
clients' one-hot labels are regressed with MSE as in the seed; DGD, ATC or CTA (``--algorithm``)
with step ``--lr`` for ``--rounds`` iterations is predicted in closed form (spark_tpu.dynamics)
and, for comparison, actually trained in float64.
"""

from __future__ import annotations

import os

import equinox as eqx
import jax
import numpy as np
from absl import logging

from spark_tpu import data, dynamics, models

from . import _build, _outputs
from ._config import Config

TOO_BIG = (
    "--mode=predict: the stacked Jacobian has Q·D·C·P = {size:.3g} entries (limit {limit:.0e}); "
    "use fewer --clients or --samples_per_client, or a smaller --model (e.g. --model=ntk_mlp on "
    "--dataset=two_moons)."
)
LIMIT = 3e8


def check_float64(tree) -> None:
    """Raises if any floating-point leaf of ``tree`` is not float64."""
    for leaf in jax.tree.leaves(tree):
        dtype = np.asarray(leaf).dtype
        if np.issubdtype(dtype, np.floating) and dtype != np.float64:
            raise TypeError(f"--mode=predict computed in {dtype}, not float64.")


def predict(cfg: Config, workdir: str) -> dict:
    """Predicts and observes DGD/ATC/CTA on ``cfg``'s setting; writes prediction.{json,png}."""
    if cfg.algorithm not in ("dgd", "atc", "cta"):
        raise ValueError(f"--mode=predict: --algorithm={cfg.algorithm}; choose dgd, atc or cta.")
    ds = data.load_dataset(cfg.dataset, data_dir=cfg.data_dir, idx_dir=cfg.idx_dir)
    part = data.partition(
        ds.train_y, cfg.clients, method=cfg.partition, alpha=cfg.alpha,
        samples_per_client=cfg.samples_per_client, shards_per_client=cfg.shards_per_client,
        seed=cfg.seed, path=cfg.partition_file, dataset=ds.name,
    )
    arrays = data.federated_arrays(ds, part)
    if not arrays.mask.all():
        raise ValueError("--mode=predict needs equal client sizes: use --partition=dirichlet or iid.")
    y = np.eye(ds.num_classes, dtype=np.float64)[arrays.y]
    w = _build.make_topology(cfg).mixing_matrices()[0]
    eta = cfg.lr if cfg.lr is not None else 1e-4
    args = dict(algorithm=cfg.algorithm, eta=eta, steps=cfg.rounds)
    client_data = (np.asarray(arrays.x, np.float64), y)
    # Everything from the model's initialization on runs in float64: a cast outside this context
    # would silently truncate to float32 (JAX's default).
    with jax.enable_x64(True):
        net = models.make_model(
            cfg.model, ds.input_shape, ds.num_classes, key=jax.random.key(cfg.seed),
            dtype=np.float64,
        )
        params, static = eqx.partition(net, eqx.is_inexact_array)
        check_float64(params)
        p = sum(x.size for x in jax.tree.leaves(params))
        size = arrays.y.size * ds.num_classes * p  # Q·n: a --partition_file sets n
        if size > LIMIT:
            raise ValueError(TOO_BIG.format(size=size, limit=LIMIT))
        fn = lambda prm, x: eqx.combine(prm, static)(x)  # noqa: E731
        pred = dynamics.predict(fn, params, client_data, w, **args)
        real = dynamics.simulate(fn, params, client_data, w, **args)
    for name in ("loss_discrete", "loss_flow"):
        check_float64(pred[name])
    check_float64(real["loss"])
    os.makedirs(workdir, exist_ok=True)
    errors = {
        "discrete": dynamics.max_relative_error(pred["loss_discrete"], real["loss"]),
        "flow": dynamics.max_relative_error(pred["loss_flow"], real["loss"]),
    }
    summary = {
        "config": cfg.to_dict(), "rank": int(pred["rank"]), "eta": eta,
        "max_relative_loss_error": errors,
        "loss_predicted_discrete": pred["loss_discrete"], "loss_predicted_flow": pred["loss_flow"],
        "loss_observed": real["loss"],
    }
    _outputs.write_json(os.path.join(workdir, "prediction.json"), summary)
    dynamics.plot_prediction(pred, os.path.join(workdir, "prediction.png"), observed=real["loss"])
    logging.info("prediction errors: %s", errors)
    return summary
