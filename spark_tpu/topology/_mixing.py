"""Mixing rules, mixing matrices and their spectral gap (docs/topologies.md §2, §4).

Each rule is written once, against an array namespace ``xp`` (``numpy`` or ``jax.numpy``), over
every client's neighbour slots (`Links`). The host builds a pool's dense W with it (one slot per
client, `mixing_matrix`); the compiled round rebuilds the round's weights from the surviving links
with the same function on its K padded slots (`spark_tpu.gossip.round_graph`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

NOT_STOCHASTIC = (
    "{flag}: the mixing matrix must be non-negative with rows summing to 1 and a positive diagonal "
    "(row {row}: sum {total:.6g}, diagonal {diag:.6g}, min {low:.6g}). Normalize each row, or give "
    "a 0/1 adjacency and choose --mixing."
)
MIXING_RULES = ("uniform", "metropolis")  # --mixing; 'fixed' is a given matrix (--topology_file)


class Links(NamedTuple):
    """Every client's neighbour slots (K of them; K = Q for a dense matrix), numpy or JAX arrays.

    Attributes:
      alive: bool [..., K]: the slot holds a neighbour whose link carries traffic.
      degree: float [...]: the client's number of alive links.
      neighbor_degree: float [..., K]: each slot's neighbour's number of alive links.
      base_weight: float [..., K]: W_qr of the given matrix ('fixed' only, else unused).
      base_self: float [...]: W_qq of the given matrix ('fixed' only, else unused).
    """

    alive: Any
    degree: Any
    neighbor_degree: Any
    base_weight: Any = None
    base_self: Any = None


def _uniform(xp, links: Links):
    """W_qj = 1/(deg_q + 1) over the closed neighbourhood (what NTK-DFL does)."""
    weight = xp.where(links.alive, 1.0 / (1.0 + links.degree[..., None]), 0.0)
    return weight, 1.0 / (1.0 + links.degree)


def _metropolis(xp, links: Links):
    """W_qj = 1/(1 + max(deg_q, deg_j)) on links, W_qq = 1 − Σ_j W_qj."""
    larger = xp.maximum(links.degree[..., None], links.neighbor_degree)
    weight = xp.where(links.alive, 1.0 / (1.0 + larger), 0.0)
    return weight, 1.0 - xp.sum(weight, axis=-1)


def _fixed(xp, links: Links):
    """The given W on alive links; the weight of every dead link moves onto the diagonal."""
    weight = xp.where(links.alive, links.base_weight, 0.0)
    return weight, links.base_self + xp.sum(links.base_weight - weight, axis=-1)


WEIGHT_RULES = {"uniform": _uniform, "metropolis": _metropolis, "fixed": _fixed}


def link_weights(rule: str, links: Links, xp=np) -> tuple[Any, Any]:
    """(W_qj per slot [..., K], W_qq [...]) under ``rule`` (docs/topologies.md §2, §4).

    ``xp`` is the array namespace of ``links`` (``numpy`` on the host, ``jax.numpy`` inside the
    compiled round); results keep the dtype of the degrees (or of the base weights for 'fixed').
    """
    if rule not in WEIGHT_RULES:
        raise ValueError(f"unknown weight rule {rule!r}: choose one of {sorted(WEIGHT_RULES)}.")
    return WEIGHT_RULES[rule](xp, links)


def mixing_matrix(adj: np.ndarray, rule: str, base: np.ndarray | None = None) -> np.ndarray:
    """The dense float64 mixing matrix of a graph under a rule (docs/topologies.md §2, §4).

    Args:
      adj: [Q, Q] 0/1 adjacency (the diagonal is ignored): the links that are alive.
      rule: 'uniform' or 'metropolis'; or 'fixed' with ``base``, a row-stochastic [Q, Q] matrix
        whose weights are kept on ``adj``'s links and moved onto the diagonal elsewhere (what a
        round does after link failures).
    """
    if rule == "fixed" and base is None:
        raise ValueError("mixing_matrix(adj, 'fixed') needs base=, the given mixing matrix.")
    if rule not in WEIGHT_RULES:
        raise ValueError(f"--mixing={rule}: choose one of {sorted(MIXING_RULES)}.")
    alive = np.array(adj, dtype=bool)
    np.fill_diagonal(alive, False)
    degree = alive.sum(axis=1).astype(np.float64)
    links = Links(alive, degree, np.broadcast_to(degree, alive.shape))
    if base is not None:
        base = np.asarray(base, dtype=np.float64)
        links = links._replace(base_weight=base - np.diag(np.diag(base)), base_self=np.diag(base))
    weight, self_weight = link_weights(rule, links)
    w = np.array(weight, dtype=np.float64)
    np.fill_diagonal(w, self_weight)
    return w


def uniform_weights(adj: np.ndarray) -> np.ndarray:
    """W_qj = 1/(|N_q| + 1) over the closed neighbourhood (what NTK-DFL does)."""
    return mixing_matrix(adj, "uniform")


def metropolis_hastings(adj: np.ndarray) -> np.ndarray:
    """W_qj = 1/(1 + max(deg_q, deg_j)) on edges, W_qq = 1 − Σ_j W_qj (symmetric, doubly stochastic).

    Examples:
      On a star the hub (client 0, degree 3) gives each leaf 1/4 and keeps 1/4; a leaf keeps 3/4:

      >>> from spark_tpu.topology import star
      >>> w = metropolis_hastings(star(4))
      >>> w[0].tolist(), w[1].tolist()
      ([0.25, 0.25, 0.25, 0.25], [0.25, 0.75, 0.0, 0.0])
      >>> np.allclose(w, w.T) and np.allclose(w.sum(axis=0), 1.0)
      True
    """
    return mixing_matrix(adj, "metropolis")


def check_row_stochastic(w: np.ndarray, flag: str = "--topology_file", atol: float = 1e-6) -> None:
    """Raises ValueError unless W is row-stochastic with a positive diagonal."""
    rows = w.sum(axis=1)
    bad = np.flatnonzero(
        (np.abs(rows - 1.0) > atol) | (np.diag(w) <= 0) | (w.min(axis=1) < -atol)
    )
    if bad.size:
        r = int(bad[0])
        raise ValueError(
            NOT_STOCHASTIC.format(
                flag=flag, row=r, total=rows[r], diag=w[r, r], low=w[r].min()
            )
        )


def spectral_gap(w: np.ndarray) -> float:
    """1 − |λ_2(W)|, the gap between the largest and second-largest eigenvalue moduli.

    Examples:
      A 4-cycle with weight 1/3 on each closed-neighbourhood entry has eigenvalues
      1/3 + 2/3·cos(2πk/4) = 1, 1/3, −1/3, 1/3, so the gap is 2/3; a complete graph mixes in
      one step (gap 1):

      >>> from spark_tpu.topology import complete, ring
      >>> round(spectral_gap(uniform_weights(ring(4))), 6)
      0.666667
      >>> round(spectral_gap(uniform_weights(complete(5))), 6)
      1.0
    """
    moduli = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(1.0 - moduli[1]) if moduli.size > 1 else 1.0
