"""Where clients live on the device mesh: a flat client axis, or torus tiles on a 2-D mesh.

A layout is a mesh shape and a *placement*: the client held at each position of the client axis
(position p sits on flattened device p // L, row-major over the mesh axes). Client identities (data,
keys, metrics) never change; only their positions do.

- ``flat``: a 1-D mesh of D devices and the identity placement (blocks of L consecutive clients).
  A ring embeds here (its neighbours are ± 1 device shifts); random regular, Erdős–Rényi,
  exponential, star, complete and custom graphs use permutations over this flat axis.
- ``2d`` (torus only): an ``R × C`` mesh with R | rows and C | cols. Device (i, j) holds the
  ``rows/R × cols/C`` tile of torus nodes at tile position (i, j), in row-major order, so every
  neighbour outside a tile lies in one of the 4 mesh neighbours and each exchange is a
  ``ppermute`` along one mesh axis.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _graphs

MESH_MODES = ("auto", "flat", "2d")

NOT_TORUS = (
    "--mesh=2d with --topology={name}: only a torus embeds in a 2-D device mesh (fedavg, "
    "centralized and ntk_fl always use the complete graph). Use --mesh=auto or --mesh=flat, "
    "which run this graph as permutations over the flat client axis."
)
NO_TILING = (
    "--mesh=2d with --torus_shape={rows}x{cols} and --devices={devices}: no mesh R x C = "
    "{devices} has R dividing {rows} and C dividing {cols}. Use a device count among {fits} "
    "(or another --torus_shape), or --mesh=auto / --mesh=flat to run the torus on the flat "
    "client axis."
)


@dataclasses.dataclass(frozen=True)
class DeviceLayout:
    """A mesh shape and the client at each position of the client axis.

    Attributes:
      mesh_shape: (D,) for the flat axis, (R, C) for a 2-D mesh.
      placement: int32 [P]: the client at each position (P = D·L; ids ≥ Q are phantom padding).
    """

    mesh_shape: tuple[int, ...]
    placement: np.ndarray

    @property
    def num_devices(self) -> int:
        return int(np.prod(self.mesh_shape))

    @property
    def position(self) -> np.ndarray:
        """The inverse of ``placement``: the position of each client id."""
        return np.argsort(self.placement).astype(np.int32)


def flat_layout(num_clients: int, num_devices: int) -> DeviceLayout:
    """Blocks of L = ⌈Q/D⌉ consecutive clients per device on a 1-D mesh."""
    slots = -(-num_clients // num_devices)
    return DeviceLayout((num_devices,), np.arange(slots * num_devices, dtype=np.int32))


def torus_mesh_shapes(rows: int, cols: int, num_devices: int) -> list[tuple[int, int]]:
    """Every mesh (R, C) with R·C = D, R | rows and C | cols, squarest tiles first.

    The halo of a tile is about 2·(rows/R + cols/C) rows, so the squarest tile sends least.
    """
    shapes = [
        (r, num_devices // r)
        for r in range(1, num_devices + 1)
        if num_devices % r == 0 and rows % r == 0 and cols % (num_devices // r) == 0
    ]
    return sorted(shapes, key=lambda s: (rows // s[0] + cols // s[1], s))


def torus_tiles(rows: int, cols: int, mesh_shape: tuple[int, int]) -> np.ndarray:
    """Placement of a ``rows × cols`` torus (node q at (q // cols, q % cols)) in mesh tiles.

    Position ((i·C + j)·L + a·t_c + b) holds node (i·t_r + a, j·t_c + b), t_r = rows/R,
    t_c = cols/C, L = t_r·t_c: device (i, j) of the mesh holds tile (i, j), row-major inside.
    """
    r_mesh, c_mesh = mesh_shape
    tr, tc = rows // r_mesh, cols // c_mesh
    i, j, a, b = np.meshgrid(
        np.arange(r_mesh), np.arange(c_mesh), np.arange(tr), np.arange(tc), indexing="ij"
    )
    return ((i * tr + a) * cols + (j * tc + b)).reshape(-1).astype(np.int32)


def device_layout(
    name: str,
    num_clients: int,
    num_devices: int,
    mode: str = "auto",
    torus_shape: tuple[int, int] | None = None,
) -> DeviceLayout:
    """The layout for a topology on ``num_devices`` devices under ``--mesh=mode``.

    ``auto`` tiles a torus on a 2-D mesh when some R × C mesh with R, C ≥ 2 fits it, and uses the
    flat axis otherwise; ``flat`` always uses the flat axis; ``2d`` requires a fitting mesh.

    Raises:
      ValueError: unknown mode, or ``2d`` for a graph or device count that does not tile.
    """
    if mode not in MESH_MODES:
        raise ValueError(f"--mesh={mode}: choose one of {', '.join(MESH_MODES)}.")
    if mode == "flat" or (mode == "auto" and name != "torus"):
        return flat_layout(num_clients, num_devices)
    if name != "torus":
        raise ValueError(NOT_TORUS.format(name=name))
    rows, cols = torus_shape or _graphs.default_torus_shape(num_clients)
    if rows * cols != num_clients:
        _graphs.torus(rows, cols, num_clients)  # raises the --torus_shape error
    shapes = torus_mesh_shapes(rows, cols, num_devices)
    if mode == "auto":
        shapes = [s for s in shapes if min(s) >= 2]
        if not shapes:
            return flat_layout(num_clients, num_devices)
    if not shapes:
        fits = [d for d in range(1, rows * cols + 1) if torus_mesh_shapes(rows, cols, d)]
        raise ValueError(
            NO_TILING.format(rows=rows, cols=cols, devices=num_devices, fits=_short(fits))
        )
    return DeviceLayout(shapes[0], torus_tiles(rows, cols, shapes[0]))


def _short(values: list[int], limit: int = 12) -> str:
    text = ", ".join(map(str, values[:limit]))
    return text + (", ..." if len(values) > limit else "")
