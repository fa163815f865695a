"""Learning-dynamics predictions (docs/dynamics.md) against independent truth.

- the explicit Q·P weight-space systems of seed eqs. 7a–c and 12a–c, built with Kronecker products
  and solved with scipy.linalg.expm (the reduction to Q·r coordinates must reproduce them);
- real DGD/ATC/CTA training of an affine model (where the linearization is exact);
- the O(η) gap between flow and discrete recursion;
- real training of the width-256 NTK sigmoid network on two-moons.
"""

import itertools

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import make_moons

from spark_tpu import dynamics, topology

ALGORITHMS = ("dgd", "atc", "cta")


def _mlp(width: int, n_in: int, n_out: int, key: int = 0):
    """An NTK-parameterized one-hidden-layer sigmoid MLP (s_w = 1, s_b = 0.1), plain pytree."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(key), 4)
    f64 = jnp.float64
    params = {
        "w1": jax.random.normal(k1, (width, n_in), f64),
        "b1": jax.random.normal(k2, (width,), f64),
        "w2": jax.random.normal(k3, (n_out, width), f64),
        "b2": jax.random.normal(k4, (n_out,), f64),
    }

    def f(p, x):
        h = jax.nn.sigmoid(p["w1"] @ x / np.sqrt(n_in) + 0.1 * p["b1"])
        out = p["w2"] @ h / np.sqrt(width) + 0.1 * p["b2"]
        return out if n_out > 1 else out[0]

    return f, params


def _affine(n_in: int):
    params = {"w": jnp.zeros((n_in,), jnp.float64), "b": jnp.zeros((), jnp.float64)}
    return (lambda p, x: x @ p["w"] + p["b"]), params


def _random_stochastic(q: int, seed: int) -> np.ndarray:
    """A dense, non-symmetric, row-stochastic W (not doubly stochastic)."""
    a = np.random.default_rng(seed).uniform(0.1, 1.0, size=(q, q))
    return a / a.sum(axis=1, keepdims=True)


def _weight_space(f, params0, x, y, w, algorithm, s):
    """A, u, J_bd, f0, ϑ0 of seed eq. 12a/b/c in the full Q·P weight space (u incl. Ψ0 ϑ0)."""
    q = x.shape[0]
    flat0, unravel = jax.flatten_util.ravel_pytree(params0)
    p = flat0.shape[0]
    fq = jax.vmap(lambda fl, xi: jnp.reshape(f(unravel(fl), xi), (-1,)), in_axes=(None, 0))
    jac = [np.asarray(jax.jacfwd(fq)(flat0, x[i])).reshape(-1, p) for i in range(q)]
    f0 = np.concatenate([np.asarray(fq(flat0, x[i])).reshape(-1) for i in range(q)])
    j_bd = scipy.linalg.block_diag(*jac)
    psi0 = j_bd.T @ j_bd
    w_big, w_hat = np.kron(w, np.eye(p)), np.kron(w - np.eye(q), np.eye(p))
    theta0 = np.tile(np.asarray(flat0), q)
    drive = j_bd.T @ (f0 - y.reshape(-1)) - psi0 @ theta0
    a = {"dgd": w_hat - s * psi0, "atc": w_hat - s * w_big @ psi0, "cta": w_hat - s * psi0 @ w_big}
    u = -s * (w_big @ drive if algorithm == "atc" else drive)
    return a[algorithm], u, j_bd, f0, theta0


def _weight_space_flow(a, u, theta0, t):
    n = a.shape[0]
    block = np.zeros((n + 1, n + 1))
    block[:n, :n], block[:n, n] = a, u
    e = scipy.linalg.expm(block * t)
    return e[:n, :n] @ theta0 + e[:n, n]


def _weight_space_discrete(j_bd, f0, y, theta0, w_seq, algorithm, s, p):
    """Seed eqs. 7a–c with the linearized gradient s·J_bdᵀ(f0 + J_bd(ϑ − ϑ0) − y)."""
    grad = lambda th: s * j_bd.T @ (f0 + j_bd @ (th - theta0) - y.reshape(-1))
    th, out = theta0.copy(), [theta0.copy()]
    for w in w_seq:
        wb = np.kron(w, np.eye(p))
        if algorithm == "dgd":
            th = wb @ th - grad(th)
        elif algorithm == "atc":
            th = wb @ (th - grad(th))
        else:
            th = wb @ th - grad(wb @ th)
        out.append(th)
    return np.stack(out)


def _small_problem(width):
    q, d = 4, 3
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(q, d, 2)), rng.normal(size=(q, d, 2))
    f, params0 = _mlp(width, 2, 2, key=3)
    return f, params0, x, y


@pytest.mark.parametrize("width", [6, 2], ids=["r<P", "r=P"])
@pytest.mark.parametrize("w_kind", ["metropolis_ring", "nonsymmetric"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reduced_flow_equals_weight_space_expm(algorithm, w_kind, width):
    f, params0, x, y = _small_problem(width)
    q, d = x.shape[:2]
    w = (
        topology.metropolis_hastings(topology.ring(q))
        if w_kind != "nonsymmetric"
        else _random_stochastic(q, 7)
    )
    s, eta, steps = 1.0 / (d * q), 2.0, 12  # c = 1/(DQ): eq. 12 literally
    res = dynamics.predict(
        f, params0, (x, y), w, algorithm=algorithm, eta=eta, steps=steps, loss_scale=s
    )
    a, u, j_bd, f0, theta0 = _weight_space(f, params0, x, y, w, algorithm, eta * s)
    p = theta0.size // q
    for t in (1, 5, steps):
        theta_t = _weight_space_flow(a, u, theta0, float(t))
        got = res["flat_params0"][None] + res["z_flow"][t] @ res["basis"].T
        np.testing.assert_allclose(got.reshape(-1), theta_t, rtol=0, atol=1e-10)
        outs = f0 + j_bd @ (theta_t - theta0)
        np.testing.assert_allclose(res["outputs_flow"][t].reshape(-1), outs, rtol=0, atol=1e-10)
    # The flow moved far from θ_0, so agreement is not trivial.
    assert np.abs(theta_t - theta0).max() > 1e-2
    np.testing.assert_allclose(res["params_flow"].reshape(-1), theta_t, rtol=0, atol=1e-10)
    disc = _weight_space_discrete(j_bd, f0, y, theta0, [w] * steps, algorithm, eta * s, p)
    got = res["flat_params0"][None, None] + res["z_discrete"] @ res["basis"].T
    np.testing.assert_allclose(got.reshape(steps + 1, -1), disc, rtol=0, atol=1e-10)


@pytest.mark.parametrize("graph", ["ring", "star", "complete"])
@pytest.mark.parametrize("algorithm", ["atc", "cta"])
def test_similarity_transform_flow_equals_van_loan(algorithm, graph):
    # symmetric W and s·λ_max(G_q) < 1: solve_flow takes the eigh-after-similarity path, while
    # flow_trajectory(flow_system(...)) sees a non-symmetric A and uses Van Loan's expm.
    q, r = 5, 4
    rng = np.random.default_rng(0)
    c = rng.normal(size=(q, 3, r))
    gram, g0 = np.einsum("qna,qnb->qab", c, c), rng.normal(size=(q, r))
    step = 0.8 / np.linalg.eigvalsh(gram).max()
    w = topology.metropolis_hastings(getattr(topology, graph)(q))
    a, u = dynamics.flow_system(gram, g0, w, algorithm, step)
    assert not np.allclose(a, a.T)
    expected = dynamics.flow_trajectory(a, u, 30)
    got = dynamics.solve_flow(gram, g0, w, algorithm, step, 30)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reduced_discrete_time_varying_w_equals_weight_space(algorithm):
    f, params0, x, y = _small_problem(6)
    q, d = x.shape[:2]
    w_seq = np.stack([_random_stochastic(q, k) for k in range(10)])
    res = dynamics.predict(f, params0, (x, y), w_seq, algorithm=algorithm, eta=0.3)
    assert "loss_flow" not in res
    _, _, j_bd, f0, theta0 = _weight_space(f, params0, x, y, w_seq[0], algorithm, 0.3 / d)
    disc = _weight_space_discrete(j_bd, f0, y, theta0, w_seq, algorithm, 0.3 / d, theta0.size // q)
    got = res["flat_params0"][None, None] + res["z_discrete"] @ res["basis"].T
    np.testing.assert_allclose(got.reshape(11, -1), disc, rtol=0, atol=1e-10)


def _affine_data(q=8, d=20, n_in=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(q, d, n_in)) / np.sqrt(n_in)
    y = (x @ rng.normal(size=n_in) > 0).astype(np.float64)
    return x, y


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("w_kind", ["complete", "nonsymmetric", "sequence"])
def test_affine_discrete_prediction_equals_training(algorithm, w_kind):
    x, y = _affine_data()
    q = x.shape[0]
    f, params0 = _affine(x.shape[-1])
    w = {
        "complete": topology.metropolis_hastings(topology.complete(q)),
        "nonsymmetric": _random_stochastic(q, 3),
        "sequence": np.stack([_random_stochastic(q, k) for k in range(60)]),
    }[w_kind]
    steps = None if w_kind == "sequence" else 60
    x_test = np.random.default_rng(5).normal(size=(7, x.shape[-1]))
    kw = {"algorithm": algorithm, "eta": 0.5, "steps": steps}
    pred = dynamics.predict(f, params0, (x, y), w, test_x=x_test, **kw)
    real = dynamics.simulate(f, params0, (x, y), w, test_x=x_test, **kw)
    assert real["loss"][-1].mean() < 0.7 * real["loss"][0].mean()  # it learned something
    assert dynamics.max_relative_error(pred["loss_discrete"], real["loss"]) <= 1e-8
    np.testing.assert_allclose(
        pred["test_outputs_discrete"], real["test_outputs"], rtol=0, atol=1e-9
    )
    flat_real = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(real["params"])
    np.testing.assert_allclose(pred["params_discrete"], flat_real, rtol=0, atol=1e-9)


def _flow_gap(eta: float) -> float:
    x, y = _affine_data(seed=2)
    f, params0 = _affine(x.shape[-1])
    w = topology.metropolis_hastings(topology.ring(x.shape[0]))
    res = dynamics.predict(f, params0, (x, y), w, algorithm="atc", eta=eta, steps=round(20 / eta))
    return dynamics.max_relative_error(res["loss_flow"], res["loss_discrete"])


def test_flow_discrete_gap_is_first_order_in_eta():
    # Same horizon η·T = 20, so the loss decays equally; only the discretization error changes.
    gaps = [_flow_gap(eta) for eta in (0.2, 0.1, 0.05)]
    assert gaps[0] < 0.05
    for coarse, fine in itertools.pairwise(gaps):
        assert 0.4 < fine / coarse < 0.6, gaps


def _moons(q, d, seed=0):
    x, y = make_moons(q * d, noise=0.1, random_state=seed)
    return x.reshape(q, d, 2), y.reshape(q, d).astype(np.float64)


@pytest.fixture(scope="module")
def moons_width256():
    """Q = 8, D = 200 two-moons and the width-256 network, linearized once for all graphs."""
    x, y = _moons(8, 200)
    f, params0 = _mlp(256, 2, 1)
    return f, params0, x, y, dynamics.linearize(f, params0, x)


@pytest.mark.parametrize("graph", ["ring", "star", "complete"])
def test_width256_moons_prediction_tracks_training(graph, moons_width256):
    f, params0, x, y, lin = moons_width256
    w = topology.metropolis_hastings(getattr(topology, graph)(x.shape[0]))
    for algorithm in ALGORITHMS:
        kw = {"algorithm": algorithm, "eta": 0.1, "steps": 200}
        pred = dynamics.predict_linearized(lin, y, w, **kw)
        real = dynamics.simulate(f, params0, (x, y), w, **kw)["loss"]
        # η = 0.1 (not the seed's 1e-4) so the loss halves and a constant guess would fail.
        assert real[-1].max() < 0.6 * real[0].min()
        assert dynamics.max_relative_error(pred["loss_discrete"], real) <= 1e-2
        assert dynamics.max_relative_error(pred["loss_flow"], real) <= 1e-2


def test_equinox_module_via_partition():
    # An affine Equinox module (linear in its parameters), so the prediction must be exact.
    model = eqx.nn.Linear(3, 2, dtype=jnp.float64, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    f = lambda p, xi: eqx.combine(p, static)(xi)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 6, 3)), rng.normal(size=(4, 6, 2))
    w = topology.metropolis_hastings(topology.star(4))
    pred = dynamics.predict(f, params, (x, y), w, algorithm="cta", eta=0.3, steps=30)
    real = dynamics.simulate(f, params, (x, y), w, algorithm="cta", eta=0.3, steps=30)
    assert pred["outputs_flow"].shape == (31, 4, 6, 2)
    assert real["loss"][-1].mean() < 0.9 * real["loss"][0].mean()
    assert dynamics.max_relative_error(pred["loss_discrete"], real["loss"]) <= 1e-8
    final = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(real["params"])
    np.testing.assert_allclose(pred["params_discrete"], final, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"algorithm": "gossip"}, "algorithm='gossip'"),
        ({"eta": -1.0}, "eta=-1.0"),
        ({"w": np.eye(3)}, r"w has shape \(3, 3\)"),
        ({"w": np.full((4, 4), 0.5)}, "w: the mixing matrix must be"),
        ({"w": np.stack([np.eye(4)] * 3), "steps": 5}, "steps=5 but w holds 3"),
        ({"steps": None}, "steps is required"),
        ({"y": np.zeros((4, 5))}, r"y has shape \(4, 5\)"),
    ],
)
def test_errors_name_the_bad_value(kwargs, match):
    f, params0 = _affine(3)
    x = np.ones((4, 6, 3))
    args = {
        "algorithm": "dgd",
        "eta": 0.1,
        "steps": 5,
        "w": np.full((4, 4), 0.25),
        "y": np.zeros((4, 6)),
    }
    args.update(kwargs)
    w, y = args.pop("w"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        dynamics.predict(f, params0, (x, y), w, **args)


def test_plot_prediction_writes_png(tmp_path):
    x, y = _affine_data(q=4, d=5, n_in=3)
    f, params0 = _affine(3)
    w = topology.metropolis_hastings(topology.ring(4))
    res = dynamics.predict(f, params0, (x, y), w, eta=0.5, steps=10)
    path = tmp_path / "p.png"
    dynamics.plot_prediction(res, str(path), observed=res["loss_discrete"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_float32_inputs_are_predicted_in_float64():
    """The predictions run in float64 whatever they are given (docs/dynamics.md): a float32 model
    and data, the production dtype of training runs, are cast exactly to float64 first, so their
    prediction is the float64 one of the same values, to float64 round-off (not float32's 1e-7),
    and so is the training run the prediction is checked against."""
    f, params0, x, y = _small_problem(6)
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params0)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params32)
    x64, y64 = x32.astype(np.float64), y32.astype(np.float64)
    w = topology.metropolis_hastings(topology.ring(x.shape[0]))
    kw = {"algorithm": "atc", "eta": 0.1, "steps": 30}
    got = dynamics.predict(f, params32, (x32, y32), w, **kw)
    want = dynamics.predict(f, params64, (x64, y64), w, **kw)
    for key in ("loss_discrete", "loss_flow"):
        assert np.asarray(got[key]).dtype == np.float64
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12)
    real32 = dynamics.simulate(f, params32, (x32, y32), w, **kw)["loss"]
    real64 = dynamics.simulate(f, params64, (x64, y64), w, **kw)["loss"]
    np.testing.assert_allclose(real32, real64, rtol=1e-12)
