"""spark_tpu: decentralized federated learning with neural tangent kernels, at accelerator speed.

The public API (docs/extending.md): `simulate` runs one simulation and returns its `History`;
`AlgorithmSpec` / `register_algorithm` add an algorithm; `Topology` / `GraphSequence` describe
graphs; `from_arrays` and `Partition` bring your own data; callbacks (`WriteOutputs`,
`ProgressBar`, `Callback`) write, show or checkpoint.
"""

__version__ = "0.1.0"

from spark_tpu.algorithms import Algorithm as Algorithm
from spark_tpu.algorithms import AlgorithmSpec as AlgorithmSpec
from spark_tpu.algorithms import BuildContext as BuildContext
from spark_tpu.algorithms import ClientData as ClientData
from spark_tpu.algorithms import ParamsState as ParamsState
from spark_tpu.algorithms import RoundContext as RoundContext
from spark_tpu.algorithms import client_keys as client_keys
from spark_tpu.algorithms import cross_entropy as cross_entropy
from spark_tpu.algorithms import register as register_algorithm
from spark_tpu.data import Dataset as Dataset
from spark_tpu.data import Partition as Partition
from spark_tpu.data import from_arrays as from_arrays
from spark_tpu.data import from_index_lists as from_index_lists
from spark_tpu.simulator import Callback as Callback
from spark_tpu.simulator import Config as Config
from spark_tpu.simulator import History as History
from spark_tpu.simulator import ProgressBar as ProgressBar
from spark_tpu.simulator import WriteOutputs as WriteOutputs
from spark_tpu.simulator import simulate as simulate
from spark_tpu.topology import GraphSequence as GraphSequence
from spark_tpu.topology import Topology as Topology
