"""SPARK: reduces to NTK-DFL at λ = μ = 0; momentum and the stage schedule do what they say."""

import numpy as np
import pytest

from spark_tpu import algorithms, simulator


def _final_params(settings, algorithm, **kw):
    sim = simulator.Simulation(simulator.Config(algorithm=algorithm, **{**settings, **kw}))
    sim.advance(3)
    return sim


def _start(sim):
    import jax

    q = sim.cfg.clients
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (q,) + x.shape),
                        sim.setup.params)


def _flat(params, q):
    import jax

    leaves = jax.tree.leaves(params)
    return np.concatenate([np.asarray(x)[:q].reshape(q, -1) for x in leaves], 1)


@pytest.fixture(scope="module")
def ntk_dfl(spark_settings):
    """The NTK-DFL run every SPARK variant at λ = μ = 0 is compared with (computed once)."""
    return _final_params(spark_settings, "ntk_dfl")


@pytest.mark.parametrize("options", [(), (("momentum", "heavy_ball"),), (("buffer", "gossip"),)])
def test_spark_with_zero_lambda_and_mu_is_ntk_dfl(spark_settings, ntk_dfl, options):
    q = spark_settings["clients"]
    spark = _final_params(spark_settings, "spark", spark_stages="0: lam=0, mu=0",
                          spark_options=options)
    # The same arithmetic (λ = 0 and μ = 0 enter as exact zeros), compiled into a different XLA
    # program, so only float32 round-off may differ: parameters are O(0.1–1), moved by O(1e-2).
    np.testing.assert_allclose(_flat(spark.state.params, q), _flat(ntk_dfl.state.params, q),
                               atol=5e-7, rtol=0)
    moved = np.abs(_flat(ntk_dfl.state.params, q) - _flat(_start(ntk_dfl), q)).max()
    assert moved > 1e-3


def test_momentum_changes_the_trajectory_and_buffer_is_last_step(spark_settings):
    q = spark_settings["clients"]
    plain = _final_params(spark_settings, "spark", spark_stages="0: lam=0, mu=0")
    heavy = _final_params(spark_settings, "spark", spark_stages="0: lam=0, mu=0.9")
    assert not np.allclose(_flat(plain.state.params, q), _flat(heavy.state.params, q))
    assert np.abs(_flat(heavy.state.velocity, q)).max() > 0


def test_schedule_values_and_annealing():
    s = algorithms.parse_stages("0: lam=0, mu=0; 10: lam=0.5->0.1, T=2, mu=0.9; 20: lam=0.2@cos", 30)
    at = lambda r: {k: float(v) for k, v in s(r).items()}  # noqa: E731
    assert at(0) == {"lam": 0.0, "T": 1.0, "mu": 0.0}
    assert at(10)["lam"] == pytest.approx(0.5) and at(10)["mu"] == pytest.approx(0.9)
    assert at(15)["lam"] == pytest.approx(0.3)  # linear halfway from 0.5 to 0.1
    assert at(25) == pytest.approx({"lam": 0.2, "T": 2.0, "mu": 0.9})  # carried over
    c = algorithms.parse_stages("0: lam=1->0@cos", 10)
    assert float(c(5)["lam"]) == pytest.approx(0.5)
    assert float(c(2.5)["lam"]) == pytest.approx(0.5 + 0.5 * np.cos(np.pi * 0.25))


@pytest.mark.parametrize(
    "text, words",
    [
        ("5: lam=0.1", "begin at 0"),
        ("0: lam=0; 0: mu=0.5", "increase"),
        ("0: lam=1.5", "lam=1.5 is outside"),
        ("0: mu=1", "mu=1.0 is outside"),
        ("0: T=0", "T=0.0 is outside"),
        ("0: gamma=1", "not one of lam=, T=, mu="),
        ("lam=0.1", "has no 'START:'"),
        ("0: lam=a", "is not a number"),
        ("0: lam=0.1->0.2->0.3", "more than one"),
        ("0: lam=0.1->0.2@exp", "not linear or cos"),
    ],
)
def test_bad_schedules_are_rejected_with_the_flag_named(text, words):
    with pytest.raises(ValueError, match="--spark_stages") as e:
        algorithms.parse_stages(text, 30)
    assert words in str(e.value)


def test_unknown_spark_option_names_the_flag(spark_settings):
    with pytest.raises(ValueError, match="--spark=teacher=nobody"):
        _final_params(spark_settings, "spark", spark_options=(("teacher", "nobody"),))
