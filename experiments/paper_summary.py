"""Seed-aggregated summary of the paper-scale sweep (issue 5): tables, plots and the claims.

    python -m experiments.paper --alphas=0.05,0.1,0.3,0.5,iid --seeds=0,1,2   # the runs (GPU)
    python -m experiments.paper_summary                                       # this summary

Reads only ``results/paper/paper_<alpha>_s<seed>.json`` (curves and summaries written by
experiments.paper): a run without a result file is not in the tables, and each row says how many
seeds it averages and how often its runs were evaluated (rounds-to-target is only as fine as the
evaluation period: a run evaluated every 5 rounds reports up to 4 rounds late). Writes
``results/paper/paper_summary.{json,md}``, the per-α plots
``results/paper/paper_summary.png`` (rounds to target and final accuracy against α, mean ± std
over seeds), ``results/paper/paper_robustness.png``, and re-draws
``results/paper/paper_<alpha>_s<seed>.{png,md}`` from the JSON curves (the paper experiment's
folder: this script only summarizes its runs).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import app, flags

from experiments import _grid

flags.DEFINE_list("alphas", ["0.05", "0.1", "0.3", "0.5", "iid"], "Heterogeneity levels.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_float("target_accuracy", 0.85, "Target accuracy (as in experiments.paper).")
flags.DEFINE_string("robustness_alpha", "0.1", "α of the ring and Erdős–Rényi robustness runs.")
FLAGS = flags.FLAGS
OUT_DIR = _grid.results_dir("paper")  # experiments.paper's runs, and this summary beside them

TOPOLOGIES = {  # result-name suffix: label (experiments.paper --topology, --horizons)
    "regular": "time-varying 5-regular", "ring": "fixed ring",
    "erdos_renyi": "time-varying Erdős–Rényi",
    "h25-50-100-200": "time-varying 5-regular, τ ≤ 200",
    "ring_h25-50-100-200": "fixed ring, τ ≤ 200",
}
METHODS = ("spark", "ntk_dfl", "ntk_dfl+momentum", "dfedavg", "dfedavgm", "dpsgd")
NTK = ("spark", "ntk_dfl", "ntk_dfl+momentum")
BASELINES = ("dfedavg", "dfedavgm", "dpsgd")


def _row_from_json(res: dict, target: float) -> dict:
    curve = [r for r in res["curve"] if not math.isnan(r["aggregated_acc"])]
    rnd, b = _grid.rounds_to(curve, target)
    return {
        "final_acc": curve[-1]["aggregated_acc"],
        "best_acc": max(r["aggregated_acc"] for r in curve),
        "final_local_acc": curve[-1]["mean_local_acc"],
        "rounds_to_target": rnd,
        "gb_to_target": None if b is None else b / 1e9,
        "rounds_run": int(curve[-1]["round"]),
        "s_per_round": res["summary"]["seconds_per_round"],
        "eval_every": int(res["config"]["eval_every"]),
    }


def collect(alphas, seeds, target, topology: str = "regular") -> list[dict]:
    rows = []
    for alpha in alphas:
        for seed in seeds:
            grid = f"paper_{alpha}_s{seed}" + ("" if topology == "regular" else f"_{topology}")
            path = os.path.join(OUT_DIR, grid + ".json")
            results = json.load(open(path)) if os.path.exists(path) else {}
            if results:
                title = f"Fashion-MNIST, 300 clients, {TOPOLOGIES[topology]}, α={alpha}, seed {seed}"
                _grid.report(results, grid, title, target, out_dir=OUT_DIR)
            for method in METHODS:
                if method not in results:
                    continue
                row = _row_from_json(results[method], target)
                rows.append(
                    {"alpha": alpha, "seed": int(seed), "topology": topology, "method": method, **row}
                )
                rows[-1]["curve"] = [
                    (r["round"], r["aggregated_acc"]) for r in results[method]["curve"]
                    if not math.isnan(r["aggregated_acc"])
                ]
    return rows


def _stats(values):
    vals = [v for v in values if v is not None]
    return (float(np.mean(vals)), float(np.std(vals)), len(vals)) if vals else (None, None, 0)


def aggregate(rows: list[dict], key=lambda r: r["alpha"]) -> dict:
    out = {}
    for group in dict.fromkeys(key(r) for r in rows):
        for method in METHODS:
            sel = [r for r in rows if key(r) == group and r["method"] == method]
            if not sel:
                continue
            rounds = [r["rounds_to_target"] for r in sel]
            out[f"{group}/{method}"] = {
                "alpha": sel[0]["alpha"], "topology": sel[0]["topology"], "method": method,
                "seeds": len(sel),
                "seed_list": sorted(r["seed"] for r in sel),
                "eval_every": sorted({r["eval_every"] for r in sel}),
                "reached": sum(v is not None for v in rounds),
                "rounds_to_target": _stats(rounds),
                "gb_to_target": _stats([r["gb_to_target"] for r in sel]),
                "final_acc": _stats([r["final_acc"] for r in sel]),
                "best_acc": _stats([r["best_acc"] for r in sel]),
                "rounds_run": max((r["rounds_run"] or 0) for r in sel),
            }  # fmt: skip
    return out


def _fmt(stat, digits=1, pct=False):
    mean, std, n = stat
    if mean is None:
        return "—"
    if pct:
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def claims(agg: dict, target: float) -> list[str]:
    lines = []
    for alpha in ("0.05", "0.1"):
        spark = agg.get(f"{alpha}/spark")
        base = [agg.get(f"{alpha}/{m}") for m in BASELINES]
        base = [b for b in base if b and b["rounds_to_target"][0] is not None]
        if spark and spark["rounds_to_target"][0] and base:
            best = min(base, key=lambda b: b["rounds_to_target"][0])
            lines.append(
                f"- α = {alpha}: SPARK reaches {target:.0%} in {spark['rounds_to_target'][0]:.1f} "
                f"rounds (mean of {spark['reached']}/{spark['seeds']} seeds that reached it), the best "
                f"gradient baseline ({best['method']}, {best['seeds']} seed(s), evaluated every "
                f"{'/'.join(map(str, best['eval_every']))} rounds) in "
                f"{best['rounds_to_target'][0]:.1f}: "
                f"{best['rounds_to_target'][0] / spark['rounds_to_target'][0]:.1f}× fewer rounds."
            )
        ntk = agg.get(f"{alpha}/ntk_dfl")
        if spark and ntk and spark["gb_to_target"][0] and ntk["gb_to_target"][0]:
            saving = 1 - spark["gb_to_target"][0] / ntk["gb_to_target"][0]
            lines.append(
                f"- α = {alpha}: bytes to {target:.0%}, SPARK {spark['gb_to_target'][0]:,.0f} GB vs "
                f"NTK-DFL {ntk['gb_to_target'][0]:,.0f} GB ({saving:.0%} less; NTK-DFL reached it in "
                f"{ntk['reached']}/{ntk['seeds']} seeds); the cheapest baseline needs "
                f"{min((b['gb_to_target'][0] for b in base), default=float('nan')):.0f} GB."
            )
    return lines


def main(_):
    rows = collect(FLAGS.alphas, FLAGS.seeds, FLAGS.target_accuracy)
    agg = aggregate(rows)
    head = (
        f"| α | method | seeds | evaluated every | reached {FLAGS.target_accuracy:.0%} | "
        f"rounds to {FLAGS.target_accuracy:.0%} | GB to target | final agg. acc (%) |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    body = [
        f"| {a['alpha']} | {a['method']} | {', '.join(map(str, a['seed_list']))} | "
        f"{'/'.join(map(str, a['eval_every']))} | {a['reached']}/{a['seeds']} | "
        f"{_fmt(a['rounds_to_target'])}{'*' if max(a['eval_every']) > 1 else ''} | "
        f"{_fmt(a['gb_to_target'], 1)} | {_fmt(a['final_acc'], pct=True)} |"
        for a in agg.values()
    ]
    note = (
        "\n*Evaluated every 5 (D-PSGD: 10) rounds: rounds to target is an upper bound, up to 4 "
        "(D-PSGD: 9) rounds late. GB to target are the bytes the runs recorded, before the choice "
        "of τ* was counted (see README)."
    )
    robust_rows = [r for r in rows if r["alpha"] == FLAGS.robustness_alpha] + [
        r for t in TOPOLOGIES if t != "regular"
        for r in collect([FLAGS.robustness_alpha], FLAGS.seeds, FLAGS.target_accuracy, t)
    ]
    robust = aggregate(robust_rows, key=lambda r: r["topology"])
    text = "\n".join([
        head, *body, note, "", *claims(agg, FLAGS.target_accuracy), "",
        f"Robustness to the topology (α = {FLAGS.robustness_alpha}):", "",
        (
            f"| topology | method | seeds | reached {FLAGS.target_accuracy:.0%} | "
            f"rounds to {FLAGS.target_accuracy:.0%} | "
            "final agg. acc (%) | best agg. acc (%) |\n|---|---|---|---|---|---|---|"
        ),
        *[
            f"| {TOPOLOGIES[a['topology']]} | {a['method']} | {a['seeds']} | "
            f"{a['reached']}/{a['seeds']} | {_fmt(a['rounds_to_target'])} | "
            f"{_fmt(a['final_acc'], pct=True)} | {_fmt(a['best_acc'], pct=True)} |"
            for a in robust.values()
        ],
    ])  # fmt: skip
    print(text)
    base = os.path.join(OUT_DIR, "paper_summary")
    with open(base + ".md", "w") as f:
        f.write(text + "\n")
    with open(base + ".json", "w") as f:
        strip = lambda rs: [{k: v for k, v in r.items() if k != "curve"} for r in rs]
        json.dump(
            {"rows": strip(rows), "aggregate": agg, "target": FLAGS.target_accuracy,
             "robustness_rows": strip(robust_rows), "robustness": robust}, f, indent=1,
        )  # fmt: skip
    _plot(agg, base + ".png", FLAGS.target_accuracy)
    _plot_topologies(
        robust_rows, os.path.join(OUT_DIR, "paper_robustness.png"), FLAGS.target_accuracy
    )


def _plot_topologies(rows: list[dict], path: str, target: float) -> None:
    """Aggregated accuracy against round per topology: mean over seeds, band min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topologies = [t for t in TOPOLOGIES if any(r["topology"] == t for r in rows)]
    cols = min(3, len(topologies))
    rows_ = -(-len(topologies) // cols)
    fig, axes = plt.subplots(
        rows_, cols, figsize=(4.6 * cols, 3.6 * rows_), sharex=True, sharey=True, squeeze=False
    )
    axes = axes.ravel()
    for ax in axes[len(topologies):]:
        ax.set_visible(False)
    for ax, topology in zip(axes, topologies):
        for method in METHODS:
            curves = [r["curve"] for r in rows if r["topology"] == topology
                      and r["method"] == method and "curve" in r]  # fmt: skip
            if not curves:
                continue
            n = min(len(c) for c in curves)
            rounds = np.array([c[i][0] for c in curves[:1] for i in range(n)])
            acc = 100 * np.array([[c[i][1] for i in range(n)] for c in curves])
            color = f"C{METHODS.index(method)}"  # the same colour for a method in every panel
            ax.plot(rounds, acc.mean(0), color=color, label=f"{method} ({len(curves)})")
            ax.fill_between(rounds, acc.min(0), acc.max(0), color=color, alpha=0.2)
        ax.axhline(100 * target, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("round")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_title(TOPOLOGIES[topology])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[::cols]:
        ax.set_ylabel("aggregated accuracy (%)")
    axes[0].set_ylim(0, 90)
    fig.suptitle("Fashion-MNIST, 300 clients: mean over seeds with curves (count in legend), band min–max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot(agg: dict, path: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = list(dict.fromkeys(a["alpha"] for a in agg.values()))
    xs = np.arange(len(alphas))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for k, method in enumerate(METHODS):
        stats = [agg.get(f"{a}/{method}") for a in alphas]
        dx = (k - 2.5) * 0.06
        for ax, key, scale in ((axes[0], "rounds_to_target", 1), (axes[1], "final_acc", 100)):
            pts = [
                (x + dx, s[key][0] * scale, s[key][1] * scale)
                for x, s in zip(xs, stats)
                if s and s[key][0] is not None
            ]
            if pts:
                px, py, pe = zip(*pts)
                ax.errorbar(px, py, yerr=pe, marker="o", capsize=3, label=method)
    axes[0].set_ylabel(f"rounds to {target:.0%} (reached seeds)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("final aggregated accuracy (%)")
    for ax in axes:
        ax.set_xticks(xs, [f"α={a}" if a != "iid" else "IID" for a in alphas])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("Fashion-MNIST, 300 clients, a 5-regular graph per round from a pool of 64 "
                 "(mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
