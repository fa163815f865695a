"""A topology request turned into a pool of mixing matrices (docs/topologies.md §3).

A static topology is a pool of one. A time-varying topology (a fresh random graph every round) is a
pool of ``pool_size`` graphs drawn once at start-up; the compiled round picks one per round with
the round's key, which keeps every shape static. ``experiments/pool_size.py`` checks that the pool
size does not change results.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _graphs, _mixing
from ._graphs import GRAPHS, GraphSpec, register


def _custom(topology: "Topology", seed: int) -> np.ndarray:
    """The graph of ``--topology_file`` (a 0/1 adjacency, or a mixing matrix's support)."""
    del seed
    _, matrix = topology._custom_kind()
    adj = matrix > 0
    np.fill_diagonal(adj, False)
    if not _graphs.is_connected(adj | adj.T):
        raise ValueError(f"--topology_file={topology.path}: the graph is not connected.")
    return adj


register(GraphSpec("custom", _custom))
TOPOLOGIES = GRAPHS.names()  # the built-ins; see `register` for more


@dataclasses.dataclass(frozen=True)
class Topology:
    """What graph to run on, as the launcher flags describe it.

    Attributes:
      name: a name of ``GRAPHS`` (``ring_shuffled``, not listed, is a ring over a random client
        order), or an import path ``package.module:attribute``.
      clients: number of clients Q.
      degree: d for ``regular``.
      mixing: 'uniform' or 'metropolis' weights.
      time_varying: draw a fresh graph every round (random topologies only).
      pool_size: how many graphs a time-varying topology pre-draws.
      edge_probability: p for ``erdos_renyi``.
      torus_shape: (rows, cols) for ``torus``; default the most square factorization.
      path: file for ``custom`` (a 0/1 adjacency, or a row-stochastic mixing matrix).
      seed: graph seed.
    """

    name: str = "regular"
    clients: int = 300
    degree: int = 5
    mixing: str = "uniform"
    time_varying: bool = True
    pool_size: int = 64
    edge_probability: float = 0.05
    torus_shape: tuple[int, int] | None = None
    path: str | None = None
    seed: int = 0

    def __post_init__(self):
        spec = self.spec  # a one-line error for an unknown name
        if self.mixing not in _mixing.MIXING_RULES:
            raise ValueError(f"--mixing={self.mixing}: choose one of {sorted(_mixing.MIXING_RULES)}.")
        if self.time_varying and not spec.random:
            random = ", ".join(name for name, s in GRAPHS.items() if s.random)
            raise ValueError(
                f"--time_varying with --topology={self.name}: only random topologies "
                f"({random}) can be redrawn every round; pass --notime_varying."
            )
        if self.pool_size < 1:
            raise ValueError(f"--graph_pool={self.pool_size}: must be ≥ 1.")
        if self.name == "custom" and not self.path:
            raise ValueError("--topology=custom needs --topology_file=PATH (.npy or text matrix).")

    @property
    def weight_rule(self) -> str:
        """'uniform', 'metropolis', or 'fixed' (a user-given mixing matrix)."""
        return self._custom_kind()[0]

    def _custom_kind(self) -> tuple[str, np.ndarray | None]:
        if self.name != "custom":
            return self.mixing, None
        matrix = _graphs.load_matrix(self.path, self.clients)
        off = matrix - np.diag(np.diag(matrix))
        if np.isin(matrix, (0.0, 1.0)).all() and np.allclose(off, off.T) and not np.diag(matrix).any():
            return self.mixing, matrix.astype(bool)
        _mixing.check_row_stochastic(matrix)
        return "fixed", matrix

    @property
    def spec(self) -> GraphSpec:
        """The registered graph constructor (`GRAPHS`)."""
        return GRAPHS.get(self.name)

    def adjacency(self, draw: int = 0) -> np.ndarray:
        """The ``draw``-th graph of this topology (random graphs seeded by (seed, draw))."""
        n = self.clients
        adj = np.asarray(self.spec.build(self, self.seed * 100_003 + draw))
        if adj.shape != (n, n) or (adj.dtype != bool and not np.isin(adj, (0, 1)).all()):
            raise ValueError(f"--topology={self.name}: the graph is a {adj.dtype} {adj.shape} "
                             f"matrix; expected a 0/1 adjacency ({n}, {n}) for --clients={n}.")
        adj = adj.astype(bool)
        if (adj != adj.T).any() or adj.diagonal().any():
            raise ValueError(f"--topology={self.name}: the adjacency must be symmetric with a zero "
                             "diagonal.")
        return adj

    def mixing_matrices(self) -> list[np.ndarray]:
        """The pool of mixing matrices (float64), one per pre-drawn graph."""
        count = self.pool_size if self.time_varying else 1
        rule, matrix = self._custom_kind()
        if rule == "fixed":
            return [matrix]
        return [_mixing.mixing_matrix(self.adjacency(i), rule) for i in range(count)]

    def summary(self) -> dict:
        """JSON-ready description, with the spectral gap of the (first) mixing matrix."""
        w = self.mixing_matrices()[0]
        degrees = ((w > 0).sum(axis=1) - 1).astype(int)
        return {
            "topology": self.name,
            "mixing": self.weight_rule,
            "time_varying": self.time_varying,
            "pool_size": self.pool_size if self.time_varying else 1,
            "degree_min": int(degrees.min()),
            "degree_max": int(degrees.max()),
            "spectral_gap": _mixing.spectral_gap(w),
        }


GRAPH_ORDERS = ("cycle", "random")


@dataclasses.dataclass(frozen=True, eq=False)
class GraphSequence:
    """Your own graphs (docs/extending.md §5): one matrix, or a sequence of them.

    Each matrix is a 0/1 symmetric adjacency (zero diagonal; weighted by ``mixing``) or a
    row-stochastic mixing matrix used as given; all of one kind and one size. With ``order="cycle"``
    round r uses graph r mod G; with ``"random"`` each round draws one (seeded, like a
    time-varying built-in topology). Every graph may be disconnected (e.g. one-peer graphs), but
    their union must be connected.

    Examples:
      >>> ring = np.roll(np.eye(4, dtype=int), 1, 1) + np.roll(np.eye(4, dtype=int), -1, 1)
      >>> g = GraphSequence([ring])
      >>> g.clients, g.weight_rule, g.mixing_matrices()[0][0].tolist()
      (4, 'uniform', [0.3333333333333333, 0.3333333333333333, 0.0, 0.3333333333333333])
    """

    matrices: tuple
    mixing: str = "uniform"
    order: str = "cycle"
    name: str = "custom"
    torus_shape = None

    def __post_init__(self):
        mats = [np.asarray(m, dtype=np.float64) for m in (
            [self.matrices] if np.ndim(self.matrices) == 2 else self.matrices)]
        if not mats:
            raise ValueError("graph: give at least one matrix.")
        n = mats[0].shape[0]
        for i, m in enumerate(mats):
            if m.shape != (n, n):
                raise ValueError(f"graph {i}: expected a square {n}×{n} matrix, got {m.shape}.")
        kinds = {self._is_adjacency(m) for m in mats}
        if len(kinds) > 1:
            raise ValueError("graph: mix of 0/1 adjacencies and mixing matrices; use one kind.")
        if kinds == {False}:
            for m in mats:
                _mixing.check_row_stochastic(m)
        if self.mixing not in _mixing.MIXING_RULES:
            raise ValueError(f"--mixing={self.mixing}: choose one of {sorted(_mixing.MIXING_RULES)}.")
        if self.order not in GRAPH_ORDERS:
            raise ValueError(f"graph order {self.order!r}: choose one of {', '.join(GRAPH_ORDERS)}.")
        union = np.zeros((n, n), bool)
        for m in mats:
            union |= (m > 0) | (m.T > 0)
        np.fill_diagonal(union, False)
        if not _graphs.is_connected(union):
            raise ValueError("graph: the union of the graphs is not connected; some clients "
                             "would never exchange anything.")
        object.__setattr__(self, "matrices", tuple(mats))

    @staticmethod
    def _is_adjacency(m: np.ndarray) -> bool:
        return bool(np.isin(m, (0.0, 1.0)).all() and np.allclose(m, m.T) and not np.diag(m).any())

    @property
    def clients(self) -> int:
        return self.matrices[0].shape[0]

    @property
    def time_varying(self) -> bool:
        return len(self.matrices) > 1

    @property
    def weight_rule(self) -> str:
        return self.mixing if self._is_adjacency(self.matrices[0]) else "fixed"

    def mixing_matrices(self) -> list[np.ndarray]:
        if self.weight_rule == "fixed":
            return list(self.matrices)
        return [_mixing.mixing_matrix(m.astype(bool), self.mixing) for m in self.matrices]

    def summary(self) -> dict:
        """As `Topology.summary` (the spectral gap is the first graph's)."""
        w = self.mixing_matrices()[0]
        degrees = ((w > 0).sum(axis=1) - 1).astype(int)
        return {
            "topology": self.name, "mixing": self.weight_rule, "time_varying": self.time_varying,
            "pool_size": len(self.matrices), "order": self.order,
            "degree_min": int(degrees.min()), "degree_max": int(degrees.max()),
            "spectral_gap": _mixing.spectral_gap(w),
        }
