"""SPARK with random projection of Jacobians (docs/spark.md §5; bytes: docs/spark.md §8).

Off: SPARK is unchanged. At full width (k ≥ every layer's size, so every projection is the identity)
the projected kernel is the exact one and a round equals the unprojected round to float32 round-off,
for both weight steps. The bytes are counted by hand in `test_bytes.py`.
"""

import jax
import numpy as np
import pytest

from spark_tpu import algorithms, models, simulator
from spark_tpu.ntk import project_jacobian

STAGES = "0: lam=0.3, T=2, mu=0.9"  # momentum and the regularizer on from round 0
# The digits MLP 64-100-10: layer matrices [W | b] of 100 x 65 and 10 x 101; P = 7510.
FULL = 10_000  # ≥ 100·65 (gaussian) and round(√k) ≥ 100, ⌈k/100⌉ ≥ 65 (kronecker): identities


def _sim(settings, options=(), stages=STAGES, rounds=3):
    cfg = simulator.Config(
        algorithm="spark", spark_stages=stages, spark_options=tuple(options), **settings
    )
    sim = simulator.Simulation(cfg)
    metrics = sim.advance(rounds)
    return sim, metrics


def _leaves(sim):
    return [np.asarray(x)[: sim.cfg.clients] for x in jax.tree.leaves(sim.state)]


@pytest.fixture(scope="module")
def plain(spark_settings):
    return _sim(spark_settings)


def test_projection_off_is_bit_identical(spark_settings, plain):
    off, metrics = _sim(spark_settings, (("projection", "none"), ("weight_step", "exact")))
    for a, b in zip(_leaves(off), _leaves(plain[0])):
        np.testing.assert_array_equal(a, b)
    for key in ("bytes_sent", "train_loss", "tau"):
        np.testing.assert_array_equal(metrics[key], plain[1][key])


@pytest.mark.parametrize("weight_step", ["exact", "backproject"])
@pytest.mark.parametrize("kind", ["gaussian", "kronecker"])
def test_full_width_projection_is_the_unprojected_round(spark_settings, plain, kind, weight_step):
    opts = (("projection", kind), ("projection_dim", str(FULL)), ("weight_step", weight_step))
    sim, metrics = _sim(spark_settings, opts)
    ref, ref_metrics = plain
    moved = max(np.abs(a).max() for a in _leaves(ref)[len(_leaves(ref)) // 2 :])  # velocity
    assert moved > 1e-3
    # Params O(0.1–1) moved by O(1e-2) per round, over 3 rounds with μ = 0.9: float32 round-off.
    for a, b in zip(_leaves(sim), _leaves(ref)):
        np.testing.assert_allclose(a, b, atol=5e-7, rtol=0)  # measured ≤ 1.2e-7
    np.testing.assert_array_equal(metrics["tau"], ref_metrics["tau"])


def _hand_sizes(kind, k):
    """Σ_l k_l for the digits MLP, worked out by hand from the docs/spark.md §5 rule."""
    if kind == "gaussian":  # min(k, rows·cols) per layer
        return {200: 200 + 200, 2000: 2000 + 1010}[k]
    # k_r = min(rows, round(√k)), k_c = min(cols, ⌈k / k_r⌉)
    return {200: 14 * 15 + 10 * 20, 2000: 45 * 45 + 10 * 101}[k]


@pytest.mark.parametrize("kind, k", [("gaussian", 200), ("kronecker", 200), ("kronecker", 2000)])
def test_hand_sizes_match_the_projection(kind, k):
    net = models.make_model("mlp", (8, 8, 1), 10, key=jax.random.key(0))
    x = np.zeros((2, 8, 8, 1), np.float32)
    widths = [jp.shape[-1] for jp in project_jacobian(net, x, k=k, seed=0, kind=kind)]
    assert sum(widths) == _hand_sizes(kind, k)


def test_small_projection_changes_the_round_and_stays_finite(spark_settings, plain):
    sim, _ = _sim(spark_settings, (("projection", "kronecker"), ("projection_dim", "16")))
    assert all(np.isfinite(a).all() for a in _leaves(sim))
    assert not np.allclose(_leaves(sim)[0], _leaves(plain[0])[0])


@pytest.mark.parametrize(
    "options, words",
    [
        ({"projection": "sparse"}, "--spark=projection=sparse: choose one of none, gaussian"),
        ({"projection": "gaussian", "projection_dim": "0"}, "--spark=projection_dim=0: choose a"),
        ({"projection": "gaussian", "projection_dim": "1.5"}, "--spark=projection_dim=1.5"),
        ({"projection": "gaussian", "weight_step": "approx"}, "one of exact, backproject"),
        ({"weight_step": "backproject"}, "--spark=weight_step=backproject: needs --spark=proj"),
        ({"projection_dim": "64"}, "--spark=projection_dim=64: needs --spark=projection"),
    ],
)
def test_bad_projection_options_name_the_flag(options, words):
    with pytest.raises(ValueError, match="--spark") as e:
        algorithms.spark(algorithms.Model(None), num_classes=10, rounds=3, options=options)
    assert words in str(e.value)
