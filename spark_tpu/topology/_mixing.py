"""Mixing matrices and their spectral gap (docs/topologies.md §2)."""

from __future__ import annotations

import numpy as np

NOT_STOCHASTIC = (
    "{flag}: the mixing matrix must be non-negative with rows summing to 1 and a positive diagonal "
    "(row {row}: sum {total:.6g}, diagonal {diag:.6g}, min {low:.6g}). Normalize each row, or give "
    "a 0/1 adjacency and choose --mixing."
)


def uniform_weights(adj: np.ndarray) -> np.ndarray:
    """W_qj = 1/(|N_q| + 1) over the closed neighbourhood (what NTK-DFL does)."""
    closed = adj.astype(np.float64) + np.eye(adj.shape[0])
    return closed / closed.sum(axis=1, keepdims=True)


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
    deg = adj.sum(axis=1)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


MIXING_RULES = {"uniform": uniform_weights, "metropolis": metropolis_hastings}


def mixing_matrix(adj: np.ndarray, rule: str) -> np.ndarray:
    """The mixing matrix of a graph under a named rule ('uniform' or 'metropolis')."""
    if rule not in MIXING_RULES:
        raise ValueError(f"--mixing={rule}: choose one of {sorted(MIXING_RULES)}.")
    return MIXING_RULES[rule](adj)


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
