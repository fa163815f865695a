"""Per-agent loss curves in the style of the seed's figures 1–2: observed solid, predicted dashed."""

from __future__ import annotations

from typing import Any

import numpy as np


def max_relative_error(predicted: np.ndarray, observed: np.ndarray) -> float:
    """max over iterations and agents of |predicted − observed| / |observed|."""
    predicted, observed = np.asarray(predicted), np.asarray(observed)
    return float(np.max(np.abs(predicted - observed) / np.abs(observed)))


def draw_prediction(
    ax, result: dict[str, Any], observed: np.ndarray | None = None, title: str = ""
) -> None:
    """Draws one setting onto a matplotlib axis (flow dashed, discrete dotted, observed solid)."""
    colors = [f"C{i % 10}" for i in range(result["loss_discrete"].shape[1])]
    t = result["iterations"]
    for q, color in enumerate(colors):
        if observed is not None:
            ax.plot(t, observed[:, q], color=color, lw=1.6, label="observed" if q == 0 else None)
        if "loss_flow" in result:
            ax.plot(
                t,
                result["loss_flow"][:, q],
                "--",
                color=color,
                lw=1.2,
                label="predicted (flow, eq. 14)" if q == 0 else None,
            )
        ax.plot(
            t,
            result["loss_discrete"][:, q],
            ":",
            color=color,
            lw=1.2,
            label="predicted (discrete, eq. 7)" if q == 0 else None,
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("local MSE loss (1/2D)‖f − y‖²")
    ax.set_title(title or f"{result['algorithm'].upper()}, η = {result['eta']:g}")
    ax.legend(fontsize=7)


def plot_prediction(
    result: dict[str, Any], path: str, observed: np.ndarray | None = None, title: str = ""
) -> None:
    """Writes a PNG of every agent's predicted (and, if given, observed) loss curve.

    Args:
        result: a dict from `predict` or `predict_linearized`.
        path: the PNG file to write.
        observed: optional observed losses ``[T+1, Q]`` (e.g. ``simulate(...)["loss"]``).
        title: the axis title (default: algorithm and η).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    draw_prediction(ax, result, observed, title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
