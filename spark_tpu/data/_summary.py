"""What a partition looks like: sizes, classes per client, label entropy (docs/data.md §4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._partition import Partition


def client_class_counts(partition: Partition, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64 [clients, num_classes]``: how many examples of each class each client holds."""
    clients = np.broadcast_to(
        np.arange(partition.indices.shape[0])[:, None], partition.indices.shape
    )
    flat = (
        clients[partition.mask] * num_classes
        + np.asarray(labels)[partition.indices[partition.mask]]
    )
    counts = np.bincount(flat, minlength=partition.indices.shape[0] * num_classes)
    return counts.reshape(-1, num_classes)


def label_entropy(counts: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row's label distribution (0 · log 0 = 0; an empty row gives 0)."""
    totals = counts.sum(axis=1, keepdims=True)
    p = counts / np.maximum(totals, 1)
    logs = np.log(np.where(p > 0, p, 1.0))
    return 0.0 - (p * logs).sum(axis=1)  # 0.0 - x, not -x: no negative zero for one-class rows


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}


def partition_summary(partition: Partition, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """JSON-serializable description of a partition (docs/data.md §4).

    Args:
      partition: the `Partition`.
      labels: the training labels its indices point into.
      num_classes: C.

    Returns:
      ``{"clients", "n_max", "distinct_examples", "sizes", "classes_per_client",
      "label_entropy"}``; the last three are ``{"min", "mean", "max"}`` over clients, entropy in
      nats (log C for a perfectly balanced client, 0 for a one-class client).

    Examples:
      >>> from spark_tpu.data import partition
      >>> y = np.repeat(np.arange(2, dtype=np.int32), 4)
      >>> s = partition_summary(partition(y, 2, method="shards", shards_per_client=1, seed=0), y, 2)
      >>> s["classes_per_client"], s["label_entropy"]["max"]
      ({'min': 1.0, 'mean': 1.0, 'max': 1.0}, 0.0)
    """
    counts = client_class_counts(partition, labels, num_classes)
    return {
        "clients": int(partition.indices.shape[0]),
        "n_max": int(partition.indices.shape[1]),
        "distinct_examples": int(np.unique(partition.indices[partition.mask]).size),
        "sizes": _stats(partition.sizes),
        "classes_per_client": _stats((counts > 0).sum(axis=1)),
        "label_entropy": _stats(label_entropy(counts)),
    }


def format_partition_summary(summary: dict[str, Any]) -> str:
    """One line for logs, e.g. ``300 clients | size 191/197.6/200 | classes 1/2.9/7 | ...``."""

    def triple(key: str, digits: int) -> str:
        s = summary[key]
        return f"{s['min']:.{digits}f}/{s['mean']:.{digits + 1}f}/{s['max']:.{digits}f}"

    return (
        f"{summary['clients']} clients | size {triple('sizes', 0)} | "
        f"classes {triple('classes_per_client', 0)} | "
        f"label entropy {triple('label_entropy', 2)} nats (min/mean/max) | "
        f"{summary['distinct_examples']} distinct examples"
    )
