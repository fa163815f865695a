"""Gradient tracking (DIGing; Nedić, Olshevsky & Shi 2017) as a new algorithm, against D-PSGD.

    x_{k+1} = W x_k − α y_k,    y_k = W y_{k−1} + g_k − g_{k−1},    g_k = ∇f_q(x_k)

The state is x_k (`params`), y_{k−1} and g_{k−1}, zero at the start: round 0 gives y_0 = g_0, and
a round takes one gradient and mixes x and y in one exchange (two vectors per live link). g_k uses
a fresh minibatch of `batch_size` samples (GT-DSGD); a batch ≥ the local data set is DIGing exactly.
Run from the repository root: python -m examples.gradient_tracking [--small] [--rounds=N]
"""

import argparse, json, sys, time  # noqa: E401
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import spark_tpu
from spark_tpu import data as datasets, gossip


class TrackingState(NamedTuple):
    params: Any  # x_k, every leaf [clients, ...] (what the simulator evaluates)
    tracker: Any  # y_{k−1}
    grad: Any  # g_{k−1}


def build(ctx: spark_tpu.BuildContext) -> spark_tpu.Algorithm:
    lr, batch = ctx.hyper["lr"], ctx.hyper["batch_size"]

    def loss_and_grad(params, x, y, mask, key):  # on `batch` valid samples, without replacement
        pick = jnp.argsort(jnp.where(mask, jax.random.uniform(key, mask.shape), 2.0))[:batch]
        loss = lambda p: spark_tpu.cross_entropy(ctx.model.apply(p, x[pick]), y[pick], mask[pick])
        return jax.value_and_grad(loss)(params)

    def init(params):
        return TrackingState(params, *[jax.tree.map(jnp.zeros_like, params)] * 2)

    def round_(state: TrackingState, rc: spark_tpu.RoundContext):
        keys = spark_tpu.client_keys(rc.key, rc.client_ids)
        loss, g = jax.vmap(loss_and_grad)(state.params, rc.data.x, rc.data.y, rc.data.mask, keys)
        wx, wy = gossip.mix((state.params, state.tracker), rc.graph)
        y = jax.tree.map(lambda wy, g, g_old: wy + g - g_old, wy, g, state.grad)
        x = jax.tree.map(lambda wx, y: wx - lr * y, wx, y)
        floats = sum(leaf[0].size for leaf in jax.tree.leaves(state.params))
        live = jnp.sum(rc.graph.alive, axis=1).astype(jnp.float32)  # float32: 4 bytes a number
        return TrackingState(x, y, g), {"train_loss": loss, "bytes_sent": live * 2 * 4 * floats}

    return spark_tpu.Algorithm(init, round_)


SPEC = spark_tpu.AlgorithmSpec("gradient_tracking", build, reference={"lr": 0.1, "batch_size": 10},
                               options=("batch_size",), description="DIGing gradient tracking")
FLAGS = dict(rounds=200, clients=30, samples_per_client=100, lr=0.02, batch_size=100,
             topology="ring", eval_every=5)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in FLAGS.items():
        p.add_argument(f"--{flag}", type=type(default), default=default)
    p.add_argument("--small", action="store_true", help="digits, 8 clients: a CI smoke run")
    p.add_argument("--out", help="write the configuration and accuracies to this JSON file")
    args = vars(p.parse_args(argv))
    out, graph, data = args.pop("out"), args.pop("topology"), "fashion_mnist"
    if args.pop("small"):
        data, args["clients"] = "digits", 8
    dataset = datasets.load_dataset(data)  # once for both runs
    config = dict(args, partition="dirichlet", alpha=0.1, time_varying=False)
    result = {"command": " ".join(["python -m examples.gradient_tracking", *sys.argv[1:]]),
              "config": dict(config, dataset=data, topology=graph, model="mlp")}
    start = time.time()
    for name, algorithm in (("gradient_tracking", SPEC), ("dgd", "dgd")):
        h = spark_tpu.simulate(algorithm, "mlp", dataset, graph, **config)
        done = ~np.isnan(h["aggregated_acc"])  # the evaluated rounds
        result[name] = {k: h[k][done].tolist() for k in ("round", "mean_local_acc",
                                                          "aggregated_acc")}
        print(f"{name}: local {h['mean_local_acc'][-1]:.4f}, aggregated {h['aggregated_acc'][-1]:.4f}")
    result["wall_seconds"] = round(time.time() - start, 1)
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
