"""The discrete recursions DGD, ATC and CTA of the linearized clients (seed eqs. 4–7c).

In the reduced coordinates of `linearize` (δ_q = θ_q − θ_0 = B z_q) with the per-client loss
L_q = (c/2)‖f_q − y_q‖² and f_q = f_0,q + C_q z_q, the local gradient is

    η ∇_{z_q} L_q(z_q) = η c (g_q + G_q z_q),   G_q = C_qᵀ C_q,   g_q = C_qᵀ (f_0,q − y_q),

and with W_k the mixing matrix of iteration k (Z stacks the z_q as rows):

    DGD (7a):  Z_{k+1} = W_k Z_k − η ∇L(Z_k)
    ATC (7b):  Z_{k+1} = W_k (Z_k − η ∇L(Z_k))
    CTA (7c):  Ψ_k = W_k Z_k,  Z_{k+1} = Ψ_k − η ∇L(Ψ_k).

W_k ϑ_0 = ϑ_0 for row-stochastic W_k, which is why δ (not ϑ) obeys these homogeneous-start forms.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from jaxtyping import Float

Grad = Callable[[np.ndarray], np.ndarray]


def _dgd(z: np.ndarray, w: np.ndarray, grad: Grad) -> np.ndarray:
    return w @ z - grad(z)


def _atc(z: np.ndarray, w: np.ndarray, grad: Grad) -> np.ndarray:
    return w @ (z - grad(z))


def _cta(z: np.ndarray, w: np.ndarray, grad: Grad) -> np.ndarray:
    psi = w @ z
    return psi - grad(psi)


DISCRETE_UPDATES: dict[str, Callable[[np.ndarray, np.ndarray, Grad], np.ndarray]] = {
    "dgd": _dgd,
    "atc": _atc,
    "cta": _cta,
}


def discrete_trajectory(
    gram: Float[np.ndarray, "clients rank rank"],
    g0: Float[np.ndarray, "clients rank"],
    w_seq: Float[np.ndarray, "steps clients clients"],
    algorithm: str,
    step: float,
) -> Float[np.ndarray, "steps_plus_1 clients rank"]:
    """Iterates the linear recursion of seed eq. 7a, 7b or 7c from z_q = 0.

    Args:
        gram: G_q = C_qᵀ C_q per client.
        g0: g_q = C_qᵀ (f_0,q − y_q) per client.
        w_seq: the mixing matrix of each iteration (repeat a static W).
        algorithm: ``'dgd'``, ``'atc'`` or ``'cta'``.
        step: η·c, the step size times the loss scale.

    Returns:
        Z_k for k = 0 … T (T = ``len(w_seq)``), ``[T+1, Q, r]``.
    """
    update = DISCRETE_UPDATES[algorithm]

    def grad(z: np.ndarray) -> np.ndarray:
        return step * (g0 + (gram @ z[:, :, None])[:, :, 0])

    zs = [np.zeros_like(g0)]
    for w in w_seq:
        zs.append(update(zs[-1], w, grad))
    return np.stack(zs)
