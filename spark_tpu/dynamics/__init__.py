"""Learning-dynamics predictions for peer-to-peer DGD, ATC and CTA (docs/dynamics.md; arXiv 2409.15267)."""

from ._discrete import discrete_trajectory as discrete_trajectory
from ._flow import flow_system as flow_system
from ._flow import flow_trajectory as flow_trajectory
from ._flow import solve_flow as solve_flow
from ._linearize import Linearization as Linearization
from ._linearize import linearize as linearize
from ._plot import draw_prediction as draw_prediction
from ._plot import max_relative_error as max_relative_error
from ._plot import plot_prediction as plot_prediction
from ._predict import predict as predict
from ._predict import predict_linearized as predict_linearized
from ._simulate import simulate as simulate
