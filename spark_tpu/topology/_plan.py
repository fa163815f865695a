"""The gossip plan: a pool of graphs compiled into static halo-exchange tables (DESIGN layer 1).

Clients are laid out in blocks: client q lives on device q // L in slot q % L, with L = ⌈Q/D⌉
slots per device (slots past Q hold phantom clients that never talk to anyone). For a device shift
δ ∈ {1..D−1}, device e sends to device (e + δ) mod D the rows its clients' neighbours there need;
one ``jax.lax.ppermute`` per shift that carries data. What device d holds after the exchange is
its *halo*: its own L rows, then m_δ rows per shift. Every client's neighbours are then indices
into the halo, so mixing is a local gather and weighted sum, and no device ever sees all models.

A ring over blocks needs shifts ±1 with one row each; a random graph needs up to D − 1 shifts. All
graphs of a time-varying pool share one table shape (the maxima over the pool), so picking the
round's graph is an array index inside the compiled program.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GossipPlan:
    """Static halo-exchange tables for a pool of G graphs on D devices (numpy, host side).

    Attributes:
      num_clients: real clients Q.
      num_devices: D.
      slots: L, clients per device (Q padded to L·D with phantom clients).
      shifts: device shifts δ with a ppermute, static.
      send: per shift, int32 [G, D, m_δ]: local slots device e sends to device e + δ.
      neighbor_halo: int32 [G, D, L, K]: halo row of each client's k-th neighbour (self if padding).
      neighbor_client: int32 [G, D, L, K]: global id of that neighbour (self if padding).
      neighbor_edge: int32 [G, D, L, K]: undirected edge id (``num_edges`` for padding).
      base_weight: float32 [G, D, L, K]: W_qr of the pool's matrix (0 for padding).
      base_self: float32 [G, D, L]: W_qq.
      edges: int32 [G, E, 2] endpoints of every undirected edge (padding rows are (0, 0)).
      edge_valid: bool [G, E].
      weight_rule: 'uniform', 'metropolis' or 'fixed': how weights are rebuilt when links fail.
    """

    num_clients: int
    num_devices: int
    slots: int
    shifts: tuple[int, ...]
    send: tuple[np.ndarray, ...]
    neighbor_halo: np.ndarray
    neighbor_client: np.ndarray
    neighbor_edge: np.ndarray
    base_weight: np.ndarray
    base_self: np.ndarray
    edges: np.ndarray
    edge_valid: np.ndarray
    weight_rule: str

    @property
    def pool_size(self) -> int:
        return self.neighbor_halo.shape[0]

    @property
    def max_degree(self) -> int:
        return self.neighbor_halo.shape[-1]

    @property
    def num_edges(self) -> int:
        return self.edges.shape[1]

    @property
    def halo_size(self) -> int:
        return self.slots + sum(s.shape[-1] for s in self.send)

    def device_tables(self) -> dict[str, np.ndarray]:
        """Per-device tables with the device axis first, ready to be sharded over the mesh."""
        tables = {
            "neighbor_halo": self.neighbor_halo,
            "neighbor_client": self.neighbor_client,
            "neighbor_edge": self.neighbor_edge,
            "base_weight": self.base_weight,
            "base_self": self.base_self,
        }
        tables.update({f"send_{i}": s for i, s in enumerate(self.send)})
        return {k: np.swapaxes(v, 0, 1) for k, v in tables.items()}


def _edge_list(w: np.ndarray) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    link = (w > 0) | (w.T > 0)
    np.fill_diagonal(link, False)
    u, v = np.nonzero(np.triu(link))
    ids = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(u, v))}
    ids.update({(b, a): i for (a, b), i in list(ids.items())})
    return np.stack([u, v], axis=1).astype(np.int32), ids


def build_plan(matrices: list[np.ndarray], num_devices: int, weight_rule: str) -> GossipPlan:
    """Compiles a pool of Q × Q mixing matrices into halo-exchange tables for ``num_devices``.

    Row q of each matrix lists whom client q listens to (W_qr > 0, r ≠ q).
    """
    q = matrices[0].shape[0]
    d = num_devices
    slots = -(-q // d)
    g = len(matrices)
    nbrs = [[np.flatnonzero((w[i] > 0) & (np.arange(q) != i)) for i in range(q)] for w in matrices]
    k = max(1, max(len(n) for pool in nbrs for n in pool))
    # Which remote rows each device needs from each shift, per graph.
    need = [[[set() for _ in range(d)] for _ in range(d)] for _ in range(g)]  # [g][dst][shift]
    for gi, pool in enumerate(nbrs):
        for i, ns in enumerate(pool):
            dst = i // slots
            for r in ns:
                shift = (dst - r // slots) % d
                if shift:
                    need[gi][dst][shift].add(int(r))
    sizes = {s: max(len(need[gi][dst][s]) for gi in range(g) for dst in range(d)) for s in range(1, d)}
    shifts = tuple(s for s in range(1, d) if sizes[s] > 0)
    send = []
    halo_row = [[dict() for _ in range(d)] for _ in range(g)]  # [g][dst] client -> halo row
    offset = slots
    for s in shifts:
        table = np.zeros((g, d, sizes[s]), dtype=np.int32)
        for gi in range(g):
            for dst in range(d):
                rows = sorted(need[gi][dst][s])
                src = (dst - s) % d
                table[gi, src, : len(rows)] = [r % slots for r in rows]
                for j, r in enumerate(rows):
                    halo_row[gi][dst][r] = offset + j
        send.append(table)
        offset += sizes[s]
    e_max = 1
    edge_lists = []
    for w in matrices:
        edges, ids = _edge_list(w)
        edge_lists.append((edges, ids))
        e_max = max(e_max, len(edges))
    shape = (g, d, slots, k)
    own = np.arange(d * slots, dtype=np.int32).reshape(d, slots)
    nb_halo = np.broadcast_to(np.arange(slots, dtype=np.int32)[None, None, :, None], shape).copy()
    nb_client = np.broadcast_to(own[None, :, :, None], shape).copy()
    nb_edge = np.full(shape, e_max, dtype=np.int32)
    base_w = np.zeros(shape, dtype=np.float32)
    base_self = np.ones((g, d, slots), dtype=np.float32)
    edges = np.zeros((g, e_max, 2), dtype=np.int32)
    valid = np.zeros((g, e_max), dtype=bool)
    for gi, (w, pool) in enumerate(zip(matrices, nbrs)):
        edges[gi, : len(edge_lists[gi][0])] = edge_lists[gi][0]
        valid[gi, : len(edge_lists[gi][0])] = True
        ids = edge_lists[gi][1]
        for i, ns in enumerate(pool):
            dst, slot = divmod(i, slots)
            base_self[gi, dst, slot] = w[i, i]
            for j, r in enumerate(ns):
                same = r // slots == dst
                nb_halo[gi, dst, slot, j] = r % slots if same else halo_row[gi][dst][int(r)]
                nb_client[gi, dst, slot, j] = r
                nb_edge[gi, dst, slot, j] = ids[(i, int(r))]
                base_w[gi, dst, slot, j] = w[i, r]
    return GossipPlan(
        num_clients=q, num_devices=d, slots=slots, shifts=shifts, send=tuple(send),
        neighbor_halo=nb_halo, neighbor_client=nb_client, neighbor_edge=nb_edge,
        base_weight=base_w, base_self=base_self, edges=edges, edge_valid=valid,
        weight_rule=weight_rule,
    )
