"""Jacobian-free NTK machinery: kernels, weight steps, the function-space solver (DESIGN layer 4)."""

from ._batching import batch_map as batch_map
from ._closed_form import evolve_mse_closed_form as evolve_mse_closed_form
from ._kernel import materialized_jacobian as materialized_jacobian
from ._kernel import trace_kernel as trace_kernel
from ._kernel import trace_kernel_materialized as trace_kernel_materialized
from ._objective import Objective as Objective
from ._objective import cross_entropy as cross_entropy
from ._objective import mse as mse
from ._objective import soft_label_regularized as soft_label_regularized
from ._projection import back_project as back_project
from ._projection import kernel_from_projection as kernel_from_projection
from ._projection import layer_projections as layer_projections
from ._projection import project_jacobian as project_jacobian
from ._projection import projected_trace_kernel as projected_trace_kernel
from ._schedule import lr_schedule as lr_schedule
from ._solver import TABLEAUX as TABLEAUX
from ._solver import FunctionSpaceSolution as FunctionSpaceSolution
from ._solver import Tableau as Tableau
from ._solver import solve_function_space as solve_function_space
from ._step import StepInfo as StepInfo
from ._step import ntk_evolution_step as ntk_evolution_step
from ._step import select_horizon as select_horizon
from ._step import weight_steps as weight_steps
from ._weights import batched_forward as batched_forward
from ._weights import jacobian_transpose_product as jacobian_transpose_product
from ._weights import scale_tree as scale_tree
