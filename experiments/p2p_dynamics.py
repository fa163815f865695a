"""The seed's experiments (arXiv 2409.15267, section V): predicted vs observed per-agent losses.

Command (from the repo root):

    python -m experiments.p2p_dynamics            # full: Q = 8, D = 200, 200 iterations
    python -m experiments.p2p_dynamics --small    # D = 25, seconds

Expected wall time on the shared 2-core dev box: 2–7 min full (the affine flows eigendecompose
Q·r = 6,016-dimensional matrices, 20–60 s each depending on load), about 15 s with --small.
Expected metric: the affine model's discrete prediction matches training to ~1e-14 relative; the
width-256 network's discrete prediction to ≲ 2e-3 and its flow to ≲ 5e-2 (O(η) worse).

Blocks (one PNG each, rows = algorithms, columns = graphs; observed solid, flow dashed, discrete
dotted), all with Metropolis–Hastings weights and one shared θ_0:

- ``affine``: an affine model on MNIST 0 vs 1 — MNIST is not available offline here, so
  Fashion-MNIST classes 0 (T-shirt/top) vs 1 (Trouser) unless ``--mnist_dir`` is given; complete
  graph (as in the seed), DGD/ATC/CTA; η = ``--lr`` (1e-4).
- ``moons_iid``: the width-256 NTK sigmoid network (s_w = 1, s_b = 0.1) on two-moons, i.i.d.
  split, cycle/star/complete; η = ``--lr``. The loss moves only ~0.3% at η = 1e-4, so the
  relative error is also reported against the loss change.
- ``moons_iid_large_eta``: the same at η = ``--large_lr`` (0.1), where the loss halves.
- ``moons_noniid``: a label-sorted split (agents 0–3 hold class 0, 4–7 class 1) at η =
  ``--large_lr``: the topologies now visibly differ (the seed notes topology effects need
  non-IID data or a larger η).

Losses are the seed's local objective (1/(2D))‖f(X_q; θ_q) − y_q‖² (eq. 3/15), and the gradient
step is η ∇ of it (loss scale c = 1/D; see `spark_tpu.dynamics._predict`).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spark_tpu import dynamics, topology

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, named as the launcher's ``--mode=predict`` names them (``--lr``
    the step size η, ``--rounds`` the iterations). Defined only when run as a script, so that
    `benchmarks.bench_dynamics` can import `moons` and `ntk_mlp` beside flags of its own."""
    flags.DEFINE_bool(
        "small", False, "D = 25 samples per agent instead of 200 (a seconds-long run)."
    )
    flags.DEFINE_string(
        "output_dir", "experiments/results/p2p_dynamics", "Where the JSON and PNGs go."
    )
    flags.DEFINE_string(
        "fashion_dir", "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX dir."
    )
    flags.DEFINE_string(
        "mnist_dir", None, "An MNIST IDX dir; if given, the affine block uses MNIST."
    )
    flags.DEFINE_float("lr", 1e-4, "The seed's step size η.")
    flags.DEFINE_float("large_lr", 0.1, "Step size η of the large-η and non-IID blocks.")
    flags.DEFINE_integer("rounds", 200, "Iterations.")
    flags.DEFINE_integer("clients", 8, "Agents Q.")
    flags.DEFINE_integer("samples_per_client", 200, "Samples per agent D (25 with --small).")
    flags.DEFINE_integer("width", 256, "Hidden width of the NTK network.")
    flags.DEFINE_integer("seed", 0, "Seed for data and initialization.")


GRAPHS = ("ring", "star", "complete")
ALGORITHMS = ("dgd", "atc", "cta")


class Block(NamedTuple):
    name: str
    model: str
    graphs: tuple[str, ...]
    eta: float
    note: str


def ntk_mlp(width: int, key: jax.Array, n_in: int = 2):
    """One hidden sigmoid layer, NTK parameterization (seed eq. 1–2): s_w = 1, s_b = 0.1."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {
        "w1": jax.random.normal(k1, (width, n_in), jnp.float64),
        "b1": jax.random.normal(k2, (width,), jnp.float64),
        "w2": jax.random.normal(k3, (width,), jnp.float64),
        "b2": jax.random.normal(k4, (), jnp.float64),
    }

    def f(p, x):
        h = jax.nn.sigmoid(p["w1"] @ x / np.sqrt(n_in) + 0.1 * p["b1"])
        return p["w2"] @ h / np.sqrt(width) + 0.1 * p["b2"]

    return f, params


def affine_model(n_in: int, key: jax.Array):
    """f(x) = wᵀx + b (seed eq. 15), w ~ N(0, 1/n_in), b = 0."""
    params = {
        "w": jax.random.normal(key, (n_in,), jnp.float64) / np.sqrt(n_in),
        "b": jnp.zeros((), jnp.float64),
    }
    return (lambda p, x: x @ p["w"] + p["b"]), params


def _idx_file(directory: str, stem: str) -> str:
    for name in (f"{stem}.gz", stem):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(f"No {stem}[.gz] in {directory}.")


def binary_images(q: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Q·D i.i.d. training images of classes 0 and 1, pixels in [0, 1], labels 0/1."""
    from spark_tpu.data import read_idx  # lazily: another layer

    directory = FLAGS.mnist_dir or FLAGS.fashion_dir
    name = "MNIST" if FLAGS.mnist_dir else "Fashion-MNIST"
    images = read_idx(_idx_file(directory, "train-images-idx3-ubyte"))
    labels = read_idx(_idx_file(directory, "train-labels-idx1-ubyte"))
    pool = np.flatnonzero(labels <= 1)
    pick = np.random.default_rng(seed).choice(pool, size=q * d, replace=False)
    x = images[pick].reshape(q, d, -1).astype(np.float64) / 255.0
    y = labels[pick].reshape(q, d).astype(np.float64)
    note = f"{name} classes 0 vs 1" + ("" if FLAGS.mnist_dir else " (MNIST not available offline)")
    return x, y, note


def moons(q: int, d: int, seed: int, label_sorted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two-moons (noise 0.1): i.i.d. over agents, or sorted by label (non-IID)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(q * d, noise=0.1, random_state=seed)
    if label_sorted:
        order = np.argsort(y, kind="stable")
        x, y = x[order], y[order]
    return x.reshape(q, d, 2), y.reshape(q, d).astype(np.float64)


def compare(pred: dict[str, Any], observed: np.ndarray) -> dict[str, float]:
    """Max relative loss errors, and the max error relative to the largest loss change."""
    change = float(np.max(np.abs(observed - observed[:1])))
    row = {"observed_max_loss_change": change}
    for kind in ("discrete", "flow"):
        loss = pred[f"loss_{kind}"]
        row[f"max_rel_err_{kind}"] = dynamics.max_relative_error(loss, observed)
        row[f"max_err_over_change_{kind}"] = float(np.max(np.abs(loss - observed)) / change)
    return row


def run_block(block: Block, f, params, x, y, steps: int):
    """Linearizes once, then predicts and trains for every graph × algorithm."""
    t0 = time.perf_counter()
    lin = dynamics.linearize(f, params, x)
    table: dict[str, Any] = {"rank": lin.rank, "linearize_s": time.perf_counter() - t0}
    curves = {}
    for graph in block.graphs:
        w = topology.metropolis_hastings(getattr(topology, graph)(x.shape[0]))
        for alg in ALGORITHMS:
            kw = {"algorithm": alg, "eta": block.eta, "steps": steps}
            t0 = time.perf_counter()
            pred = dynamics.predict_linearized(lin, y, w, **kw)
            t1 = time.perf_counter()
            observed = dynamics.simulate(f, params, (x, y), w, **kw)["loss"]
            row = compare(pred, observed)
            row.update(predict_s=t1 - t0, simulate_s=time.perf_counter() - t1)
            table.setdefault(graph, {})[alg] = row
            curves[graph, alg] = (pred, observed)
            print(
                f"{block.name:22s} {graph:8s} {alg}: disc {row['max_rel_err_discrete']:.2e} "
                f"flow {row['max_rel_err_flow']:.2e} (predict {row['predict_s']:.2f}s)"
            )
    return table, curves


def plot_block(block: Block, curves, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(ALGORITHMS), len(block.graphs)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for i, alg in enumerate(ALGORITHMS):
        for j, graph in enumerate(block.graphs):
            pred, observed = curves[graph, alg]
            title = f"{alg.upper()} / {graph}, η = {block.eta:g}"
            dynamics.draw_prediction(axes[i, j], pred, observed, title, legend=i + j == 0)
    text = f"{block.name}: {block.note} (solid observed, dashed flow, dotted discrete)"
    fig.suptitle("\n".join(textwrap.wrap(text, 45 * cols)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def blocks(note: str) -> list[Block]:
    mlp = f"width-{FLAGS.width} NTK sigmoid MLP on two-moons"
    return [
        Block("affine", "affine", ("complete",), FLAGS.lr, f"affine model, {note}"),
        Block("moons_iid", "mlp", GRAPHS, FLAGS.lr, f"{mlp}, i.i.d."),
        Block("moons_iid_large_eta", "mlp", GRAPHS, FLAGS.large_lr, f"{mlp}, i.i.d., larger η"),
        Block("moons_noniid", "mlp", GRAPHS, FLAGS.large_lr, f"{mlp}, label-sorted, larger η"),
    ]


def block_data(block: Block, q: int, d: int, images) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    key = jax.random.PRNGKey(FLAGS.seed)
    if block.model == "affine":
        x, y, _ = images
        return (*affine_model(x.shape[-1], key), x, y)
    x, y = moons(q, d, FLAGS.seed, label_sorted=block.name == "moons_noniid")
    return (*ntk_mlp(FLAGS.width, key), x, y)


def main(argv: list[str]) -> None:
    del argv
    q, d = FLAGS.clients, (25 if FLAGS.small else FLAGS.samples_per_client)
    images = binary_images(q, d, FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    config = {
        "clients": q,
        "samples": d,
        "steps": FLAGS.rounds,
        "width": FLAGS.width,
        "eta": FLAGS.lr,
        "large_eta": FLAGS.large_lr,
        "loss_scale": "1/D",
        "mixing": "metropolis_hastings",
        "small": FLAGS.small,
        "affine_data": images[2],
        "seed": FLAGS.seed,
    }
    out: dict[str, Any] = {"config": config, "results": {}}
    suffix = "_small" if FLAGS.small else ""
    for block in blocks(images[2]):
        f, params, x, y = block_data(block, q, d, images)
        table, curves = run_block(block, f, params, x, y, FLAGS.rounds)
        table.update(eta=block.eta, description=block.note)
        out["results"][block.name] = table
        plot_block(
            block, curves, os.path.join(FLAGS.output_dir, f"p2p_dynamics{suffix}_{block.name}.png")
        )
    with open(os.path.join(FLAGS.output_dir, f"p2p_dynamics{suffix}.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print(markdown_table(out["results"]))


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        "| block | graph | alg | max rel err discrete | max rel err flow | err/Δloss flow |",
        "|---|---|---|---|---|---|",
    ]
    for name, table in results.items():
        for graph in GRAPHS:
            for alg, row in table.get(graph, {}).items():
                lines.append(
                    f"| {name} | {graph} | {alg} | {row['max_rel_err_discrete']:.2e} | "
                    f"{row['max_rel_err_flow']:.2e} | {row['max_err_over_change_flow']:.2e} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # an entry point may set global config (docs/style.md §14)
    define_flags()
    app.run(main)
