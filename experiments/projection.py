"""SPARK + random projection of Jacobians (docs/spark.md §5; issue 5 item 4).

    python -m experiments.projection            # the grid, ~15–20 min on the 2-core CPU
    python -m experiments.projection --small    # a smoke version (seconds to a minute)
    python -m experiments.projection --bench    # Kronecker vs dense Gaussian: time, kernel error

The grid runs NTK-DFL, SPARK (default stages, no projection) and SPARK with ``--spark
projection={gaussian,kronecker}``, ``projection_dim ∈ --ks`` and ``weight_step ∈ --modes`` on a
reduced CPU setting (Fashion-MNIST, per-client Dirichlet α, a random 5-regular graph every
round from a pool of 32), and writes results/projection/projection.{json,png,md}: accuracy per round and against bytes, and per
run the per-round payload per client and its reduction relative to NTK-DFL (docs/metrics.md §5 bytes).

``--bench`` measures, on the 784-100-10 MLP at its initialization with --bench_n pooled
Fashion-MNIST samples, per kind and k: the time to draw the matrices and the time of drawing them,
forming J·P and the kernel from it (warm, best of --repeats, compile excluded), the relative Frobenius error of that kernel against the exact trace
kernel, and the relative error of the back-projected P (JP)ᵀ r against Jᵀ r (r a random residual),
both as the mean over --bench_seeds projection seeds; writes results/projection/projection_bench.json.
"""

from __future__ import annotations

import json
import math
import os

from absl import app, flags

from experiments import _grid

flags.DEFINE_bool("small", False, "Smoke-test size.")
flags.DEFINE_bool("bench", False, "Run the Kronecker-vs-Gaussian benchmark instead of the grid.")
flags.DEFINE_float("alpha", 0.1, "Dirichlet α.")
flags.DEFINE_integer("clients", 40, "Clients.")
flags.DEFINE_integer("samples_per_client", 60, "Samples per client.")
flags.DEFINE_integer("rounds", 8, "Rounds.")
flags.DEFINE_integer("devices", 8, "Emulated devices.")
flags.DEFINE_list("ks", ["64", "256", "1024"], "Projection sizes k per layer.")
flags.DEFINE_list("kinds", ["gaussian", "kronecker"], "Projection kinds.")
flags.DEFINE_list("modes", ["exact", "backproject"], "Weight-step modes.")
flags.DEFINE_list("skip", ["gaussian/1024/exact"], "kind/k/mode runs to leave out (cost).")
flags.DEFINE_float("target_accuracy", 0.7, "Target accuracy for the table.")
flags.DEFINE_string("name", "projection", "Results name.")
flags.DEFINE_integer("bench_n", 360, "Pooled samples for --bench (6 clients x 60).")
flags.DEFINE_integer("bench_seeds", 3, "Projection seeds averaged for the errors in --bench.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions in --bench (best is kept).")
FLAGS = flags.FLAGS
FINDINGS = "## Findings"  # a hand-written section of NAME.md, kept when tables are redone
OUT_DIR = _grid.results_dir("projection")


def variants() -> dict:
    out = {"ntk_dfl": ("ntk_dfl", ()), "spark": ("spark", ())}
    for kind in FLAGS.kinds:
        for k in FLAGS.ks:
            for mode in FLAGS.modes:
                if f"{kind}/{k}/{mode}" in FLAGS.skip:
                    continue
                opts = (("projection", kind), ("projection_dim", k), ("weight_step", mode))
                out[f"spark {kind} k={k} {mode}"] = ("spark", opts)
    return out


def configs() -> dict:
    from spark_tpu import simulator

    base = dict(
        dataset="fashion_mnist", partition="dirichlet", alpha=FLAGS.alpha, clients=FLAGS.clients,
        samples_per_client=FLAGS.samples_per_client, rounds=FLAGS.rounds, degree=5,
        devices=FLAGS.devices,
        local_eval_samples=1000, target_accuracy=FLAGS.target_accuracy, graph_pool=32,
    )
    if FLAGS.small:
        base.update(clients=16, samples_per_client=20, rounds=4, horizons=(10, 20), graph_pool=4)
    return {
        label: simulator.Config(algorithm=algo, spark_options=opts, **base)
        for label, (algo, opts) in variants().items()
    }


def payload(res: dict) -> float:
    """Mean bytes sent per client per round."""
    curve, clients = res["curve"], res["config"]["clients"]
    return curve[-1]["bytes_total"] / (len(curve) * clients)


def payload_table(results: dict) -> str:
    ref = payload(results["ntk_dfl"]) if "ntk_dfl" in results else math.nan
    spark_acc = results.get("spark", {}).get("curve", [{}])[-1].get("aggregated_acc", math.nan)
    lines = [
        "| run | MB per client per round | reduction vs NTK-DFL | final agg. acc | "
        "Δ acc vs SPARK (pts) | best agg. acc | s/round |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        curve = [r for r in res["curve"] if not math.isnan(r["aggregated_acc"])]
        final, best = curve[-1]["aggregated_acc"], max(r["aggregated_acc"] for r in curve)
        p = payload(res)
        lines.append(
            f"| {label} | {p / 1e6:.2f} | {100 * (1 - p / ref):.2f}% | {final:.4f} | "
            f"{100 * (final - spark_acc):+.2f} | {best:.4f} | "
            f"{res['summary']['seconds_per_round']:.2f} |"
        )
    return "\n".join(lines)


def bench_table(out: dict) -> str:
    lines = [
        f"Kronecker vs dense Gaussian projection, 784-100-10 MLP, N = {out['n']} "
        f"(exact structured kernel {1e3 * out['exact_kernel_s']:.1f} ms):",
        "",
        "| kind | k | floats/sample/class (Σ k_l) | draw P (s) | draw + J·P + kernel (s) | "
        "kernel rel. error | back-projection rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, v in out.items():
        if isinstance(v, dict):
            kind, k = key.rsplit("_k", 1)
            lines.append(
                f"| {kind} | {k} | {v['floats_per_sample_class']} | {v['draw_s']:.4f} | "
                f"{v['kernel_s']:.4f} | {v['kernel_rel_error']:.3f} | "
                f"{v['backproject_rel_error']:.1f} |"
            )
    return "\n".join(lines)


def grid() -> None:
    name = FLAGS.name + ("_small" if FLAGS.small else "")
    results = _grid.run_grid(name, configs(), out_dir=OUT_DIR)
    path = os.path.join(OUT_DIR, name)
    _grid.plot(results, path + ".png", f"SPARK + projection, α={FLAGS.alpha}")
    cfg = next(iter(results.values()))["config"]
    text = (
        f"Fashion-MNIST, {cfg['clients']} clients × {cfg['samples_per_client']} samples, "
        f"Dirichlet α = {cfg['alpha']}, a random {cfg['degree']}-regular graph per round (pool of "
        f"{cfg['graph_pool']}), "
        f"{cfg['rounds']} rounds, MLP 784-100-10, SPARK default stages. Payload: docs/metrics.md §5 bytes "
        "sent per client per round (mean over clients and rounds).\n\n"
        + payload_table(results) + "\n\n" + _grid.table(results, FLAGS.target_accuracy)
    )
    bench_path = os.path.join(OUT_DIR, FLAGS.name + "_bench.json")
    if os.path.exists(bench_path):
        with open(bench_path) as f:
            text += "\n\n" + bench_table(json.load(f))
    if os.path.exists(path + ".md"):  # keep the hand-written findings below the tables
        with open(path + ".md") as f:
            old = f.read()
        if FINDINGS in old:
            text += "\n\n" + old[old.index(FINDINGS):].rstrip()
    with open(path + ".md", "w") as f:
        f.write(text + "\n")
    print(text)


def _timed(fn, *args) -> float:
    from benchmarks import _flops

    return _flops.best_time(fn, *args, reps=FLAGS.repeats)


def bench() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from spark_tpu import data, models, ntk
    from spark_tpu.ntk._projection import projection_sizes

    ds = data.load_dataset("fashion_mnist")
    x = jnp.asarray(data.normalize(ds.test_x[: FLAGS.bench_n], ds), jnp.float32)
    model = models.make_model("mlp", ds.input_shape, ds.num_classes, key=jax.random.key(0))
    r = jax.random.normal(jax.random.key(1), (x.shape[0], ds.num_classes), jnp.float32)
    flat = lambda t: jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(t)])  # noqa: E731
    exact_fn = jax.jit(lambda m, xx: ntk.trace_kernel(m, xx))
    exact = exact_fn(model, x)
    jtr = flat(ntk.jacobian_transpose_product(model, x, r))
    out = {"n": int(x.shape[0]), "params": int(jtr.size), "exact_kernel_s": _timed(exact_fn, model, x)}
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))  # noqa: E731
    for k in (int(v) for v in FLAGS.ks):
        for kind in FLAGS.kinds:

            @jax.jit
            def both(seed, m, xx, k=k, kind=kind):
                jp = ntk.project_jacobian(m, xx, k=k, seed=seed, kind=kind)
                back = ntk.back_project(m, jp, r, k=k, seed=seed, kind=kind)
                return ntk.kernel_from_projection(jp), flat(back)

            kernel_fn = jax.jit(lambda seed, m, xx, k=k, kind=kind: ntk.projected_trace_kernel(
                m, xx, k=k, seed=seed, kind=kind))  # fmt: skip
            errs, back_errs = [], []
            for s in range(FLAGS.bench_seeds):
                kern, back = both(jax.random.key(100 + s), model, x)
                errs.append(rel(kern, exact))
                back_errs.append(rel(back, jtr))
            draw = jax.jit(lambda seed, m, k=k, kind=kind: ntk.layer_projections(
                m, k=k, seed=seed, kind=kind))  # fmt: skip
            key = f"{kind}_k{k}"
            out[key] = {
                "floats_per_sample_class": int(sum(projection_sizes(model, k=k, kind=kind))),
                "draw_s": _timed(draw, jax.random.key(0), model),
                "kernel_s": _timed(kernel_fn, jax.random.key(0), model, x),
                "kernel_rel_error": float(np.mean(errs)),
                "backproject_rel_error": float(np.mean(back_errs)),
            }
            print(key, out[key], flush=True)
    print(bench_table(out))
    path = os.path.join(OUT_DIR, FLAGS.name + "_bench.json")
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def main(_):
    bench() if FLAGS.bench else grid()


if __name__ == "__main__":
    from spark_tpu import platform

    platform.emulate_cpu_devices(8)
    app.run(main)
