"""Test-wide JAX configuration (docs/style.md §14): 8 emulated CPU devices, float64 available,
strict dtype promotion and rank promotion errors. Library code always names its dtypes.

Two tiers: ``make test`` runs everything (what CI runs: 1092 tests); ``make test-fast``
(``-m "not slow"``: 693 of them) leaves out the tests marked ``slow``: in their files, in `SLOW`
below, and every case of a `FAST_SUBSET` sweep but the representative few it names. Slow are the
tests that cost the most CPU time each (measured per test as ``time.process_time`` plus its
subprocesses' time; ``--durations`` wall times on the shared 2-core machine mostly measure the
other users' load): subprocess launches, whole-simulation compiles, float64 references and the
repeated cases of size/device/topology sweeps. The fast tier took 309 s of CPU (user + sys, -n 2) and
2 min 38 s on the idle 2-core machine, 2026-12-03 (README). Every module keeps a cheap test in the fast tier, except the three whose only
tests are a two-process launch (test_multiprocess.py), a real-data run (test_solver_real.py)
and float64 references (test_spark_reference.py)."""

import types

import jax
import pytest

from spark_tpu import platform

platform.emulate_cpu_devices(8)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def spark_settings():
    """The simulator settings of the 3-round SPARK runs in test_spark.py and
    test_projection_spark.py (one copy, issue #16): 8 digits clients on 4 devices, degree-3
    graphs from a pool of 4, horizons 4, 8, 16. Read-only; tests add their own keys."""
    return types.MappingProxyType(dict(
        dataset="digits", clients=8, samples_per_client=16, rounds=3, degree=3, graph_pool=4,
        local_eval_samples=100, horizons=(4, 8, 16), devices=4, lr=0.05,
    ))


# FILE::TEST (every parametrization) or FILE::TEST[ID] (that one). A test whose expensive
# module fixture is shared by all its parametrizations is listed whole.
SLOW = (
    "test_bench.py::test_unknown_benchmark_is_a_usage_error",
    "test_bytes.py::test_degree_buckets_on_a_star",
    "test_bytes.py::test_failed_links_and_dropped_clients_on_a_ring",
    "test_bytes.py::test_projected_spark_on_a_ring",
    "test_bytes.py::test_server_references",
    "test_bytes.py::test_spark_options_on_a_ring",
    "test_checkpoint.py::test_a_finished_run_says_it_is_finished_and_overwrite_replaces_it",
    "test_checkpoint.py::test_a_late_metadata_write_saves_the_rows_of_its_own_round",
    "test_checkpoint.py::test_corrupt_latest_checkpoint_falls_back_to_the_previous[meta]",
    "test_checkpoint.py::test_corrupt_latest_checkpoint_falls_back_to_the_previous[state]",
    "test_checkpoint.py::test_divergence_names_round_and_client_and_keeps_the_last_good_checkpoint",
    "test_checkpoint.py::test_inconsistent_checkpoint_warning_says_what_disagrees",
    "test_checkpoint.py::test_launcher_rejects_mismatched_resume",
    "test_checkpoint.py::test_resume_after_late_writes_uses_the_latest_checkpoint",
    "test_checkpoint.py::test_resume_continues_without_gaps_or_duplicates",
    "test_checkpoint.py::test_resume_with_other_trajectory_flags_warns_and_continues",
    "test_checkpoint.py::test_resume_without_checkpoint_starts_fresh_and_says_so",
    "test_checkpoint.py::test_saves_at_multiples_of_checkpoint_every_and_at_the_end",
    "test_checkpoint.py::test_sigkill_and_resume_is_bit_identical",
    "test_data_prepare.py::test_command_line",
    "test_data_prepare.py::test_concurrent_prepare_of_the_same_cache",
    "test_degree_buckets.py::test_spark_with_buckets_equals_the_padded_step",
    "test_degree_buckets.py::test_spark_with_buckets_equals_the_padded_step[options0]",
    "test_degree_buckets.py::test_spark_with_buckets_equals_the_padded_step[options1]",
    "test_dynamics.py::test_width256_moons_prediction_tracks_training",
    "test_errors.py::test_a_dropped_clients_data_does_not_reach_its_neighbours",
    "test_errors.py::test_dropped_clients_and_dead_links_carry_nothing",
    "test_errors.py::test_launcher_stops_with_the_message",
    "test_launcher.py::test_a_finished_run_says_so_and_overwrite_replaces_it",
    "test_launcher.py::test_help_lists_the_project_flags_by_group_and_the_presets",
    "test_launcher.py::test_the_terminal_shows_progress_evaluations_and_summary_not_library_logs",
    "test_mesh2d.py::test_simulator_same_metrics_2d_and_flat[dgd-32-shape0-extra0]",
    "test_mesh2d.py::test_simulator_same_metrics_2d_and_flat[ntk_dfl-16-shape1-extra1]",
    "test_mesh2d.py::test_two_processes_on_2d_mesh_match_one",
    "test_models.py::test_cnn_shapes_init_and_float64",
    "test_models.py::test_make_model_names_and_errors",
    "test_models.py::test_stacked_models_vmap_over_clients",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[1-False-ring]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[1-False-star]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[1-True-ring]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[2-False-star]",
    "test_ntk_dfl_reference.py::test_two_ntk_dfl_rounds_match_float64_reference[4-False-ring]",
    "test_ntk_fl.py::test_bytes_as_documented",
    "test_ntk_fl.py::test_dropout_keeps_one_server_model_on_any_layout",
    "test_ntk_fl.py::test_every_client_holds_the_global_model",
    "test_ntk_fl.py::test_mse_runs_the_closed_form",
    "test_ntk_fl.py::test_replicated_server_step_gives_the_same_model",
    "test_ntk_fl.py::test_same_sampled_set_on_1_and_4_devices",
    "test_ntk_fl.py::test_two_rounds_match_float64_reference",
    "test_ntk_kernel.py::test_kernel_is_nonzero_for_relu_inputs_not_just_last_layer",
    "test_ntk_kernel.py::test_kernel_vmaps_over_stacked_clients",
    "test_ntk_projection.py::test_full_size_projection_is_exact_and_errors",
    "test_ntk_projection.py::test_projected_kernel_and_back_projection_are_unbiased[gaussian]",
    "test_ntk_projection.py::test_projected_kernel_and_back_projection_are_unbiased[kronecker]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[gaussian-cnn]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[gaussian-mlp]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[kronecker-cnn]",
    "test_ntk_projection.py::test_projection_equals_explicit_j_times_p[kronecker-mlp]",
    "test_ntk_solver.py::test_adaptive_solver_error_follows_its_tolerance",
    "test_ntk_solver.py::test_auto_solver_is_exponential_from_512_rows_and_adaptive_below",
    "test_ntk_solver.py::test_default_solver_matches_dop853_at_reference_stiffness",
    "test_ntk_solver.py::test_fixed_stride_blows_up_on_stiff_neighbourhood_and_says_so",
    "test_ntk_solver.py::test_solver_vmaps_over_clients_and_validates",
    "test_ntk_solver.py::test_strided_solver_fails_visibly_when_too_coarse",
    "test_ntk_solver.py::test_exponential_solver_vmaps_over_clients",
    "test_ntk_step.py::test_batch_map_strategies_agree",
    "test_ntk_step.py::test_linearized_selection_scores_f0_plus_explicit_j_delta",
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


# FILE::TEST -> the IDs of its parametrizations that stay in the fast tier; the rest of the sweep
# is slow. `make test` runs every case; `make test-fast` a representative few (each topology, device
# count, dtype, solver family... at least once, as each comment says).
FAST_SUBSET = {
    # each algorithm with each W kind and with each width (6 of the 12 cases)
    "test_dynamics.py::test_reduced_flow_equals_weight_space_expm": (
        "dgd-metropolis_ring-r<P", "dgd-nonsymmetric-r=P", "atc-nonsymmetric-r<P",
        "atc-metropolis_ring-r=P", "cta-metropolis_ring-r<P", "cta-nonsymmetric-r=P",
    ),
    # each algorithm and each kind of W once
    "test_dynamics.py::test_affine_discrete_prediction_equals_training": (
        "complete-dgd", "nonsymmetric-atc", "sequence-cta",
    ),
    # the gradient baselines share one byte count; DGD stands for them
    "test_bytes.py::test_gradient_baselines_send_one_model_per_link": ("dgd",),
    # each topology once; 1, 2, 4 and 8 devices and 8, 30 and 300 clients each at least once
    "test_gossip.py::test_mix_equals_dense": (
        "1-8-ring", "2-30-star", "4-8-complete", "8-30-torus", "2-300-regular",
        "4-300-erdos_renyi", "8-30-exponential",
    ),
    # both weight rules, four of the eight tilings (both mesh orientations, a 1 x 8 mesh)
    "test_mesh2d.py::test_mix_on_2d_mesh_equals_dense": (
        "4-4-mesh_shape0-uniform", "4-8-mesh_shape3-metropolis", "6-8-mesh_shape5-uniform",
        "6-8-mesh_shape7-metropolis",
    ),
    "test_mesh2d.py::test_link_failures_and_dropout_on_2d_mesh": (
        "4-8-mesh_shape0-uniform", "6-8-mesh_shape1-metropolis",
    ),
    # an MLP in float64 and an NTK-parameterized MLP in float32
    "test_ntk_kernel.py::test_structured_kernel_equals_materialized": (
        "float64-1e-10-mlp1", "float32-1e-05-ntk_tanh",
    ),
    "test_ntk_kernel.py::test_jacobian_transpose_product_equals_explicit": (
        "mlp3-float64-1e-10-0.0", "mlp3-float32-0.0-1e-05",
    ),
    # the highest order, the shortest stride, one Chebyshev method, the adaptive default
    "test_ntk_solver.py::test_convergence_order": ("rk4-4",),
    "test_ntk_solver.py::test_strided_solver_matches_dop853_at_every_grid_point": (
        "2-0.0001-float64", "2-0.0001-float32",
    ),
    "test_ntk_solver.py::test_chebyshev_solvers_stay_stable_at_long_strides": ("rkc4-8-0.002",),
    "test_ntk_solver.py::test_adaptive_solver_matches_dop853_at_every_grid_point": (
        "digits_problem-float64", "digits_problem-float32",
    ),
    "test_projection_spark.py::test_hand_sizes_match_the_projection": ("kronecker-200",),
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks the `SLOW` tests and the `FAST_SUBSET` sweeps' other cases; an entry that names a
    test or case no longer in its file is an error."""
    used, files = set(), set()
    for item in items:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        files.add(path)
        name = f"{path}::{item.name}"
        test = name.split("[", 1)[0]
        for entry in (name, test):
            if entry in SLOW:
                item.add_marker(pytest.mark.slow)
                used.add(entry)
        if test in FAST_SUBSET:
            case = name[len(test) + 1 : -1]
            if case in FAST_SUBSET[test]:
                used.add(name)
            else:
                item.add_marker(pytest.mark.slow)
    listed = list(SLOW) + [f"{t}[{c}]" for t, cases in FAST_SUBSET.items() for c in cases]
    stale = [e for e in listed if e.split("::", 1)[0] in files and e not in used]
    if stale and not any("::" in arg for arg in config.args):  # not when tests are named
        raise pytest.UsageError(f"tests/conftest.py names tests that do not exist: {stale}")
