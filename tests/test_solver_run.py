"""The NTK solver inside runs: the error-controlled default, and fixed steps that say when they fail."""

import logging

import numpy as np
import pytest

from spark_tpu import simulator

TINY = dict(
    algorithm="ntk_dfl", dataset="digits", clients=8, samples_per_client=20, rounds=2, degree=3,
    graph_pool=4, local_eval_samples=100, horizons=(48, 64), devices=2, lr=0.5, lr_decay=0.0,
)


@pytest.mark.parametrize("flags, message", [
    (dict(solver_stride=4), "--solver_stride=4 with --solver=auto: the auto solver"),
    (dict(solver="adaptive", solver_stride=4), "--solver=adaptive: the adaptive solver"),
    (dict(solver="euler", solver_stride=2), "--solver_stride=2 with --solver=euler: euler is"),
    (dict(solver="exponential", solver_stride=2), "--solver=exponential: the exponential solver"),
])  # fmt: skip
def test_stride_is_refused_where_it_would_do_nothing_or_harm(flags, message):
    with pytest.raises(ValueError, match=message):
        simulator.Config(**{**TINY, **flags})


def _rows(tmp_path, caplog, **flags):
    caplog.set_level(logging.WARNING)
    simulator.run(simulator.Config(**{**TINY, **flags}), str(tmp_path), progress=False)
    rows = simulator.read_metrics(str(tmp_path / "metrics.csv"))
    warnings = [r.getMessage() for r in caplog.records if "left its accuracy region" in r.getMessage()]
    return rows, warnings


@pytest.mark.slow  # a simulation; the refusals above are Config checks (fast tier)
def test_too_long_fixed_stride_warns_with_round_and_client_count(tmp_path, caplog):
    """η = 0.5 on digits is stiff: rk4 steps of 16 grid intervals leave the stability region on
    some clients, and the run says so in every round it happens, naming how many clients."""
    rows, warnings = _rows(tmp_path / "rk4x16", caplog, solver="rk4", solver_stride=16)
    flagged = [r["solver_flagged"] for r in rows]
    assert max(flagged) > 0 and warnings
    assert warnings[0].startswith("Round 1: the fixed-step solver (--solver=rk4 --solver_stride=16)")
    assert f"for {round(flagged[0] * 8)} of 8 clients" in warnings[0]


@pytest.mark.slow
def test_adaptive_default_stays_quiet_and_counts_products(tmp_path, caplog):
    rows, warnings = _rows(tmp_path / "adaptive", caplog)
    assert not warnings and all(r["solver_flagged"] == 0 for r in rows)
    assert all(0 < r["solver_products"] < 4 * 64 * 4 for r in rows)  # below rk4 at 4 substeps
    assert np.isfinite([r["train_loss"] for r in rows]).all()


def test_exponential_solver_runs_inside_the_round_and_counts_its_products(tmp_path, caplog):
    """--solver=exponential inside the compiled round (vmapped per-client while loops): quiet,
    finite, and its per-client products (Krylov blocks included) under 0.7× the adaptive
    solver's on the same run (at these short horizons the stiff start is most of the flow; a
    quarter at the paper's, experiments/results/solver_audit/solver_audit_paper_pools.json)."""
    rows, warnings = _rows(tmp_path / "exponential", caplog, solver="exponential")
    adaptive, _ = _rows(tmp_path / "adaptive", caplog, solver="adaptive")
    assert not warnings and all(r["solver_flagged"] == 0 for r in rows)
    assert np.isfinite([r["train_loss"] for r in rows]).all()
    products = [r["solver_products"] for r in rows]
    assert 0 < min(products) and np.mean(products) < 0.7 * np.mean(
        [r["solver_products"] for r in adaptive]
    )


def test_the_launcher_says_which_solver_auto_runs(caplog):
    """--solver=auto names the solver it resolves to for the run's pooled neighbourhoods: here
    (3-regular, 4 clients' rows padded to the largest client's size, under 80) the adaptive
    one."""
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    caplog.set_level(logging.INFO)
    try:
        sim = simulator.Simulation(simulator.Config(**TINY))
    finally:
        absl_logging.set_verbosity(before)
    rows = 4 * int(np.asarray(sim.setup.arrays.mask).sum(axis=1).max())
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--solver=auto")]
    assert said == [f"--solver=auto: the adaptive solver on pooled neighbourhoods of {rows} rows "
                    "(exponential from 512 rows, adaptive below)"]
