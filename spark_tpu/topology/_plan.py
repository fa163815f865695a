"""The gossip plan: a pool of graphs compiled into static halo-exchange tables (docs/topologies.md §6).

Clients sit on a device mesh by a ``DeviceLayout``: position p of the client axis is slot p % L of
flattened device p // L (row-major over the mesh axes) and holds client ``placement[p]``; slots past
Q hold phantom clients that never talk to anyone. The flat layout is a 1-D mesh with client q at
position q; a torus can instead be tiled on a 2-D mesh (``_layout.py``). For a device offset δ on
the mesh (a vector, one entry per mesh axis, mod the mesh shape), device e sends to device e + δ
the rows its clients' neighbours there need: one ``jax.lax.ppermute`` per offset that carries
data, along a single mesh axis when δ has one non-zero entry. What device d holds after the
exchange is its *halo*: its own L rows, then m_δ rows per offset. Every client's neighbours are
then indices into the halo, so mixing is a local gather and weighted sum, and no device ever sees
all models.

A ring over blocks needs shifts ±1 with one row each; a torus tiled on an R × C mesh needs only the
single-axis offsets (±1, 0) and (0, ±1); a random graph needs up to D − 1 offsets. All graphs of a
time-varying pool share one table shape (the maxima over the pool), so picking the round's graph is
an array index inside the compiled program.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import numpy as np

from ._layout import DeviceLayout, flat_layout


class DeviceTables(NamedTuple):
    """A plan's per-device tables with the device axis first, sharded over the mesh (a pytree).

    Host side they are numpy arrays ``[D, G, ...]``; inside ``shard_map`` each device holds its
    slice ``[1, G, ...]``, from which `gossip.round_graph` takes the round's graph
    (docs/topologies.md §6).

    Attributes:
      neighbor_halo: int32 [D, G, L, K]: halo row of each client's k-th neighbour (self if padding).
      neighbor_client: int32 [D, G, L, K]: global id of that neighbour (self if padding).
      neighbor_edge: int32 [D, G, L, K]: undirected edge id (``num_edges`` for padding).
      base_weight: float32 [D, G, L, K]: W_qr of the pool's matrix (0 for padding).
      base_self: float32 [D, G, L]: W_qq.
      send: per offset of ``StaticPlan.shifts``, int32 [D, G, m_δ]: local slots to send.
    """

    neighbor_halo: Any
    neighbor_client: Any
    neighbor_edge: Any
    base_weight: Any
    base_self: Any
    send: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class StaticPlan:
    """The static (hashable, Python) part of a plan that the compiled round needs.

    Attributes:
      shifts: device offsets δ (one entry per mesh axis), one ``ppermute`` each, in the order of
        ``DeviceTables.send``.
      mesh_shape: (D,) for the flat client axis, (R, C) for a 2-D mesh.
      weight_rule: 'uniform', 'metropolis' or 'fixed': how weights are rebuilt when links fail
        (docs/topologies.md §4).
      num_positions: L·D, the client axis padded with phantom clients.
    """

    shifts: tuple[tuple[int, ...], ...]
    mesh_shape: tuple[int, ...]
    weight_rule: str
    num_positions: int


@dataclasses.dataclass(frozen=True)
class GossipPlan:
    """Static halo-exchange tables for a pool of G graphs on D devices (numpy, host side).

    Attributes:
      num_clients: real clients Q.
      num_devices: D.
      slots: L, clients per device (Q padded to L·D with phantom clients).
      shifts: device offsets δ (one entry per mesh axis) with a ppermute, static.
      send: per offset, int32 [G, D, m_δ]: local slots device e sends to device e + δ.
      neighbor_halo: int32 [G, D, L, K]: halo row of each client's k-th neighbour (self if padding).
      neighbor_client: int32 [G, D, L, K]: global id of that neighbour (self if padding).
      neighbor_edge: int32 [G, D, L, K]: undirected edge id (``num_edges`` for padding).
      base_weight: float32 [G, D, L, K]: W_qr of the pool's matrix (0 for padding).
      base_self: float32 [G, D, L]: W_qq.
      edges: int32 [G, E, 2] endpoints of every undirected edge (padding rows are (0, 0)).
      edge_valid: bool [G, E].
      weight_rule: 'uniform', 'metropolis' or 'fixed': how weights are rebuilt when links fail.
      mesh_shape: (D,) for the flat client axis, (R, C) for a 2-D mesh.
      placement: int32 [L·D]: the client id at each position of the client axis.
      order: how a round picks its graph from the pool: "random" (drawn with the round's key) or
        "cycle" (round r uses graph r mod G: a user's graph sequence).
    """

    num_clients: int
    num_devices: int
    slots: int
    shifts: tuple[tuple[int, ...], ...]
    send: tuple[np.ndarray, ...]
    neighbor_halo: np.ndarray
    neighbor_client: np.ndarray
    neighbor_edge: np.ndarray
    base_weight: np.ndarray
    base_self: np.ndarray
    edges: np.ndarray
    edge_valid: np.ndarray
    weight_rule: str
    mesh_shape: tuple[int, ...] = ()
    placement: np.ndarray | None = None
    order: str = "random"

    def __post_init__(self):
        if not self.mesh_shape:
            object.__setattr__(self, "mesh_shape", (self.num_devices,))
        if self.placement is None:
            placement = np.arange(self.slots * self.num_devices, dtype=np.int32)
            object.__setattr__(self, "placement", placement)

    @property
    def single_axis(self) -> bool:
        """True when every exchange is a ppermute along one mesh axis."""
        return all(sum(v != 0 for v in s) == 1 for s in self.shifts)

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

    @property
    def num_positions(self) -> int:
        """L·D: positions of the client axis, phantom clients included."""
        return self.slots * self.num_devices

    @property
    def static(self) -> StaticPlan:
        """What the compiled round needs besides the tables (Python values, closed over)."""
        return StaticPlan(self.shifts, self.mesh_shape, self.weight_rule, self.num_positions)

    def device_tables(self) -> DeviceTables:
        """Per-device tables with the device axis first, ready to be sharded over the mesh."""
        swap = lambda v: np.swapaxes(v, 0, 1)  # noqa: E731
        return DeviceTables(
            swap(self.neighbor_halo), swap(self.neighbor_client), swap(self.neighbor_edge),
            swap(self.base_weight), swap(self.base_self), tuple(swap(v) for v in self.send),
        )


def _edge_list(w: np.ndarray) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    link = (w > 0) | (w.T > 0)
    np.fill_diagonal(link, False)
    u, v = np.nonzero(np.triu(link))
    ids = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(u, v))}
    ids.update({(b, a): i for (a, b), i in list(ids.items())})
    return np.stack([u, v], axis=1).astype(np.int32), ids


def build_plan(
    matrices: list[np.ndarray],
    num_devices: int,
    weight_rule: str,
    layout: DeviceLayout | None = None,
) -> GossipPlan:
    """Compiles a pool of Q × Q mixing matrices into halo-exchange tables for ``num_devices``.

    Row q of each matrix lists whom client q listens to (W_qr > 0, r ≠ q). ``layout`` places the
    clients on the mesh (default: the flat axis, client q at position q).
    """
    q = matrices[0].shape[0]
    layout = layout or flat_layout(q, num_devices)
    d, shape = num_devices, tuple(layout.mesh_shape)
    slots = len(layout.placement) // d
    _check_layout(layout, q, d)
    position = layout.position
    home = position // slots  # device of every client id (phantoms included)
    coords = np.stack(np.unravel_index(np.arange(d), shape), axis=1)
    g = len(matrices)
    nbrs = [[np.flatnonzero((w[i] > 0) & (np.arange(q) != i)) for i in range(q)] for w in matrices]
    k = max(1, max(len(n) for pool in nbrs for n in pool))

    def offset(dst: int, src: int) -> tuple[int, ...]:
        return tuple(int(v) for v in (coords[dst] - coords[src]) % shape)

    # Which remote clients each device needs from each offset, per graph: [g][dst][offset].
    need = [[{} for _ in range(d)] for _ in range(g)]
    for gi, pool in enumerate(nbrs):
        for i, ns in enumerate(pool):
            dst = int(home[i])
            for r in ns:
                if home[r] != dst:
                    need[gi][dst].setdefault(offset(dst, int(home[r])), set()).add(int(r))
    every = [o for o in itertools.product(*(range(n) for n in shape)) if any(o)]
    sizes = {
        o: max(len(need[gi][dst].get(o, ())) for gi in range(g) for dst in range(d)) for o in every
    }
    shifts = tuple(o for o in every if sizes[o] > 0)
    send = []
    halo_row = [[{} for _ in range(d)] for _ in range(g)]  # [g][dst] client -> halo row
    start = slots
    for o in shifts:
        table = np.zeros((g, d, sizes[o]), dtype=np.int32)
        for gi in range(g):
            for dst in range(d):
                rows = sorted(need[gi][dst].get(o, ()))
                src = int(np.ravel_multi_index(tuple((coords[dst] - o) % shape), shape))
                table[gi, src, : len(rows)] = position[rows] % slots
                halo_row[gi][dst].update({r: start + j for j, r in enumerate(rows)})
        send.append(table)
        start += sizes[o]
    tables = _neighbor_tables(matrices, nbrs, position, slots, d, k, halo_row, layout.placement)
    return GossipPlan(
        num_clients=q,
        num_devices=d,
        slots=slots,
        shifts=shifts,
        send=tuple(send),
        **tables,
        weight_rule=weight_rule,
        mesh_shape=shape,
        placement=layout.placement,
    )


def _check_layout(layout: DeviceLayout, num_clients: int, num_devices: int) -> None:
    p = layout.placement
    if layout.num_devices != num_devices or len(p) % num_devices or len(p) < num_clients:
        raise ValueError(
            f"layout with mesh {layout.mesh_shape} and {len(p)} positions does not fit "
            f"{num_clients} clients on {num_devices} devices"
        )
    if not np.array_equal(np.sort(p), np.arange(len(p))):
        raise ValueError("layout.placement must be a permutation of the client positions")


def _neighbor_tables(matrices, nbrs, position, slots, d, k, halo_row, placement) -> dict:
    """Per-(graph, device, slot) neighbour halo rows, client ids, edge ids and weights."""
    g = len(matrices)
    edge_lists = [_edge_list(w) for w in matrices]
    e_max = max(1, max(len(e) for e, _ in edge_lists))
    shape = (g, d, slots, k)
    own = placement.reshape(d, slots).astype(np.int32)
    nb_halo = np.broadcast_to(np.arange(slots, dtype=np.int32)[None, None, :, None], shape).copy()
    nb_client = np.broadcast_to(own[None, :, :, None], shape).copy()
    nb_edge = np.full(shape, e_max, dtype=np.int32)
    base_w = np.zeros(shape, dtype=np.float32)
    base_self = np.ones((g, d, slots), dtype=np.float32)
    edges = np.zeros((g, e_max, 2), dtype=np.int32)
    valid = np.zeros((g, e_max), dtype=bool)
    for gi, (w, pool, (elist, ids)) in enumerate(zip(matrices, nbrs, edge_lists)):
        edges[gi, : len(elist)] = elist
        valid[gi, : len(elist)] = True
        for i, ns in enumerate(pool):
            dst, slot = divmod(int(position[i]), slots)
            base_self[gi, dst, slot] = w[i, i]
            for j, r in enumerate(ns):
                same = position[r] // slots == dst
                nb_halo[gi, dst, slot, j] = (
                    position[r] % slots if same else halo_row[gi][dst][int(r)]
                )
                nb_client[gi, dst, slot, j] = r
                nb_edge[gi, dst, slot, j] = ids[(i, int(r))]
                base_w[gi, dst, slot, j] = w[i, r]
    return {
        "neighbor_halo": nb_halo,
        "neighbor_client": nb_client,
        "neighbor_edge": nb_edge,
        "base_weight": base_w,
        "base_self": base_self,
        "edges": edges,
        "edge_valid": valid,
    }
