"""SPARK rounds with λ > 0 and μ > 0 through the simulator against an independent float64 NumPy
computation written from the algorithm (docs/spark.md on top of docs/ntk_step.md and docs/ntk_dfl.md): explicit Jacobians, the
regularized kernel flow integrated by scipy's DOP853, explicit uniform averaging over a fixed ring.

Per round k and client q, with W uniform over the closed neighbourhood S_q:
w̄_q = Σ_j W_qj w_j; the buffer b_q = v_q (local) or Σ_j W_qj v_j (gossip); the Jacobian point
u_q = w̄_q + μ b_q (Nesterov) or w̄_q (heavy-ball); teacher logits g on the pooled rows: f(X_Sq; w̄_q)
(averaged) or, block by block, each neighbour j's f(X_j; w̄_j) (neighbour: the model j holds after
this round's averaging); the NTK step from u_q on the regularized objective gives w_q = u_q + Δ_q
(heavy-ball: + μ b_q); v_q = w_q − w̄_q. Also checked: ``train_loss`` is the plain cross-entropy at
u_q on the pooled data and ``objective`` the regularized loss there.
"""

import numpy as np
import pytest
from _reference import ce, flat_params, forward, ntk_step_with, soft_label, unflat

from spark_tpu import simulator, topology

pytestmark = pytest.mark.slow  # simulations / float64 references: the full tier

ETA0, DECAY, HORIZONS, Q, N, C = 0.05, 0.07, (3, 6, 12), 6, 10, 10
LAM, TEMP, MU, ROUNDS = 0.3, 2.0, 0.5, 3


def _reference(sim, momentum, teacher, buffer):
    adjacency = topology.ring(Q)
    a = sim.setup.arrays
    shapes, theta0 = flat_params(sim.setup.params.layers)
    x = np.asarray(a.x[:Q], np.float64).reshape(Q, N, -1)
    y = np.eye(C)[np.asarray(a.y[:Q])]
    w, v = np.stack([theta0] * Q), np.zeros((Q, theta0.size))
    hoods = [[q, *np.flatnonzero(adjacency[q])] for q in range(Q)]
    losses = []
    for k in range(ROUNDS):
        eta = ETA0 * np.exp(-DECAY * k)
        avg = np.stack([w[h].mean(axis=0) for h in hoods])
        buf = np.stack([v[h].mean(axis=0) for h in hoods]) if buffer == "gossip" else v
        start = avg + MU * buf if momentum == "nesterov" else avg
        new, round_losses = [], []
        for q, hood in enumerate(hoods):
            xs, ys = np.concatenate(x[hood]), np.concatenate(y[hood])
            if teacher == "averaged":
                g = forward(*unflat(avg[q], shapes), xs)[0]
            else:
                g = np.concatenate([forward(*unflat(avg[j], shapes), x[j])[0] for j in hood])
            residual, loss = soft_label(ys, g, LAM, TEMP)
            f_start = forward(*unflat(start[q], shapes), xs)[0]
            round_losses.append((ce(f_start, ys), loss(f_start)))
            step, _ = ntk_step_with(start[q], shapes, xs, residual, loss, eta, HORIZONS)
            new.append(step + (MU * buf[q] if momentum == "heavy_ball" else 0))
        w = np.stack(new)
        v = w - avg
        losses.append(round_losses)
    return theta0, w, v, np.array(losses)  # losses [rounds, Q, (CE, objective)]


@pytest.mark.parametrize(
    "momentum, teacher, buffer",
    [
        ("nesterov", "averaged", "local"),
        ("heavy_ball", "averaged", "local"),
        ("nesterov", "neighbor", "gossip"),
        ("heavy_ball", "neighbor", "gossip"),
    ],
)
def test_spark_rounds_match_float64_reference(momentum, teacher, buffer):
    cfg = simulator.Config(
        algorithm="spark", dataset="digits", clients=Q, samples_per_client=N, rounds=ROUNDS,
        topology="ring", time_varying=False, mixing="uniform", partition="iid", lr=ETA0,
        lr_decay=DECAY, horizons=HORIZONS, devices=2, local_eval_samples=50, eval_every=ROUNDS,
        spark_stages=f"0: lam={LAM}, T={TEMP}, mu={MU}",
        spark_options=(("momentum", momentum), ("teacher", teacher), ("buffer", buffer)),
    )
    sim = simulator.Simulation(cfg)
    theta0, want_w, want_v, want_losses = _reference(sim, momentum, teacher, buffer)
    metrics = {k: np.asarray(m)[:, :Q] for k, m in sim.advance(ROUNDS).items()}
    _, got_w = flat_params(sim.state.params.layers, clients=Q)
    _, got_v = flat_params(sim.state.velocity.layers, clients=Q)
    moved = np.linalg.norm(want_w - theta0, axis=1)
    assert moved.min() > 1e-2  # the rounds did something
    assert np.linalg.norm(want_v, axis=1).min() > 1e-3  # and the buffer is not trivially zero
    err = np.linalg.norm(got_w - want_w, axis=1) / moved
    assert err.max() < 1e-4, err
    err_v = np.linalg.norm(got_v - want_v, axis=1) / np.linalg.norm(want_v, axis=1)
    assert err_v.max() < 1e-3, err_v
    np.testing.assert_allclose(metrics["train_loss"], want_losses[:, :, 0], rtol=1e-5)
    np.testing.assert_allclose(metrics["objective"], want_losses[:, :, 1], rtol=1e-5)
    assert np.all(want_losses[:, :, 0] != want_losses[:, :, 1])  # λ > 0: the two differ
