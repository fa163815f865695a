"""The linearized gradient flows of DGD, ATC and CTA and their closed form (seed eqs. 8, 12–14).

In the reduced coordinates z = [z_1; …; z_Q] (`linearize`), with W ≡ W ⊗ I_r, Ŵ = W − I,
G = blkdiag(C_qᵀ C_q), g = [C_qᵀ (f_0,q − y_q)]_q and s = η c:

    DGD (12a):  ż = (Ŵ − s G) z − s g
    ATC (12b):  ż = (Ŵ − s W G) z − s W g
    CTA (12c):  ż = (Ŵ − s G W) z − s g,

i.e. ż = A z + u with z(0) = 0. Seed eq. 12 is the case c = 1/(DQ) (the gradient of the global
objective of eq. 3); time t is measured in iterations (the Euler step h = 1 of eq. 8 is eq. 7).
The solution (eqs. 13–14) is z(t) = ∫_0^t e^{A(t−τ)} u dτ:

- A symmetric (DGD with a symmetric W): one ``eigh``, A = U diag(λ) Uᵀ, and
  z(t) = U diag((e^{λt} − 1)/λ) Uᵀ u for every t at once;
- ATC or CTA with a symmetric W and H = I − s G positive definite (s λ_max(G_q) < 1, the usual
  regime): a similarity transform makes A symmetric. With S = H^{1/2} (block diagonal) and the
  symmetric M = S W S − I, ATC has A = W H − I = S^{-1} M S and CTA has A = H W − I = S M S^{-1},
  so one ``eigh`` of M again serves every t;
- otherwise Van Loan's block exponential: exp([[A, u], [0, 0]]) = [[e^A, ∫_0^1 e^{Aτ} dτ u], [0, 1]],
  computed once with ``scipy.linalg.expm``, then stepped exactly through t = 1, 2, …, T.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from jaxtyping import Float

SYMMETRY_ATOL = 1e-14
MIN_H_EIGENVALUE = 1e-3  # below this, S^{-1} = H^{-1/2} is ill-conditioned: use Van Loan


def _coupling(w: np.ndarray, gram: np.ndarray, algorithm: str) -> np.ndarray:
    """The (Q·r)×(Q·r) matrix G, W G or G W of eqs. 12a–c, built block by block."""
    eye = np.eye(w.shape[0], dtype=np.float64)
    blocks = {
        "dgd": lambda: np.einsum("ij,jab->iajb", eye, gram),
        "atc": lambda: np.einsum("ij,jab->iajb", w, gram),
        "cta": lambda: np.einsum("ij,iab->iajb", w, gram),
    }[algorithm]()
    n = gram.shape[0] * gram.shape[1]
    return blocks.reshape(n, n)


def flow_system(
    gram: Float[np.ndarray, "clients rank rank"],
    g0: Float[np.ndarray, "clients rank"],
    w: Float[np.ndarray, "clients clients"],
    algorithm: str,
    step: float,
) -> tuple[Float[np.ndarray, "n n"], Float[np.ndarray, " n"]]:
    """The state matrix A and the constant input u of seed eq. 12a, 12b or 12c (n = Q·r).

    Args:
        gram: G_q = C_qᵀ C_q per client.
        g0: g_q = C_qᵀ (f_0,q − y_q) per client.
        w: the static mixing matrix.
        algorithm: ``'dgd'``, ``'atc'`` or ``'cta'``.
        step: s = η·c.

    Returns:
        ``(A, u)`` with ż = A z + u.
    """
    r = gram.shape[1]
    hat = np.kron(w - np.eye(w.shape[0]), np.eye(r))
    a = hat - step * _coupling(w, gram, algorithm)
    u = -step * (w @ g0 if algorithm == "atc" else g0).reshape(-1)
    return a, u


def _symmetric_solution(a: np.ndarray, u: np.ndarray, times: np.ndarray) -> np.ndarray:
    lam, vec = np.linalg.eigh(0.5 * (a + a.T))
    coef = vec.T @ u
    lt = lam[None, :] * times[:, None]
    safe = np.where(lam == 0.0, 1.0, lam)
    phi = np.where(lam[None, :] == 0.0, times[:, None], np.expm1(lt) / safe[None, :])
    return (phi * coef[None, :]) @ vec.T


def _van_loan_solution(a: np.ndarray, u: np.ndarray, steps: int) -> np.ndarray:
    n = a.shape[0]
    block = np.zeros((n + 1, n + 1), dtype=np.float64)
    block[:n, :n], block[:n, n] = a, u
    e = scipy.linalg.expm(block)
    phi, gamma = e[:n, :n], e[:n, n]
    zs = [np.zeros(n, dtype=np.float64)]
    for _ in range(steps):
        zs.append(phi @ zs[-1] + gamma)
    return np.stack(zs)


def flow_trajectory(
    a: Float[np.ndarray, "n n"], u: Float[np.ndarray, " n"], steps: int
) -> Float[np.ndarray, "steps_plus_1 n"]:
    """z(t) = ∫_0^t e^{A(t−τ)} u dτ at t = 0, 1, …, ``steps`` (seed eqs. 13–14), for any A.

    Uses one symmetric eigendecomposition when A is symmetric (to 1e-14), else Van Loan's block
    exponential (module docstring).
    """
    if np.allclose(a, a.T, rtol=0.0, atol=SYMMETRY_ATOL):
        return _symmetric_solution(a, u, np.arange(steps + 1, dtype=np.float64))
    return _van_loan_solution(a, u, steps)


def _sqrt_blocks(gram: np.ndarray, step: float):
    """H_q^{1/2} and H_q^{-1/2} for H_q = I − s G_q, or None if H is not safely positive definite."""
    gam, vec = np.linalg.eigh(gram)
    h = 1.0 - step * gam
    if h.min() < MIN_H_EIGENVALUE:
        return None
    vec_t = vec.transpose(0, 2, 1)
    half = (vec * np.sqrt(h)[:, None, :]) @ vec_t
    inv_half = (vec / np.sqrt(h)[:, None, :]) @ vec_t
    return half, inv_half


def _apply_blocks(blocks: np.ndarray, z: np.ndarray) -> np.ndarray:
    """blkdiag(blocks) applied to the last axis of z (length Q·r)."""
    q, r = blocks.shape[:2]
    zq = z.reshape(*z.shape[:-1], q, r)
    return (blocks @ zq[..., None]).reshape(z.shape)


def _similarity_solution(gram, g0, w, algorithm, step, steps):
    sqrt_blocks = _sqrt_blocks(gram, step)
    if sqrt_blocks is None:
        return None
    half, inv_half = sqrt_blocks
    n = gram.shape[0] * gram.shape[1]
    # Block (i, j) of S W S is w_ij H_i^{1/2} H_j^{1/2}: Q² BLAS products, not a naive einsum.
    blocks = half[:, None] @ (w[:, :, None, None] * half[None, :])
    m = blocks.transpose(0, 2, 1, 3).reshape(n, n) - np.eye(n)
    left, right = (inv_half, half) if algorithm == "atc" else (half, inv_half)
    u = -step * (w @ g0 if algorithm == "atc" else g0).reshape(-1)
    times = np.arange(steps + 1, dtype=np.float64)
    return _apply_blocks(left, _symmetric_solution(m, _apply_blocks(right, u), times))


def solve_flow(
    gram: Float[np.ndarray, "clients rank rank"],
    g0: Float[np.ndarray, "clients rank"],
    w: Float[np.ndarray, "clients clients"],
    algorithm: str,
    step: float,
    steps: int,
) -> Float[np.ndarray, "steps_plus_1 n"]:
    """The flow of seed eq. 12a/b/c at t = 0 … ``steps``, by the cheapest exact method.

    DGD with a symmetric W: ``eigh`` of A. ATC/CTA with a symmetric W and s λ_max(G_q) < 1 − 1e-3:
    ``eigh`` after the similarity transform S = (I − s G)^{1/2}. Otherwise: Van Loan's ``expm``.
    Arguments are as in `flow_system`.
    """
    symmetric = np.allclose(w, w.T, rtol=0.0, atol=SYMMETRY_ATOL)
    if symmetric and algorithm != "dgd":
        z = _similarity_solution(gram, g0, w, algorithm, step, steps)
        if z is not None:
            return z
    a, u = flow_system(gram, g0, w, algorithm, step)
    return flow_trajectory(a, u, steps)
