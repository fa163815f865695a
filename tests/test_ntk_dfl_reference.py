"""Two NTK-DFL rounds through the simulator against an independent float64 NumPy computation
written from SPEC sections 3 and 5: explicit Jacobians, explicit ODE integration (scipy DOP853),
explicit uniform averaging over a ring."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from spark_tpu import simulator

ETA0, DECAY, HORIZONS, Q = 0.05, 0.07, (3, 6, 12), 6


def _forward(w1, b1, w2, b2, x):
    z = x @ w1.T + b1
    return np.maximum(z, 0) @ w2.T + b2, z


def _jacobian(w1, b1, w2, b2, x):
    """J [N, C, P] in the parameter order (W1, b1, W2, b2), row-major."""
    _, z = _forward(w1, b1, w2, b2, x)
    h, act = np.maximum(z, 0), (z > 0).astype(float)
    n, c, hid = x.shape[0], w2.shape[0], w1.shape[0]
    g = w2[None, :, :] * act[:, None, :]  # d f_c / d z_j   [N, C, H]
    d_w1 = g[:, :, :, None] * x[:, None, None, :]  # [N, C, H, D]
    d_w2 = np.zeros((n, c, c, hid))
    d_w2[:, np.arange(c), np.arange(c), :] = h[:, None, :]
    d_b2 = np.broadcast_to(np.eye(c), (n, c, c))
    return np.concatenate(
        [d_w1.reshape(n, c, -1), g, d_w2.reshape(n, c, -1), d_b2], axis=2
    )


def _softmax(f):
    e = np.exp(f - f.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce(f, y):
    logp = f - f.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(np.sum(y * logp, axis=1))


def _unflat(theta, shapes):
    out, i = [], 0
    for s in shapes:
        out.append(theta[i : i + int(np.prod(s))].reshape(s))
        i += int(np.prod(s))
    return out


def _ntk_step(theta, shapes, x, y, eta):
    """SPEC 3 with explicit J and an accurate ODE solution at the grid points."""
    params = _unflat(theta, shapes)
    f0, _ = _forward(*params, x)
    jac = _jacobian(*params, x)
    n, c, _ = jac.shape
    kernel = np.einsum("ncp,mcp->nm", jac, jac) / c
    rhs = lambda s, f: (-(kernel @ (_softmax(f.reshape(n, c)) - y)) / n).ravel()  # noqa: E731
    grid = eta * np.arange(max(HORIZONS) + 1)
    sol = solve_ivp(rhs, (0, grid[-1]), f0.ravel(), method="DOP853", t_eval=grid,
                    rtol=1e-11, atol=1e-12)
    fs = sol.y.T.reshape(-1, n, c)
    best = None
    for tau in HORIZONS:
        r = sum(_softmax(fs[t]) - y for t in range(tau))
        step = -(eta / n) * np.einsum("ncp,nc->p", jac, r)
        loss = _ce(_forward(*_unflat(theta + step, shapes), x)[0], y)
        if best is None or loss < best[0]:
            best = (loss, theta + step)
    return best[1]


@pytest.mark.parametrize("devices", [1, 4])
def test_two_ntk_dfl_rounds_match_float64_reference(devices):
    cfg = simulator.Config(
        algorithm="ntk_dfl", dataset="digits", clients=Q, samples_per_client=10, rounds=2,
        topology="ring", time_varying=False, mixing="uniform", partition="iid", lr=ETA0,
        lr_decay=DECAY, horizons=HORIZONS, devices=devices, local_eval_samples=50,
    )
    sim = simulator.Simulation(cfg)
    a = sim.setup.arrays
    layers = sim.setup.params.layers
    shapes = [s for layer in layers for s in (layer.weight.shape, layer.bias.shape)]
    theta0 = np.concatenate(
        [np.asarray(v, np.float64).ravel() for layer in layers for v in (layer.weight, layer.bias)]
    )
    x = np.asarray(a.x[:Q], np.float64).reshape(Q, a.x.shape[1], -1)
    y = np.eye(10)[np.asarray(a.y[:Q])]
    thetas = np.stack([theta0] * Q)
    for k in range(2):
        eta = ETA0 * np.exp(-DECAY * k)
        new = []
        for q in range(Q):
            hood = [(q - 1) % Q, q, (q + 1) % Q]
            avg = thetas[hood].mean(axis=0)
            new.append(_ntk_step(avg, shapes, np.concatenate(x[hood]), np.concatenate(y[hood]), eta))
        thetas = np.stack(new)
    sim.advance(2)
    got_layers = sim.state.params.layers
    got = np.concatenate(
        [np.asarray(v, np.float64)[:Q].reshape(Q, -1) for layer in got_layers
         for v in (layer.weight, layer.bias)], axis=1
    )
    moved = np.linalg.norm(thetas - theta0, axis=1)
    err = np.linalg.norm(got - thetas, axis=1)
    assert moved.min() > 1e-2  # the rounds did something
    assert err.max() / moved.min() < 1e-4, err / moved
