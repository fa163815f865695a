"""Graphs, mixing matrices and gossip plans (docs/topologies.md; docs/architecture.md §2, layer 1)."""

from ._graphs import complete as complete
from ._graphs import default_torus_shape as default_torus_shape
from ._graphs import erdos_renyi as erdos_renyi
from ._graphs import exponential as exponential
from ._graphs import is_connected as is_connected
from ._graphs import random_regular as random_regular
from ._graphs import ring as ring
from ._graphs import star as star
from ._graphs import torus as torus
from ._layout import MESH_MODES as MESH_MODES
from ._layout import DeviceLayout as DeviceLayout
from ._layout import device_layout as device_layout
from ._layout import flat_layout as flat_layout
from ._layout import torus_mesh_shapes as torus_mesh_shapes
from ._layout import torus_tiles as torus_tiles
from ._mixing import check_row_stochastic as check_row_stochastic
from ._mixing import metropolis_hastings as metropolis_hastings
from ._mixing import mixing_matrix as mixing_matrix
from ._mixing import spectral_gap as spectral_gap
from ._mixing import uniform_weights as uniform_weights
from ._plan import GossipPlan as GossipPlan
from ._plan import build_plan as build_plan
from ._plan import degree_buckets as degree_buckets
from ._topology import TOPOLOGIES as TOPOLOGIES
from ._topology import GraphSequence as GraphSequence
from ._topology import Topology as Topology
