"""Test-wide JAX configuration (docs/style.md §14): 8 emulated CPU devices, float64 available,
strict dtype promotion and rank promotion errors. Library code always names its dtypes.

Two tiers: ``make test`` runs everything (what CI runs); ``make test-fast`` (``-m "not slow"``)
leaves out the tests marked ``slow``, in their files or in `SLOW` below: the ones that took 20 s
or more each in ``pytest --durations`` on the loaded 2-core dev machine (subprocess launches,
multi-device equivalence sweeps, float64 references), which together were most of the suite's
time. Every module keeps cheaper tests in the fast tier."""

import jax
import pytest

from spark_tpu import platform

platform.emulate_cpu_devices(8)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# FILE::TEST (every parametrization) or FILE::TEST[ID] (that one). A test whose expensive
# module fixture is shared by all its parametrizations is listed whole.
SLOW = (
    "test_bench.py::test_unknown_benchmark_is_a_usage_error",
    "test_checkpoint.py::test_corrupt_latest_checkpoint_falls_back_to_the_previous[meta]",
    "test_checkpoint.py::test_corrupt_latest_checkpoint_falls_back_to_the_previous[state]",
    "test_checkpoint.py::test_launcher_rejects_mismatched_resume",
    "test_checkpoint.py::test_resume_continues_without_gaps_or_duplicates",
    "test_checkpoint.py::test_resume_without_checkpoint_starts_fresh_and_says_so",
    "test_checkpoint.py::test_saves_at_multiples_of_checkpoint_every_and_at_the_end",
    "test_checkpoint.py::test_sigkill_and_resume_is_bit_identical",
    "test_data_prepare.py::test_command_line",
    "test_degree_buckets.py::test_spark_with_buckets_equals_the_padded_step",
    "test_degree_buckets.py::test_spark_with_buckets_equals_the_padded_step[options0]",
    "test_degree_buckets.py::test_spark_with_buckets_equals_the_padded_step[options1]",
    "test_errors.py::test_launcher_stops_with_the_message",
    "test_launcher.py::test_a_finished_run_says_so_and_overwrite_replaces_it",
    "test_launcher.py::test_the_terminal_shows_progress_evaluations_and_summary_not_library_logs",
    "test_mesh2d.py::test_simulator_same_metrics_2d_and_flat[dgd-32-shape0-extra0]",
    "test_mesh2d.py::test_simulator_same_metrics_2d_and_flat[ntk_dfl-16-shape1-extra1]",
    "test_mesh2d.py::test_two_processes_on_2d_mesh_match_one",
    "test_models.py::test_cnn_shapes_init_and_float64",
    "test_models.py::test_stacked_models_vmap_over_clients",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[1-False-ring]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[1-False-star]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[1-True-ring]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[2-False-star]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[4-False-ring]",
    "test_ntk_fl.py::test_dropout_keeps_one_server_model_on_any_layout",
    "test_ntk_fl.py::test_mse_runs_the_closed_form",
    "test_ntk_fl.py::test_replicated_server_step_gives_the_same_model",
    "test_ntk_fl.py::test_two_rounds_match_float64_reference",
    "test_ntk_kernel.py::test_kernel_vmaps_over_stacked_clients",
    "test_ntk_kernel.py::test_structured_kernel_equals_materialized[float32-1e-05-cnn]",
    "test_ntk_kernel.py::test_structured_kernel_equals_materialized[float64-1e-10-cnn]",
    "test_ntk_kernel.py::test_structured_kernel_equals_materialized[float64-1e-10-mlp3]",
    "test_ntk_kernel.py::test_structured_kernel_equals_materialized[float64-1e-10-ntk_sigmoid]",
    "test_ntk_projection.py::test_full_size_projection_is_exact_and_errors",
    "test_ntk_projection.py::test_projected_kernel_and_back_projection_are_unbiased[gaussian]",
    "test_ntk_projection.py::test_projected_kernel_and_back_projection_are_unbiased[kronecker]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[gaussian-cnn]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[gaussian-mlp]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[kronecker-cnn]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[kronecker-mlp]",
    "test_ntk_solver.py::test_default_solver_matches_dop853_at_reference_stiffness",
    "test_ntk_solver.py::test_exponential_solver_vmaps_over_clients",
    "test_ntk_step.py::test_batch_map_strategies_agree",
    "test_ntk_step.py::test_euler_step_of_linear_model_is_gradient_descent",
    "test_ntk_step.py::test_mse_closed_form_step_and_materialized_kernel_option",
    "test_ntk_step.py::test_step_picks_brute_force_argmin_and_explicit_delta",
    "test_ntk_step.py::test_step_vmaps_over_stacked_clients_with_traced_eta",
    "test_predict_mode.py::test_predict_mode_through_the_launcher_is_float64_to_round_off",
    "test_predict_mode.py::test_predict_mode_tracks_training[cta]",
    "test_predict_mode.py::test_predict_mode_tracks_training[dgd]",
    "test_projection_spark.py::test_full_width_projection_is_the_unprojected_round[gaussian-backproject]",
    "test_projection_spark.py::test_full_width_projection_is_the_unprojected_round[gaussian-exact]",
    "test_projection_spark.py::test_full_width_projection_is_the_unprojected_round[kronecker-backproject]",
    "test_projection_spark.py::test_full_width_projection_is_the_unprojected_round[kronecker-exact]",
    "test_projection_spark.py::test_projection_off_is_bit_identical",
    "test_projection_spark.py::test_small_projection_changes_the_round_and_stays_finite",
    "test_simulator.py::test_outputs_and_summary",
    "test_simulator.py::test_repeat_is_bit_identical",
    "test_simulator.py::test_rounds_copy_nothing_from_host_to_device",
    "test_simulator.py::test_same_metrics_on_1_2_4_8_devices",
    "test_spark.py::test_momentum_changes_the_trajectory_and_buffer_is_last_step",
    "test_spark.py::test_spark_with_zero_lambda_and_mu_is_ntk_dfl[options0]",
    "test_spark.py::test_spark_with_zero_lambda_and_mu_is_ntk_dfl[options1]",
    "test_spark.py::test_spark_with_zero_lambda_and_mu_is_ntk_dfl[options2]",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks the `SLOW` tests; an entry that names a test no longer in its file is an error."""
    used, files = set(), set()
    for item in items:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        files.add(path)
        name = f"{path}::{item.name}"
        for entry in (name, name.split("[", 1)[0]):
            if entry in SLOW:
                item.add_marker(pytest.mark.slow)
                used.add(entry)
    stale = [e for e in SLOW if e.split("::", 1)[0] in files and e not in used]
    if stale and not any("::" in arg for arg in config.args):  # not when tests are named
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {stale}")
