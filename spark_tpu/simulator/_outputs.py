"""The output-directory contract (docs/style.md §13): metrics.csv, summary.json and PNG plots."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
from etils import epath

COLUMNS = (
    "round", "mean_local_acc", "aggregated_acc", "train_loss", "consensus_distance",
    "bytes_per_client", "bytes_total", "seconds",
)


def _fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write_metrics(path: str, rows: list[dict], extra: tuple[str, ...] = ()) -> None:
    """Rewrites metrics.csv (local or gs://) with one row per round, atomically where local."""
    cols = COLUMNS + tuple(extra)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for row in rows:
        w.writerow([_fmt(row.get(c)) for c in cols])
    _write_text(path, buf.getvalue())


def _write_text(path: str, text: str) -> None:
    target = epath.Path(path)
    tmp = target.parent / (target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)


def read_metrics(path: str) -> list[dict]:
    """metrics.csv back as a list of dicts of floats (empty cells are NaN)."""
    with epath.Path(path).open() as f:
        return [
            {k: (float(v) if v != "" else math.nan) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def write_json(path: str, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def plot_accuracy(path: str, rows: list[dict], title: str) -> None:
    """Accuracy against round and against cumulative bytes, local mean and aggregated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not math.isnan(r.get("aggregated_acc", math.nan))]
    if not rows:
        return
    rnd = [r["round"] for r in rows]
    gb = [r["bytes_total"] / 1e9 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, x, label in ((axes[0], rnd, "round"), (axes[1], gb, "total bytes sent (GB)")):
        ax.plot(x, [r["aggregated_acc"] for r in rows], label="aggregated model")
        ax.plot(x, [r["mean_local_acc"] for r in rows], label="mean local model", ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    epath.Path(path).write_bytes(buf.getvalue())
