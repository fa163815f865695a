"""Independent float64 NumPy references for the NTK algorithms' tests, written from docs/ntk_step.md:
an explicit Jacobian of the 2-layer ReLU MLP, the kernel flow integrated by scipy's DOP853 at the
grid points, and the horizon chosen by the real network's cross-entropy."""

import numpy as np
from scipy.integrate import solve_ivp


def forward(w1, b1, w2, b2, x):
    """Logits and hidden pre-activations of the MLP."""
    z = x @ w1.T + b1
    return np.maximum(z, 0) @ w2.T + b2, z


def jacobian(w1, b1, w2, b2, x):
    """J [N, C, P] in the parameter order (W1, b1, W2, b2), row-major."""
    _, z = forward(w1, b1, w2, b2, x)
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


def softmax(f):
    e = np.exp(f - f.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ce(f, y):
    """Mean cross-entropy of logits f against one-hot y."""
    logp = f - f.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(np.sum(y * logp, axis=1))


def unflat(theta, shapes):
    out, i = [], 0
    for s in shapes:
        out.append(theta[i : i + int(np.prod(s))].reshape(s))
        i += int(np.prod(s))
    return out


def flat_params(layers, clients=None):
    """(shapes, theta) of an MLP's params: theta [P] float64, or [clients, P] for stacked ones."""
    leaves = [v for layer in layers for v in (layer.weight, layer.bias)]
    if clients is None:
        return [v.shape for v in leaves], np.concatenate(
            [np.asarray(v, np.float64).ravel() for v in leaves]
        )
    return [v.shape[1:] for v in leaves], np.concatenate(
        [np.asarray(v, np.float64)[:clients].reshape(clients, -1) for v in leaves], axis=1
    )


def ntk_step(theta, shapes, x, y, eta, horizons):
    """docs/ntk_step.md with explicit J and an accurate ODE solution at the grid points: (θ + Δθ_τ*, τ*)."""
    residual, loss = (lambda f: softmax(f) - y), (lambda f: ce(f, y))
    return ntk_step_with(theta, shapes, x, residual, loss, eta, horizons)


def ntk_step_with(theta, shapes, x, residual, loss, eta, horizons):
    """docs/ntk_step.md for any objective: ``residual(f)`` = Ñ·∂loss/∂f drives the kernel flow and τ* minimizes
    ``loss`` of the real network on the same rows: (θ + Δθ_τ*, τ*)."""
    params = unflat(theta, shapes)
    f0, _ = forward(*params, x)
    jac = jacobian(*params, x)
    n, c, _ = jac.shape
    kernel = np.einsum("ncp,mcp->nm", jac, jac) / c
    rhs = lambda s, f: (-(kernel @ residual(f.reshape(n, c))) / n).ravel()
    grid = eta * np.arange(max(horizons) + 1)
    sol = solve_ivp(rhs, (0, grid[-1]), f0.ravel(), method="DOP853", t_eval=grid,
                    rtol=1e-11, atol=1e-12)
    fs = sol.y.T.reshape(-1, n, c)
    best = None
    for tau in horizons:
        r = sum(residual(fs[t]) for t in range(tau))
        step = -(eta / n) * np.einsum("ncp,nc->p", jac, r)
        value = loss(forward(*unflat(theta + step, shapes), x)[0])
        if best is None or value < best[0]:
            best = (value, theta + step, tau)
    return best[1], best[2]


def log_softmax(f):
    z = f - f.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def soft_label(y, g, lam, temp):
    """SPARK's regularized objective (docs/spark.md §3) against one-hot y and teacher logits g:
    (residual, loss) with residual = (1 − λ)(softmax(f) − y) + λT(softmax(f/T) − softmax(g/T)) and
    loss = (1 − λ) CE(f, y) + λT² mean KL(softmax(g/T) ‖ softmax(f/T))."""

    def residual(f):
        return (1 - lam) * (softmax(f) - y) + lam * temp * (softmax(f / temp) - softmax(g / temp))

    def loss(f):
        lt, ls = log_softmax(g / temp), log_softmax(f / temp)
        kl = np.sum(np.exp(lt) * (lt - ls), axis=1).mean()
        return (1 - lam) * ce(f, y) + lam * temp**2 * kl

    return residual, loss
