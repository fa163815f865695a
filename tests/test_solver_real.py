"""The hardest real neighbourhood the solver audit found (experiments/solver_audit.py).

Fashion-MNIST, 30 clients × 100 samples, per-client Dirichlet α = 0.05, seed 0, a 5-regular
graph of the run's pool, the MLP at its initialization: client 21's pooled neighbourhood (Ñ = 600,
η·λ_max(K)/Ñ = 3.7). The old default solver (rk4, stride 4) leaves RK4's stability region there
(a weight-step error of ~1 against an rk4 reference at one step per grid interval, and it
is flagged); the adaptive default and the exponential solver stay within 1e-4. Skipped without
the Debian data package.

The solvers run in float32, the production dtype, against the reference run in float32 too, on
the same float32 network: what is compared is the solvers' error, not float32's round-off floor.
That floor is not portable: on this neighbourhood a first-layer ReLU pre-activation lies within
float32 round-off of zero, and on an AMD EPYC its float32 sign differs from float64's, which puts
every float32 solve 4.8e-3 from a float64 reference (on the Intel machine of earlier runs it did
not; docs/ntk_step.md §8, `experiments/float32_floor.py`).
"""

import os

import numpy as np
import pytest

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason=f"{DEBIAN_DIR} absent"),
    pytest.mark.slow,
]


def test_old_default_fails_and_adaptive_holds_on_hardest_real_neighbourhood(tmp_path):
    import jax

    from experiments import solver_audit
    from spark_tpu import simulator

    cfg = simulator.Config(
        algorithm="ntk_dfl", clients=30, samples_per_client=100, partition="dirichlet",
        alpha=0.05, topology="regular", degree=5, rounds=1, devices=2, seed=0,
        data_dir=str(tmp_path / "tfds"),
    )  # fmt: skip
    sim = simulator.Simulation(cfg)
    avg, x, y = solver_audit._neighbourhoods(sim, cfg)[21]
    classes = sim.setup.dataset.num_classes

    def weight_steps(dtype, **options):
        fn = solver_audit._solver_fn(sim.setup.model, classes, dtype, tuple(sorted(options.items())))
        dw, _, _, flagged = fn(avg, x, y, np.float64(0.01))
        return [np.asarray(v, np.float64) for v in jax.tree.leaves(dw)], bool(flagged)

    ref, _ = weight_steps("float32", solver="rk4")  # the same float32 network (module docstring)

    def error(dw):
        num = np.sqrt(sum(np.sum((a - b) ** 2, axis=tuple(range(1, a.ndim))) for a, b in zip(dw, ref)))
        den = np.sqrt(sum(np.sum(b**2, axis=tuple(range(1, b.ndim))) for b in ref))
        return float(np.max(num / den))

    old, old_flagged = weight_steps("float32", solver="rk4", stride=4)
    new, new_flagged = weight_steps("float32", solver="adaptive")
    assert not error(old) <= 1e-2 and old_flagged
    assert error(new) <= 1e-4 and not new_flagged
    exponential, _ = weight_steps("float32", solver="exponential")
    assert error(exponential) <= 1e-4  # the audit: 1.2e-5 (adaptive 3.7e-5)
    default, default_flagged = weight_steps("float32")  # auto: exponential at Ñ >= 512
    assert error(default) <= 1e-4 and not default_flagged


def test_default_beats_the_adaptive_solver_on_a_trained_paper_sized_neighbourhood(tmp_path):
    """The neighbourhood where the solver audit at the paper's pool size found the adaptive
    solver (the default before `auto`) least accurate: Fashion-MNIST, 20 clients × 200 samples,
    per-client Dirichlet α = 0.1, seed 0, a 5-regular graph (Ñ = 1,200), after 5 rounds of
    NTK-DFL; client 9. The audit measured the adaptive solver at 1.06e-4 and the exponential
    solver, the default here, at 1.7e-5 of the float64 reference (here: of the float32 one)
    (experiments/results/solver_audit/solver_audit_paper_pools.json). Held with a 2-3× margin
    on either side of 5e-5, so that a slightly different trained state still separates them."""
    import jax

    from experiments import solver_audit
    from spark_tpu import ntk, simulator

    cfg = simulator.Config(
        algorithm="ntk_dfl", clients=20, samples_per_client=200, partition="dirichlet",
        alpha=0.1, topology="regular", degree=5, rounds=5, devices=2, seed=0, eval_every=1,
        solver="exponential", data_dir=str(tmp_path / "tfds"),
    )  # fmt: skip
    sim = simulator.Simulation(cfg)
    sim.advance(5)
    avg, x, y = solver_audit._neighbourhoods(sim, cfg)[9]
    assert ntk.resolve_solver("auto", len(y)) == "exponential"
    classes = sim.setup.dataset.num_classes
    eta = float(ntk.lr_schedule(solver_audit.ETA0, solver_audit.DECAY)(5))

    def weight_steps(dtype, **options):
        fn = solver_audit._solver_fn(sim.setup.model, classes, dtype, tuple(sorted(options.items())))
        dw, _, _, _ = fn(avg, x, y, np.float64(eta))
        return [np.asarray(v, np.float64) for v in jax.tree.leaves(dw)]

    ref = weight_steps("float32", solver="rk4")  # the same float32 network (module docstring)

    def error(dw):
        num = np.sqrt(sum(np.sum((a - b) ** 2, axis=tuple(range(1, a.ndim))) for a, b in zip(dw, ref)))
        den = np.sqrt(sum(np.sum(b**2, axis=tuple(range(1, b.ndim))) for b in ref))
        return float(np.max(num / den))

    assert error(weight_steps("float32")) <= 5e-5  # the default (auto: exponential)
    assert not error(weight_steps("float32", solver="adaptive")) <= 5e-5
