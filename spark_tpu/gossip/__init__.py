"""Neighbour communication under shard_map (docs/architecture.md §2, layer 5): ppermute only."""

from ._gossip import AXIS as AXIS
from ._gossip import GRID_AXES as GRID_AXES
from ._gossip import RoundGraph as RoundGraph
from ._gossip import client_axes as client_axes
from ._gossip import client_sum as client_sum
from ._gossip import degrees as degrees
from ._gossip import halo as halo
from ._gossip import mesh_axes as mesh_axes
from ._gossip import mix as mix
from ._gossip import neighbor_mask as neighbor_mask
from ._gossip import neighbors as neighbors
from ._gossip import round_graph as round_graph
from ._gossip import sample_links as sample_links
