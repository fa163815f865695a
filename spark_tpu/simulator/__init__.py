"""Build, place, compile and run simulations (docs/architecture.md §2, layer 8)."""

from ._build import REFERENCE as REFERENCE
from ._build import hyperparameters as hyperparameters
from ._config import ALGORITHMS as ALGORITHMS
from ._config import APPLIES as APPLIES
from ._config import Config as Config
from ._config import refuse_unused as refuse_unused
from ._outputs import read_metrics as read_metrics
from ._predict import predict as predict
from ._api import simulate as simulate
from ._build import Custom as Custom
from ._run import Callback as Callback
from ._run import DivergenceError as DivergenceError
from ._run import History as History
from ._run import ProgressBar as ProgressBar
from ._run import WriteOutputs as WriteOutputs
from ._run import simulate_config as simulate_config
from ._run import Simulation as Simulation
from ._run import run as run
