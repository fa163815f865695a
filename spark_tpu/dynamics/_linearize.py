"""The shared linearization at θ_0 and its exact Q·r reduction (docs/dynamics.md §2–3; eq. 11 of arXiv 2409.15267).

All clients start from the same θ_0, so the block-diagonal Jacobian ∂f/∂ϑ_0 of seed eq. 11 has the
blocks J_q = ∂f(X_q; θ_0)/∂θ (client q's own data, the shared parameters). Stack them into
J ∈ R^{QDM×P} and take K = J Jᵀ = V Λ Vᵀ (every cross-client block included), r = rank K,

    C = V_r Λ_r^{1/2} ∈ R^{QDM×r},        B = Jᵀ V_r Λ_r^{-1/2} ∈ R^{P×r}  (orthonormal columns).

Every δ_q = θ_q − θ_0 reached by DGD, ATC or CTA from δ_q = 0 lies in span(B) = row space of J
(each update adds some J_sᵀ v and mixes), so δ_q = B z_q, J_q δ_q = C_q z_q and Bᵀ J_qᵀ = C_qᵀ with
C_q the q-th row block of C. The recursions (seed eqs. 7a–c) and the flows (eqs. 12a–c) therefore
run exactly in the Q·r coordinates z, with C_q in place of J_q. Test points use the cross-kernel:
J_test B = J_test Jᵀ V_r Λ_r^{-1/2}.

Numerics: Jacobians come from JAX under a scoped ``jax.enable_x64(True)``; the eigendecomposition
and everything after it is numpy/LAPACK float64 (the matrices are small and their size r depends
on the data, so there is nothing for a JIT to reuse).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from absl import logging
from jaxtyping import Float

ModelFn = Callable[[Any, Any], Any]

BAD_CLIENT_X = (
    "client inputs must have shape [clients, samples, ...] with at least one client and sample; "
    "got shape {shape}."
)
EMPTY_KERNEL = (
    "the stacked Jacobian J of the clients' data at θ_0 is zero (K = J Jᵀ has rank 0): the model's "
    "outputs do not depend on its parameters at θ_0, so there are no dynamics to predict."
)


class Linearization(NamedTuple):
    """The reduced linear model of every client around θ_0 (module docstring for the math).

    Attributes:
        f0: f(X_q; θ_0), flattened per client, ``[clients, D·M]``.
        c_blocks: the row blocks C_q of C = V_r Λ_r^{1/2}, ``[clients, D·M, r]``.
        basis: B = Jᵀ V_r Λ_r^{-1/2} (orthonormal columns), ``[P, r]``: δ_q = B z_q.
        eigenvalues: Λ_r, the kept eigenvalues of K in decreasing order, ``[r]``.
        flat_params0: θ_0 flattened by ``ravel_pytree``, ``[P]``.
        unravel: turns a flat ``[P]`` vector back into the params pytree.
        f0_test: f(X_test; θ_0) flattened, ``[N_test·M]``, or None.
        c_test: J_test B, ``[N_test·M, r]``, or None.
        out_shape: the shape of f on one example (``()`` or ``(M,)``).
    """

    f0: Float[np.ndarray, "clients outs"]
    c_blocks: Float[np.ndarray, "clients outs rank"]
    basis: Float[np.ndarray, "params rank"]
    eigenvalues: Float[np.ndarray, " rank"]
    flat_params0: Float[np.ndarray, " params"]
    unravel: Callable[[Any], Any]
    f0_test: Float[np.ndarray, " test_outs"] | None
    c_test: Float[np.ndarray, "test_outs rank"] | None
    out_shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.shape[0])


@functools.partial(jax.jit, static_argnums=0)
def _outputs_and_jacobian_batch(model_fn: ModelFn, params: Any, xb: jax.Array):
    """f on a batch ``[B·M]`` and its Jacobian ``[B·M, P]``, columns in ``ravel_pytree`` order."""

    def f_vec(p, xi):
        return jnp.reshape(model_fn(p, xi), (-1,))

    outs = jax.vmap(f_vec, in_axes=(None, 0))(params, xb)
    jac = jax.vmap(jax.jacrev(f_vec), in_axes=(None, 0))(params, xb)
    leaves = [a.reshape(*outs.shape, -1) for a in jax.tree_util.tree_leaves(jac)]
    return outs.reshape(-1), jnp.concatenate(leaves, axis=-1).reshape(outs.size, -1)


def _outputs_and_jacobian(model_fn: ModelFn, params, x, chunk: int):
    """f(x_i; θ_0) stacked ``[N·M]`` and the Jacobian ``[N·M, P]``, ``chunk`` examples at a time.

    Compiled once per (model_fn, shapes): reuse the same ``model_fn`` object to hit the cache.
    """
    fs, js = [], []
    for start in range(0, x.shape[0], chunk):
        xb = jnp.asarray(x[start : start + chunk], dtype=jnp.float64)
        fb, jb = _outputs_and_jacobian_batch(model_fn, params, xb)
        fs.append(np.asarray(fb, dtype=np.float64))
        js.append(np.asarray(jb, dtype=np.float64))
    return np.concatenate(fs), np.concatenate(js, axis=0)


def _kept_spectrum(kernel: np.ndarray, rank_rtol: float | None):
    """Eigenpairs of the PSD kernel above rtol·λ_max, in decreasing order (rtol: n·eps default)."""
    lam, vec = np.linalg.eigh(kernel)
    lam, vec = lam[::-1], vec[:, ::-1]
    if lam[0] <= 0.0:
        raise ValueError(EMPTY_KERNEL)
    rtol = kernel.shape[0] * np.finfo(np.float64).eps if rank_rtol is None else rank_rtol
    keep = lam > rtol * lam[0]
    return lam[keep], vec[:, keep]


def linearize(
    model_fn: ModelFn,
    params0: Any,
    x: Float[np.ndarray, "clients samples ..."],
    *,
    x_test: Float[np.ndarray, "test ..."] | None = None,
    rank_rtol: float | None = None,
    chunk: int = 512,
) -> Linearization:
    """Linearizes every client at the shared θ_0 and reduces to Q·r coordinates (seed eq. 11).

    Args:
        model_fn: ``f(params, x)`` on **one unbatched example** x, returning a scalar or an
            ``[M]`` vector (Equinox: ``params, static = eqx.partition(model, eqx.is_inexact_array)``
            and ``f = lambda p, x: eqx.combine(p, static)(x)``).
        params0: the shared initialization θ_0, any pytree of float arrays (cast to float64).
        x: the clients' inputs, ``[Q, D, ...]``.

    Other args:
        x_test: optional test inputs ``[N_test, ...]`` for predictions off the training data.
        rank_rtol: eigenvalues of K below ``rank_rtol · λ_max`` are treated as zero; default
            ``Q·D·M · eps``, the numerical rank of K in float64.
        chunk: examples per Jacobian batch (memory is O(chunk·M·P) per batch and O(Q·D·M·P) in
            all, since J is materialized).

    Returns:
        A `Linearization`.

    Raises:
        ValueError: x is not ``[Q, D, ...]`` with Q, D ≥ 1, or J is zero.

    References:
        Lee et al., "Wide neural networks of any depth evolve as linear models under gradient
        descent", NeurIPS 2019; the seed (arXiv 2409.15267), eq. 11.
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(BAD_CLIENT_X.format(shape=x.shape))
    q, d = x.shape[:2]
    with jax.enable_x64(True):
        params0 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jnp.float64), params0)
        flat0, unravel = jax.flatten_util.ravel_pytree(params0)
        out_shape = tuple(
            jax.eval_shape(model_fn, params0, jnp.asarray(x[0, 0], jnp.float64)).shape
        )
        f0, jac = _outputs_and_jacobian(model_fn, params0, x.reshape(q * d, *x.shape[2:]), chunk)
        lam, vec = _kept_spectrum(jac @ jac.T, rank_rtol)
        basis = jac.T @ (vec / np.sqrt(lam))
        f0_test = c_test = None
        if x_test is not None:
            f0_test, jac_test = _outputs_and_jacobian(model_fn, params0, np.asarray(x_test), chunk)
            c_test = jac_test @ basis
    logging.debug(
        "linearize: Q=%d D=%d P=%d, rank r=%d of %d", q, d, jac.shape[1], lam.size, jac.shape[0]
    )
    return Linearization(
        f0=f0.reshape(q, -1),
        c_blocks=(vec * np.sqrt(lam)).reshape(q, -1, lam.size),
        basis=basis,
        eigenvalues=lam,
        flat_params0=np.asarray(flat0, dtype=np.float64),
        unravel=unravel,
        f0_test=f0_test,
        c_test=c_test,
        out_shape=out_shape,
    )
