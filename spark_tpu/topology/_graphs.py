"""Communication graphs (docs/topologies.md §1) and the registry `--topology` names them by.

Every constructor returns a symmetric boolean adjacency matrix without self-loops. Errors name the
launcher flag that carries the offending value, so a bad request fails at start-up with a message
a user can act on. Each built-in is registered in `GRAPHS` next to its function; a new graph is
one function and one ``register(GraphSpec(...))`` (docs/extending.md §5).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np

from spark_tpu.registry import Registry

Adjacency = np.ndarray  # bool [n, n], symmetric, zero diagonal


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """A graph ``--topology`` can name.

    Attributes:
      name: what ``--topology`` calls it.
      build: ``(topology, seed) -> Adjacency``: the graph for a `Topology` (its ``clients``,
        ``degree``, ``edge_probability``, ``torus_shape``, ``path``) and a draw's seed.
      random: drawn from the seed, so ``--time_varying`` may redraw it every round.
      hidden: accepted but not listed (in ``--help`` and error messages).
    """

    name: str
    build: Callable[[Any, int], Adjacency]
    random: bool = False
    hidden: bool = False


def _as_spec(path: str, obj) -> GraphSpec:
    """``obj`` (a GraphSpec or a ``(topology, seed)`` function) as a spec named ``path``."""
    if isinstance(obj, GraphSpec):
        return dataclasses.replace(obj, name=path)
    if callable(obj):
        return GraphSpec(path, obj)
    raise ValueError(f"--topology={path}: is a {type(obj).__name__}, not a GraphSpec or a "
                     "function (topology, seed) -> adjacency.")


GRAPHS: Registry[GraphSpec] = Registry("topology", "topology", convert=_as_spec)


def register(spec: GraphSpec, *, replace: bool = False) -> GraphSpec:
    """Makes ``spec`` available as ``--topology=spec.name`` and to `spark_tpu.simulate`."""
    return GRAPHS.register(spec.name, spec, replace=replace, hidden=spec.hidden)


def _check_clients(n: int, minimum: int = 2) -> None:
    if n < minimum:
        raise ValueError(f"--clients={n}: a graph needs at least {minimum} clients.")


def _from_networkx(graph: nx.Graph, n: int) -> Adjacency:
    adj = nx.to_numpy_array(graph, nodelist=range(n), dtype=bool)
    np.fill_diagonal(adj, False)
    return adj


def ring(n: int) -> Adjacency:
    """Cycle graph: client q talks to q ± 1 (mod n).

    Examples:
      >>> adj = ring(5)
      >>> adj.dtype, adj.sum(axis=1).tolist(), np.flatnonzero(adj[0]).tolist()
      (dtype('bool'), [2, 2, 2, 2, 2], [1, 4])
    """
    _check_clients(n)
    adj = np.zeros((n, n), dtype=bool)
    idx = np.arange(n)
    adj[idx, (idx + 1) % n] = True
    adj[(idx + 1) % n, idx] = True
    np.fill_diagonal(adj, False)
    return adj


register(GraphSpec("ring", lambda t, seed: ring(t.clients)))


def _ring_shuffled(topology, seed: int) -> Adjacency:
    """A ring over a random client order (programmatic use; not listed)."""
    order = np.argsort(np.random.default_rng(seed).permutation(topology.clients))
    return ring(topology.clients)[np.ix_(order, order)]


register(GraphSpec("ring_shuffled", _ring_shuffled, random=True, hidden=True))


def star(n: int) -> Adjacency:
    """Star graph: client 0 is the hub."""
    _check_clients(n)
    adj = np.zeros((n, n), dtype=bool)
    adj[0, 1:] = adj[1:, 0] = True
    return adj


register(GraphSpec("star", lambda t, seed: star(t.clients)))


def complete(n: int) -> Adjacency:
    """Complete graph."""
    _check_clients(n)
    return ~np.eye(n, dtype=bool)


register(GraphSpec("complete", lambda t, seed: complete(t.clients)))


def torus(rows: int, cols: int, n: int | None = None) -> Adjacency:
    """2-D torus of ``rows × cols`` clients, client q at (q // cols, q % cols)."""
    if n is not None and rows * cols != n:
        raise ValueError(
            f"--torus_shape={rows}x{cols} has {rows * cols} clients but --clients={n}; "
            "pick rows and cols whose product is the client count."
        )
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise ValueError(f"--torus_shape={rows}x{cols}: both sizes must be ≥ 1 and the product ≥ 2.")
    n = rows * cols
    adj = np.zeros((n, n), dtype=bool)
    for q in range(n):
        r, c = divmod(q, cols)
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            j = ((r + dr) % rows) * cols + (c + dc) % cols
            if j != q:
                adj[q, j] = adj[j, q] = True
    return adj


def default_torus_shape(n: int) -> tuple[int, int]:
    """The most square factorization rows × cols = n (rows ≤ cols)."""
    rows = int(np.floor(np.sqrt(n)))
    while n % rows:
        rows -= 1
    return rows, n // rows


register(GraphSpec(
    "torus", lambda t, seed: torus(*(t.torus_shape or default_torus_shape(t.clients)), t.clients)
))


def random_regular(n: int, degree: int, seed: int) -> Adjacency:
    """Uniformly random connected ``degree``-regular graph (redrawn until connected).

    Examples:
      >>> adj = random_regular(8, 3, seed=0)
      >>> adj.sum(axis=1).tolist(), bool((adj == adj.T).all()), is_connected(adj)
      ([3, 3, 3, 3, 3, 3, 3, 3], True, True)
      >>> random_regular(7, 5, seed=0)
      Traceback (most recent call last):
      ...
      ValueError: --degree=5 with --clients=7: n·d = 35 is odd, so no d-regular graph exists; ...
    """
    _check_clients(n)
    if degree < 1 or degree >= n:
        raise ValueError(
            f"--degree={degree} with --clients={n}: a d-regular graph needs 1 ≤ d ≤ clients − 1."
        )
    if (n * degree) % 2:
        raise ValueError(
            f"--degree={degree} with --clients={n}: n·d = {n * degree} is odd, so no d-regular "
            "graph exists; make --clients or --degree even."
        )
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        graph = nx.random_regular_graph(degree, n, seed=int(rng.integers(2**31)))
        if degree == 1 and n == 2 or nx.is_connected(graph):
            return _from_networkx(graph, n)
    raise ValueError(f"--degree={degree}: no connected {degree}-regular graph on {n} clients found.")


register(GraphSpec(
    "regular", lambda t, seed: random_regular(t.clients, t.degree, seed), random=True
))


def erdos_renyi(n: int, p: float, seed: int) -> Adjacency:
    """Erdős–Rényi G(n, p), redrawn until connected (docs/topologies.md §1)."""
    _check_clients(n)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"--edge_probability={p}: must be in (0, 1].")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        upper = np.triu(rng.random((n, n)) < p, k=1)
        adj = upper | upper.T
        if is_connected(adj):
            return adj
    raise ValueError(
        f"--edge_probability={p} with --clients={n}: 1000 draws gave no connected graph; "
        f"use p above ln(n)/n ≈ {np.log(n) / n:.3f}."
    )


register(GraphSpec(
    "erdos_renyi", lambda t, seed: erdos_renyi(t.clients, t.edge_probability, seed), random=True
))


def exponential(n: int) -> Adjacency:
    """Exponential graph: i ↔ i ± 2^m (mod n) for every power of two below n."""
    _check_clients(n)
    adj = np.zeros((n, n), dtype=bool)
    idx = np.arange(n)
    hop = 1
    while hop < n:
        adj[idx, (idx + hop) % n] = True
        adj[(idx + hop) % n, idx] = True
        hop *= 2
    np.fill_diagonal(adj, False)
    return adj


register(GraphSpec("exponential", lambda t, seed: exponential(t.clients)))


def load_matrix(path: str, n: int) -> np.ndarray:
    """Reads a user-given adjacency or mixing matrix (.npy, or text readable by np.loadtxt)."""
    if not os.path.exists(path):
        raise ValueError(f"--topology_file={path}: no such file.")
    try:
        matrix = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=None)
    except Exception as e:  # noqa: BLE001 - any parse failure is a user error here
        raise ValueError(f"--topology_file={path}: cannot read a matrix ({e}).") from e
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (n, n):
        raise ValueError(
            f"--topology_file={path}: matrix has shape {matrix.shape}, expected ({n}, {n}) for "
            f"--clients={n}."
        )
    return matrix


def is_connected(adj: Adjacency) -> bool:
    """Breadth-first connectivity check."""
    n = adj.shape[0]
    seen = np.zeros(n, dtype=bool)
    seen[0] = True
    frontier = np.array([0])
    while frontier.size:
        nxt = np.flatnonzero(adj[frontier].any(axis=0) & ~seen)
        seen[nxt] = True
        frontier = nxt
    return bool(seen.all())
