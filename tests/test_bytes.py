"""Bytes per client per round against counts written here by hand from the protocol, for every
algorithm and every SPARK option that changes what is sent.

The graphs are small enough to count links by hand: a fixed ring of 6 clients (every client has 2
neighbours), a star of 6 (the hub has 5, each leaf 1), and the ring with failed links or dropped
clients, where a client's live links are the ring neighbours the round left it. Every client holds
N = 10 samples (IID split, checked), the digits MLP 64-100-10 has P = 64·100 + 100 + 100·10 + 10 =
7,510 parameters, C = 10 classes, and the NTK runs use |T| = 2 horizons. Everything is float32 or
int32: 4 bytes.

What each client sends, per live link (it plays both roles: it evolves its own model and serves its
neighbour's):

- NTK-DFL: its model w (for the averaging) and its linearization point w̄ (2 models); the Jacobian of
  its data at the neighbour's point (N·C·P floats), its labels (N int32) and logits (N·C floats);
  for τ* its |T| candidate steps (|T|·P floats) and, to the neighbour's candidates, |T| losses.
- SPARK adds: with the averaged teacher, λ > 0 and a Nesterov look-ahead (μ > 0), the averaged
  model w̄ beside the look-ahead u (a third model) and the teacher logits at w̄ (N·C); with the
  neighbour teacher and λ > 0, its own logits (N·C); a gossiped buffer (one more model). Projected
  Jacobians replace P by Σ_l k_l per sample and class; the exact weight step adds |T| residual
  blocks out (|T|·N·C) and |T| returned Jᵀr (|T|·P).
"""

import numpy as np
import pytest

from spark_tpu import algorithms, simulator

N, P, C, H = 10, 64 * 100 + 100 + 100 * 10 + 10, 10, 2
F = 4  # bytes per float32 / int32
MODEL = P * F
JACOBIAN = N * C * P * F
LABELS = N * F
LOGITS = N * C * F
CHOOSE_TAU = H * P * F + H * F  # |T| candidate steps out, |T| losses back
NTK_LINK = 2 * MODEL + JACOBIAN + LABELS + LOGITS + CHOOSE_TAU
RING = dict(
    dataset="digits", clients=6, samples_per_client=N, partition="iid", topology="ring",
    time_varying=False, horizons=(2, 4), local_eval_samples=50, devices=2, lr=0.05,
)
# One stage per round: (λ, μ) = (0, 0), (0.3, 0), (0, 0.5), (0.3, 0.5).
STAGES = "0: lam=0, mu=0; 1: lam=0.3, T=2, mu=0; 2: lam=0, mu=0.5; 3: lam=0.3, mu=0.5"


def _bytes(rounds=1, **kw):
    cfg = simulator.Config(**{**RING, "rounds": rounds, "eval_every": rounds, **kw})
    sim = simulator.Simulation(cfg)
    q = cfg.clients
    assert np.all(np.asarray(sim.setup.arrays.mask)[:q].sum(1) == N)  # the hand counts' N
    assert algorithms.num_params(sim.setup.params) == P
    m = {k: np.asarray(v)[:, :q] for k, v in sim.advance(rounds).items()}
    return m["bytes_sent"], m


# Per live link, for the rounds (λ, μ) = (0, 0), (0.3, 0), (0, 0.5), (0.3, 0.5) of STAGES.
SPARK_CASES = {
    "nesterov/averaged/local": [
        NTK_LINK, NTK_LINK, NTK_LINK, NTK_LINK + MODEL + LOGITS,  # w̄ and g at w̄ beside u
    ],
    "heavy_ball/averaged/local": [NTK_LINK] * 4,  # the Jacobian is at w̄: g is the logits sent
    "nesterov/neighbor/gossip": [
        NTK_LINK + MODEL, NTK_LINK + LOGITS + MODEL, NTK_LINK + MODEL, NTK_LINK + LOGITS + MODEL,
    ],
    "heavy_ball/neighbor/local": [NTK_LINK, NTK_LINK + LOGITS, NTK_LINK, NTK_LINK + LOGITS],
}


@pytest.mark.parametrize("case", list(SPARK_CASES))
def test_spark_options_on_a_ring(case):
    momentum, teacher, buffer = case.split("/")
    options = (("momentum", momentum), ("teacher", teacher), ("buffer", buffer))
    sent, m = _bytes(4, algorithm="spark", spark_stages=STAGES, spark_options=options)
    np.testing.assert_allclose(m["lam"][:, 0], [0, 0.3, 0, 0.3], atol=1e-6)
    np.testing.assert_allclose(m["mu"][:, 0], [0, 0, 0.5, 0.5], atol=1e-6)
    want = 2 * np.array(SPARK_CASES[case], float)[:, None]  # 2 live links per client
    np.testing.assert_allclose(sent, np.broadcast_to(want, sent.shape), rtol=1e-6)


def test_ntk_dfl_on_a_ring_and_with_linearized_tau():
    sent, _ = _bytes(algorithm="ntk_dfl")
    np.testing.assert_allclose(sent, 2 * NTK_LINK, rtol=1e-6)
    sent, _ = _bytes(algorithm="ntk_dfl", tau_selection="linearized")
    np.testing.assert_allclose(sent, 2 * (NTK_LINK - CHOOSE_TAU), rtol=1e-6)


# Σ_l k_l for the digits MLP (layers 100×64 and 10×100): Gaussian k = 200 keeps min(k, rows·cols)
# per layer; Kronecker k = 200 keeps k_r·k_c with k_r = min(rows, round(√k)), k_c = ⌈k / k_r⌉.
PROJECTED = {"gaussian": 200 + 200, "kronecker": 14 * 15 + 10 * 20}


@pytest.mark.parametrize("kind, step", [("gaussian", "exact"), ("kronecker", "backproject")])
def test_projected_spark_on_a_ring(kind, step):
    options = (("projection", kind), ("projection_dim", "200"), ("weight_step", step))
    sent, _ = _bytes(algorithm="spark", spark_stages="0: lam=0, mu=0", spark_options=options)
    link = 2 * MODEL + N * C * PROJECTED[kind] * F + LABELS + LOGITS + CHOOSE_TAU
    if step == "exact":  # residual blocks out for every horizon, Jᵀr back for every horizon
        link += H * N * C * F + H * P * F
    np.testing.assert_allclose(sent, 2 * link, rtol=1e-6)


def test_degree_buckets_on_a_star():
    sent, _ = _bytes(algorithm="ntk_dfl", topology="star", degree_buckets=True)
    np.testing.assert_allclose(sent, np.broadcast_to([5, 1, 1, 1, 1, 1], sent.shape) * NTK_LINK,
                               rtol=1e-6)  # client 0 is the hub


def test_failed_links_and_dropped_clients_on_a_ring():
    sent, m = _bytes(4, algorithm="spark", spark_stages="0: lam=0.3, T=2, mu=0.5",
                     link_failure=0.3, client_dropout=0.2)
    link = NTK_LINK + MODEL + LOGITS  # Nesterov, averaged teacher, λ, μ > 0: as above
    live = sent / link
    np.testing.assert_allclose(live, np.round(live), atol=1e-4)  # whole links only
    live = np.round(live).astype(int)
    active = m["active"].astype(bool)
    assert np.all(live[~active] == 0)  # a dropped client sends nothing
    for r in range(4):
        for q in range(6):
            ring = [(q - 1) % 6, (q + 1) % 6]
            up = sum(bool(active[r, j]) for j in ring) if active[r, q] else 0
            assert live[r, q] <= up  # never more links than live ring neighbours
        # links are symmetric: both ends count a live link, so the links add to an even number
        assert live[r].sum() % 2 == 0
    assert (~active).any() and (live[active] < 2).any()  # the faults happened


def test_ntk_fl_counts_the_sampled_clients():
    sent, m = _bytes(algorithm="ntk_fl", participation=0.5, topology="regular",
                     time_varying=True, clients=6)
    sampled = m["sampled"] > 0
    assert sampled.sum() == 3  # round(0.5 · 6)
    # w received, Jacobian, labels, logits up, |T| candidates in and |T| losses out
    one = MODEL + JACOBIAN + LABELS + LOGITS + CHOOSE_TAU
    np.testing.assert_allclose(sent, np.where(sampled, one, 0.0), rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "dfedavg", "dfedavgm"])
def test_gradient_baselines_send_one_model_per_link(algorithm):
    sent, _ = _bytes(algorithm=algorithm, horizons=RING["horizons"])
    np.testing.assert_allclose(sent, 2 * MODEL, rtol=1e-6)


def test_server_references():
    sent, m = _bytes(algorithm="fedavg", participation=0.5, topology="regular", time_varying=True)
    chosen = np.isfinite(m["train_loss"])  # the sampled clients report a loss
    assert chosen.sum() == 3
    np.testing.assert_allclose(sent, np.where(chosen, 2 * MODEL, 0.0), rtol=1e-6)  # down and up
    sent, _ = _bytes(algorithm="centralized", topology="regular", time_varying=True)
    np.testing.assert_array_equal(sent, 0)
