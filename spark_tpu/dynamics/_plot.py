"""Per-agent loss curves in the style of the seed's figures 1–2: observed solid, predicted dashed."""

from __future__ import annotations

from typing import Any

import numpy as np


def max_relative_error(predicted: np.ndarray, observed: np.ndarray) -> float:
    """max over iterations and agents of |predicted − observed| / |observed|."""
    predicted, observed = np.asarray(predicted), np.asarray(observed)
    return float(np.max(np.abs(predicted - observed) / np.abs(observed)))


def draw_prediction(
    ax,
    result: dict[str, Any],
    observed: np.ndarray | None = None,
    title: str = "",
    legend: bool = True,
) -> None:
    """Draws one setting onto a matplotlib axis: per agent (one colour each) the observed loss
    solid, the flow prediction (eq. 14) dashed, the discrete prediction (eq. 7) dotted."""
    t = result["iterations"]
    styles = [("-", 1.6, observed, "observed")]
    if "loss_flow" in result:
        styles.append(("--", 1.2, result["loss_flow"], "predicted (flow, eq. 14)"))
    styles.append((":", 1.2, result["loss_discrete"], "predicted (discrete, eq. 7)"))
    for q in range(result["loss_discrete"].shape[1]):
        for style, width, curves, label in styles:
            if curves is not None:
                ax.plot(
                    t,
                    curves[:, q],
                    style,
                    color=f"C{q % 10}",
                    lw=width,
                    label=label if q == 0 else None,
                )
    ax.set_xlabel("iteration")
    ax.set_ylabel("local MSE loss (1/2D)‖f − y‖²")
    ax.set_title(title or f"{result['algorithm'].upper()}, η = {result['eta']:g}")
    if legend:
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
