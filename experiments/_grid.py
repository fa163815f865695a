"""Shared machinery of the experiment scripts: run named configs through the one simulator loop,
collect their curves, save JSON and plot. Experiments never fork the trainer (docs/style.md §12)."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

RESULTS = os.environ.get("SPARK_TPU_RESULTS", os.path.join(os.path.dirname(__file__), "results"))
RUNS = os.environ.get("SPARK_TPU_RUNS")  # where per-run folders go (default: beside the JSON)


def results_dir(experiment: str) -> str:
    """The experiment's own results folder, ``results/EXPERIMENT/`` (one folder per experiment;
    its run folders go one level down, ``results/EXPERIMENT/NAME/LABEL/``, git-ignored)."""
    return os.path.join(RESULTS, experiment)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=float))


def run_grid(name: str, configs: dict, *, out_dir: str, resume: bool = True) -> dict:
    """Runs every ``{label: Config}`` (skipping, when ``resume``, labels already in the results
    file with the same configuration: a changed default such as the solver re-runs them), saving
    ``OUT_DIR/NAME.json`` after each one so nothing is lost."""
    from spark_tpu import simulator

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    results = {}
    if resume and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    for label, cfg in configs.items():
        if label in results and results[label]["config"] == _jsonable(cfg.to_dict()):
            continue  # the same run (same configuration) is already there
        workdir = os.path.join(RUNS or out_dir, name, label)
        t = time.perf_counter()
        summary = simulator.run(cfg, workdir, progress=True)
        rows = simulator.read_metrics(os.path.join(workdir, "metrics.csv"))
        results[label] = {
            "summary": {k: v for k, v in summary.items() if k != "config"},
            "config": summary["config"],
            "wall_seconds": time.perf_counter() - t,
            "curve": [
                {k: r[k] for k in ("round", "aggregated_acc", "mean_local_acc", "bytes_total",
                                   "train_loss", "consensus_distance") if k in r}
                for r in rows
            ],
        }
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=float)
        os.replace(path + ".tmp", path)
    return results


def report(results: dict, name: str, title: str, target: float, *, out_dir: str) -> str:
    """Draws ``OUT_DIR/NAME.png`` and writes ``OUT_DIR/NAME.md`` (the `table`), which it returns."""
    path = os.path.join(out_dir, name)
    plot(results, path + ".png", title)
    text = table(results, target)
    with open(path + ".md", "w") as f:
        f.write(text + "\n")
    return text


def rounds_to(curve, target):
    for r in curve:
        if not math.isnan(r["aggregated_acc"]) and r["aggregated_acc"] >= target:
            return int(r["round"]), r["bytes_total"]
    return None, None


def table(results: dict, target: float) -> str:
    """A Markdown table: final/best accuracy, rounds and bytes to the target."""
    lines = [
        f"| run | final agg. acc | best agg. acc | final local acc | rounds to {target:.0%} | "
        "GB to target | s/round |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        curve = [r for r in res["curve"] if not math.isnan(r["aggregated_acc"])]
        rnd, b = rounds_to(curve, target)
        best = max(r["aggregated_acc"] for r in curve)
        lines.append(
            f"| {label} | {curve[-1]['aggregated_acc']:.4f} | {best:.4f} | "
            f"{curve[-1]['mean_local_acc']:.4f} | {rnd if rnd else '—'} | "
            f"{b / 1e9:.1f} | {res['summary']['seconds_per_round']:.2f} |"
            if rnd else
            f"| {label} | {curve[-1]['aggregated_acc']:.4f} | {best:.4f} | "
            f"{curve[-1]['mean_local_acc']:.4f} | not in {int(curve[-1]['round'])} | — | "
            f"{res['summary']['seconds_per_round']:.2f} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: str, title: str, *, bytes_axis: bool = True) -> None:
    """Aggregated-model accuracy against round (and against total bytes) for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 if bytes_axis else 1
    fig, axes = plt.subplots(1, cols, figsize=(5.2 * cols, 3.8), squeeze=False)
    for label, res in results.items():
        curve = [r for r in res["curve"] if not math.isnan(r["aggregated_acc"])]
        acc = [r["aggregated_acc"] for r in curve]
        axes[0, 0].plot([r["round"] for r in curve], acc, label=label)
        if bytes_axis:
            axes[0, 1].plot([r["bytes_total"] / 1e9 for r in curve], acc, label=label)
    axes[0, 0].set_xlabel("round")
    if bytes_axis:
        axes[0, 1].set_xlabel("total bytes sent (GB)")
        axes[0, 1].set_xscale("symlog", linthresh=1.0)
    for ax in axes[0]:
        ax.set_ylabel("aggregated-model test accuracy")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seeds_summary(values):
    """mean ± std of a list (None entries count as missing)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    return f"{np.mean(vals):.3g} ± {np.std(vals):.2g} (n={len(vals)})"
