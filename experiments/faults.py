"""Simulated faults (issue 7): NTK-DFL, SPARK and DFedAvg under link failures and client dropout.

Command (from the repo root):

    python -m experiments.faults            # the default setting below, 12 runs
    python -m experiments.faults --small    # a smoke version on scikit-learn digits

Default setting: Fashion-MNIST, 60 clients × 100 samples, per-client Dirichlet α = 0.1, a
random 5-regular graph every round (from a pool of 32), 15 rounds, NTK horizons τ ∈ {25, 50, 100}, each
algorithm at its reference hyperparameters, 8 emulated CPU devices; every algorithm at 0%, 10% and
30% per-round link failure and at 10% per-round client dropout. Each setting is a flag
(``--link_failures``, ``--client_dropouts``, ``--clients``, ...).

Expected wall time on the shared 2-core dev CPU: --small 81 s (measured, 12 runs of 5–9 s); the
default about 1 h (an estimate from NTK runs of the same size, not measured; the JSON records
``wall_seconds`` per run and ``wall_seconds_total``). Expected metric: accuracy falls as faults
rise (fewer neighbours pooled and averaged per round); the default size has not been run yet, so
no number is claimed here. In --small (digits, τ ∈ {4, 8}, 4 rounds) the final aggregated
accuracy is 0.26 / 0.25 / 0.25 / 0.23 for NTK-DFL, 0.34 / 0.34 / 0.32 / 0.31 for SPARK and
0.59 / 0.58 / 0.59 / 0.57 for DFedAvg (no faults / 10% / 30% link failure / 10% dropout).

Faults (docs/topologies.md §4): a failed link carries nothing that round; a dropped client neither sends nor
updates and its neighbours re-normalize their mixing weights over the live links; bytes are
counted for live links only. Writes results/faults/NAME.json (curves, summaries, wall times) and
results/faults/NAME.png (aggregated and mean local accuracy against round, one panel per
algorithm).
"""

from __future__ import annotations

import json
import math
import os
import time

from absl import app, flags

flags.DEFINE_bool("small", False, "Smoke version: digits, 16 clients × 30 samples, 4 rounds.")
flags.DEFINE_list("algorithms", ["ntk_dfl", "spark", "dfedavg"], "Algorithms to compare.")
flags.DEFINE_list("link_failures", ["0", "0.1", "0.3"], "Per-round link failure rates.")
flags.DEFINE_list("client_dropouts", ["0.1"], "Per-round client dropout rates (no link failure).")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset.")
flags.DEFINE_integer("clients", 60, "Clients.")
flags.DEFINE_integer("samples_per_client", 100, "Samples per client.")
flags.DEFINE_integer("rounds", 15, "Rounds.")
flags.DEFINE_float("alpha", 0.1, "Dirichlet α.")
flags.DEFINE_integer("degree", 5, "Degree of the random regular graph.")
flags.DEFINE_list("horizons", ["25", "50", "100"], "NTK evolution horizons τ.")
flags.DEFINE_integer("graph_pool", 32, "Pre-drawn graphs of the time-varying topology.")
flags.DEFINE_integer("local_eval_samples", 1000, "Test samples per local model.")
flags.DEFINE_integer("devices", 8, "Emulated CPU devices (or accelerators) to shard over.")
flags.DEFINE_string("spark_stages", "", "SPARK stage schedule ('' = its default; --small: "
                    "SMALL_STAGES, so that the 4-round smoke leaves the warm-up stage).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results", "faults"),
                    "Outputs.")
flags.DEFINE_string("name", "faults", "Results name (--small appends _small).")
flags.DEFINE_bool("resume", True, "Skip runs already in NAME.json.")
FLAGS = flags.FLAGS

SMALL = dict(
    dataset="digits", clients=16, samples_per_client=30, rounds=4, degree=3, horizons=(4, 8),
    graph_pool=4, local_eval_samples=200,
)
SMALL_STAGES = "0: lam=0, mu=0; 2: lam=0.5->0.1@cos, T=2, mu=0.9"
CURVE_KEYS = ("round", "aggregated_acc", "mean_local_acc", "train_loss", "bytes_total")


def fault_settings() -> dict[str, tuple[float, float]]:
    """{label: (link_failure, client_dropout)} from the flags."""
    out = {}
    for p in map(float, FLAGS.link_failures):
        out["no faults" if p == 0 else f"{p:.0%} link failure"] = (p, 0.0)
    for p in map(float, FLAGS.client_dropouts):
        out[f"{p:.0%} client dropout"] = (0.0, p)
    return out


def base_config() -> dict:
    base = dict(
        dataset=FLAGS.dataset, partition="dirichlet", alpha=FLAGS.alpha, clients=FLAGS.clients,
        samples_per_client=FLAGS.samples_per_client, rounds=FLAGS.rounds, topology="regular",
        degree=FLAGS.degree, time_varying=True, graph_pool=FLAGS.graph_pool,
        horizons=tuple(int(h) for h in FLAGS.horizons), devices=FLAGS.devices, seed=FLAGS.seed,
        local_eval_samples=FLAGS.local_eval_samples, spark_stages=FLAGS.spark_stages,
    )
    if FLAGS.small:
        base.update(SMALL, spark_stages=FLAGS.spark_stages or SMALL_STAGES)
    return base


def configs() -> dict:
    """{(algorithm, fault label): Config} for every algorithm and fault setting."""
    from spark_tpu import simulator

    base = base_config()
    stages = base.pop("spark_stages")  # SPARK's alone: another algorithm refuses it
    return {
        (algo, label): simulator.Config(
            algorithm=algo, link_failure=link, client_dropout=drop, **base,
            **({"spark_stages": stages} if algo == "spark" else {}),
        )
        for algo in FLAGS.algorithms
        for label, (link, drop) in fault_settings().items()
    }


def run_all(name: str) -> dict:
    """Runs every config not yet in OUT_DIR/NAME.json, saving the JSON after each run."""
    from spark_tpu import simulator

    path = os.path.join(FLAGS.output_dir, name + ".json")
    results = {"runs": {}}
    if FLAGS.resume and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    for (algo, label), cfg in configs().items():
        key = f"{algo} | {label}"
        if key in results["runs"]:
            continue
        workdir = os.path.join(FLAGS.output_dir, name, f"{algo}_{label.replace(' ', '_')}")
        t = time.perf_counter()
        summary = simulator.run(cfg, workdir, progress=True)
        rows = simulator.read_metrics(os.path.join(workdir, "metrics.csv"))
        results["runs"][key] = {
            "algorithm": algo, "faults": label, "link_failure": cfg.link_failure,
            "client_dropout": cfg.client_dropout, "wall_seconds": time.perf_counter() - t,
            "final": summary["final"], "best_aggregated_acc": summary["best_aggregated_acc"],
            "seconds_per_round": summary["seconds_per_round"],
            "curve": [{k: r[k] for k in CURVE_KEYS if k in r} for r in rows],
        }
        results["setting"] = {k: v for k, v in cfg.to_dict().items()
                              if k not in ("algorithm", "link_failure", "client_dropout")}
        results["wall_seconds_total"] = sum(r["wall_seconds"] for r in results["runs"].values())
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=float)
        os.replace(path + ".tmp", path)
    return results


def plot(results: dict, path: str, title: str) -> None:
    """Aggregated (top) and mean local (bottom) accuracy against round, a column per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    algos = list(dict.fromkeys(r["algorithm"] for r in results["runs"].values()))
    fig, axes = plt.subplots(2, len(algos), figsize=(4.2 * len(algos), 6.4), squeeze=False,
                             sharey="row")
    for run in results["runs"].values():
        col = algos.index(run["algorithm"])
        curve = [r for r in run["curve"] if not math.isnan(r.get("aggregated_acc", math.nan))]
        rounds = [r["round"] for r in curve]
        axes[0, col].plot(rounds, [r["aggregated_acc"] for r in curve], label=run["faults"])
        axes[1, col].plot(rounds, [r["mean_local_acc"] for r in curve], label=run["faults"])
    for col, algo in enumerate(algos):
        axes[0, col].set_title(algo)
        axes[1, col].set_xlabel("round")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel("aggregated-model accuracy")
    axes[1, 0].set_ylabel("mean local-model accuracy")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    """A Markdown table of final and best accuracy, bytes and wall time per run."""
    lines = [
        "| algorithm | faults | final agg. acc | best agg. acc | final local acc | GB sent | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"].values():
        f = run["final"]
        lines.append(
            f"| {run['algorithm']} | {run['faults']} | {f['aggregated_acc']:.4f} | "
            f"{run['best_aggregated_acc']:.4f} | {f['mean_local_acc']:.4f} | "
            f"{f['bytes_total'] / 1e9:.2f} | {run['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    from spark_tpu import platform

    # An entry point may set global config (docs/style.md §14); before any device is touched.
    platform.emulate_cpu_devices(FLAGS.devices)
    name = FLAGS.name + ("_small" if FLAGS.small else "")
    t = time.perf_counter()
    results = run_all(name)
    s = results["setting"]
    title = (f"Faults: {s['dataset']}, {s['clients']} clients × {s['samples_per_client']}, "
             f"α={s['alpha']}, {s['degree']}-regular")
    plot(results, os.path.join(FLAGS.output_dir, name + ".png"), title)
    print(table(results))
    print(f"This invocation: {time.perf_counter() - t:.0f} s; all runs: "
          f"{results['wall_seconds_total']:.0f} s. Outputs: {FLAGS.output_dir}/{name}.{{json,png}}")


if __name__ == "__main__":
    app.run(main)
