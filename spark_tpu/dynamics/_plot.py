"""Predicted against observed losses: a summary figure (mean and spread over clients, observed as
markers, predictions as lines, the error stated) and per-agent curves in the style of the seed's
figures 1–2."""

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
        for style, width, curves, _ in styles:
            if curves is not None:
                ax.plot(t, curves[:, q], style, color=f"C{q % 10}", lw=width)
    ax.set_xlabel("iteration")
    ax.set_ylabel("local MSE loss (1/2D)‖f − y‖²")
    ax.set_title(title or f"{result['algorithm'].upper()}, η = {result['eta']:g}")
    if legend:  # one colour per agent, so the legend shows the line styles in grey
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls=style, lw=width, color="0.3", label=label)
                   for style, width, curves, label in styles if curves is not None]
        ax.legend(handles=handles, fontsize=7)


def _every(n: int, markers: int = 25) -> slice:
    return slice(None, None, max(1, n // markers))


def plot_prediction(
    result: dict[str, Any], path: str, observed: np.ndarray | None = None, title: str = ""
) -> None:
    """Writes a PNG that compares prediction and observation at a glance.

    Left: the loss over iterations, mean over clients with the min–max spread shaded; observed
    as markers, the discrete prediction (eq. 7) as a solid line, the flow (eq. 14) dashed; the
    maximum relative errors are written in the panel. Right (with ``observed``): the relative
    error |predicted − observed| / observed, worst client per iteration, on a log scale.

    Args:
        result: a dict from `predict` or `predict_linearized`.
        path: the PNG file to write.
        observed: optional observed losses ``[T+1, Q]`` (e.g. ``simulate(...)["loss"]``).
        title: the figure title (default: algorithm, η and the number of clients).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(result["iterations"])
    predicted = [("discrete (eq. 7)", "-", "C0", np.asarray(result["loss_discrete"]))]
    if "loss_flow" in result:
        predicted.append(("flow (eq. 14)", "--", "C1", np.asarray(result["loss_flow"])))
    clients = predicted[0][3].shape[1]
    panels = 2 if observed is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.0), squeeze=False)
    ax = axes[0, 0]
    if observed is not None:
        obs = np.asarray(observed)
        ax.fill_between(t, obs.min(1), obs.max(1), color="0.85", label="observed, min–max")
        every = _every(len(t))
        ax.plot(t[every], obs.mean(1)[every], "o", ms=4, mfc="none", color="k",
                label="observed, mean")
    for label, style, colour, curves in predicted:
        if observed is None:
            ax.fill_between(t, curves.min(1), curves.max(1), color=colour, alpha=0.15)
        ax.plot(t, curves.mean(1), style, color=colour, lw=1.6, label=f"predicted, {label}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"local MSE loss, mean over {clients} clients")
    ax.legend(fontsize=8, loc="upper right")
    if observed is not None:
        errors = [
            f"{label.split()[0]}: {max_relative_error(curves, observed):.1e}"
            for label, _, _, curves in predicted
        ]
        ax.text(0.03, 0.04, "max relative error\n" + "\n".join(errors),
                transform=ax.transAxes, fontsize=8, va="bottom",
                bbox=dict(boxstyle="round", fc="white", ec="0.7"))
        err_ax = axes[0, 1]
        for label, style, colour, curves in predicted:
            rel = np.abs(curves - observed) / np.abs(observed)
            err_ax.semilogy(t, np.maximum(rel.max(1), 1e-17), style, color=colour, lw=1.4,
                            label=label)
        err_ax.set_xlabel("iteration")
        err_ax.set_ylabel("|predicted − observed| / observed, worst client")
        err_ax.legend(fontsize=8)
    fig.suptitle(title or f"{result['algorithm'].upper()}, η = {result['eta']:g}, "
                 f"{clients} clients: predicted against observed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
