"""Federated algorithms as (init, round) pairs of pure functions (docs/architecture.md §2, layer 6)."""

from ._base import Algorithm as Algorithm
from ._base import ClientData as ClientData
from ._base import Model as Model
from ._base import ParamsState as ParamsState
from ._base import RoundContext as RoundContext
from ._base import client_keys as client_keys
from ._base import cross_entropy as cross_entropy
from ._base import num_params as num_params
from ._base import split_model as split_model
from ._base import tree_where as tree_where
from ._gossip_sgd import consensus as consensus
from ._gossip_sgd import dfedavg as dfedavg
from ._ntk_dfl import degree_buckets as degree_buckets
from ._ntk_dfl import ntk_dfl as ntk_dfl
from ._ntk_dfl import pool_neighbourhood as pool_neighbourhood
from ._ntk_fl import NTK_FL_HORIZONS as NTK_FL_HORIZONS
from ._ntk_fl import ntk_fl as ntk_fl
from ._server import centralized as centralized
from ._spark import DEFAULT_OPTIONS as DEFAULT_SPARK_OPTIONS
from ._spark import DEFAULT_STAGES as DEFAULT_SPARK_STAGES
from ._spark import resolve_options as resolve_spark_options
from ._spark import SparkState as SparkState
from ._spark import spark as spark
from ._stages import parse_stages as parse_stages
from ._server import fedavg as fedavg
from ._spec import ALGORITHMS as ALGORITHMS
from ._spec import GRAPH_OPTIONS as GRAPH_OPTIONS
from ._spec import AlgorithmSpec as AlgorithmSpec
from ._spec import BuildContext as BuildContext
from ._spec import as_spec as as_spec
from ._spec import get as get
from ._spec import parse_options as parse_options
from ._spec import register as register

