"""Equinox models shared by all clients (docs/architecture.md §2, layer 3)."""

from ._cnn import CNN as CNN
from ._factory import MODELS as MODELS
from ._factory import ModelFactory as ModelFactory
from ._factory import make_model as make_model
from ._factory import register as register
from ._layers import Conv2d as Conv2d
from ._layers import Dense as Dense
from ._layers import kaiming_normal as kaiming_normal
from ._mlp import MLP as MLP
from ._mlp import NTKMLP as NTKMLP
from ._sequential import ACTIVATIONS as ACTIVATIONS
from ._sequential import AbstractSequential as AbstractSequential
from ._sequential import num_parameters as num_parameters
