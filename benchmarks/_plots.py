"""The tables and the PNG (one per benchmark) of benchmarks/bench.py (matplotlib, Agg)."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NOISE = "shared 2-core CPU, other jobs running: timings are noisy"


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    return value if isinstance(value, str) else f"{value:{fmt}}"


def format_table(rows: list[dict], columns) -> str:
    """A Markdown table of ``rows`` with ``columns`` = (header, key, format) triples."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, f) for _, k, f in columns) + " |")
    return "\n".join(lines)


def _bars(ax, labels, values, ylabel, log=None):
    """Horizontal bars; a log axis only where the values span more than 20x (default)."""
    if not values:
        return
    log = (max(values) > 20 * min(values)) if log is None else log
    ax.barh(range(len(values)), values, color="tab:blue")
    ax.set_yticks(range(len(values)), [textwrap.fill(label, 36) for label in labels], fontsize=7)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(ylabel)
    ax.grid(alpha=0.3, axis="x")


def _sim_rows(rows):
    rows = [r for r in rows if "seconds_per_round" in r]
    return [r["label"] for r in rows], rows


def _sim_bars(rows, summary, fig):
    del summary
    labels, rows = _sim_rows(rows)
    ax1, ax2 = fig.subplots(1, 2)
    _bars(ax1, labels, [r["seconds_per_round"] for r in rows], "seconds per round")
    _bars(ax2, labels, [r["peak_rss_mb"] for r in rows], "peak RSS (MiB)", log=False)
    ax2.set_yticks([])


def _kernel(rows, summary, fig):
    del summary
    rows = [r for r in rows if "structured_s" in r]
    ax1, ax2 = fig.subplots(1, 2)
    for name, style in (("structured", "o-"), ("materialized", "s--")):
        pts = [(r["n"], r[f"{name}_s"], r[f"{name}_gflops"]) for r in rows if f"{name}_s" in r]
        if pts:
            ns, secs, rates = zip(*pts)
            ax1.loglog(ns, secs, style, label=name)
            ax2.semilogx(ns, rates, style, label=name)
    ax1.set_xlabel("N (samples)")
    ax1.set_ylabel("seconds per kernel")
    ax2.set_xlabel("N (samples)")
    ax2.set_ylabel("achieved GFLOP/s (analytic count)")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)


def _scaling(rows, summary, fig):
    ax1, ax2 = fig.subplots(1, 2)
    for algo, fit in summary.get("exponents", {}).items():
        pts = sorted(
            (r["clients"], r["seconds_per_round"])
            for r in rows
            if r["label"] == f"{algo} Q={r['clients']}" and "seconds_per_round" in r
        )
        qs, secs = zip(*pts)
        ax1.loglog(qs, secs, "o-", label=f"{algo} (slope {fit['exponent']:.2f})")
    ax1.set_xlabel("clients")
    ax1.set_ylabel("seconds per round")
    ax1.legend(fontsize=7)
    for algo, ratios in summary.get("device_overhead", {}).items():
        ds = [int(d) for d in ratios]
        ax2.plot(ds, list(ratios.values()), "o-", label=algo)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("emulated CPU devices (same 2 cores)")
    ax2.set_ylabel("s/round relative to the fewest devices")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)


def _gossip(rows, summary, fig):
    del summary
    ax1, ax2 = fig.subplots(1, 2)
    paths = (
        ("ppermute", "-", "ppermute halo (4-leaf pytree, as simulated)"),
        ("ppermute_flat", ":", "ppermute halo (one raveled buffer)"),
        ("dense", "--", "dense all-gather W@X"),
    )
    for graph, mark in (("regular", "o"), ("ring", "^")):
        sel = [r for r in rows if r.get("topology", "regular") == graph]
        if not sel:
            continue
        qs = [r["clients"] for r in sel]
        for key, style, name in paths:
            secs = [r[f"{key}_s_per_round"] for r in sel]
            ax1.loglog(qs, secs, f"{mark}{style}", label=f"{name}, {graph}")
        for key, style in (("dense_over_ppermute", "-"), ("dense_over_ppermute_flat", ":")):
            label = f"{graph}, {'raveled' if key.endswith('flat') else 'pytree'}"
            ax2.semilogx(qs, [r[key] for r in sel], f"{mark}{style}", label=label)
    ax1.set_xlabel("clients (P = 79,510)")
    ax1.set_ylabel("seconds per mixing round")
    ax1.legend(fontsize=6)
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_xlabel("clients")
    ax2.set_ylabel("dense time / ppermute time")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)


def _fusion(rows, summary, fig):
    del summary
    ax = fig.subplots(1, 1)
    _bars(
        ax, [r["label"] for r in rows], [r["seconds_per_round"] for r in rows], "seconds per round"
    )


PLOTS = {
    "baselines": _sim_bars,
    "ntk_round": _sim_bars,
    "kernel": _kernel,
    "scaling": _scaling,
    "gossip": _gossip,
    "fusion": _fusion,
    "spark_overhead": _sim_bars,
    "degree_buckets": _sim_bars,
}


def plot(name: str, rows: list[dict], summary: dict, title: str, path: str) -> None:
    """Writes the benchmark's figure to ``path``."""
    fig = plt.figure(figsize=(11, 4))
    PLOTS[name](rows, summary, fig)
    fig.suptitle(f"{title}\n({NOISE})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
