"""The exact kernel flow for squared error, through the eigendecomposition of K (docs/ntk_step.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from ._batching import eigh
from ._solver import FunctionSpaceSolution, check_horizons

_PRECISION = jax.lax.Precision.HIGHEST


def closed_form_from_residual(
    kernel: Float[Array, "samples samples"],
    f0: Float[Array, "samples classes"],
    u0: Float[Array, "samples classes"],
    *,
    eta: ArrayLike,
    horizons: Sequence[int],
    num_samples: ArrayLike,
) -> FunctionSpaceSolution:
    """The flow ``du/ds = -(1/Ñ) K u`` from ``u0 = f0 - y`` (masked rows zero), exactly.

    With ``K = V Λ Vᵀ`` and ``a = ηΛ/Ñ``: ``u(s_τ) = V e^{-τa} Vᵀ u0`` and the left Riemann sum
    ``Σ_{t<τ} u(s_t) = V [(1 - e^{-τa}) / (1 - e^{-a})] Vᵀ u0`` (``τ`` where ``a = 0``).
    """
    horizons = check_horizons(horizons)
    dtype = f0.dtype
    evals, evecs = eigh(kernel)
    rate = jnp.asarray(eta, dtype) * jnp.maximum(evals, 0) / jnp.asarray(num_samples, dtype)
    rate = rate[None, :]  # [1, N]
    taus = jnp.asarray(horizons, dtype)[:, None]  # [H, 1]
    tiny = jnp.asarray(jnp.finfo(dtype).tiny, dtype)
    safe = jnp.maximum(rate, tiny)
    sum_coeff = jnp.where(rate > tiny, jnp.expm1(-taus * safe) / jnp.expm1(-safe), taus)
    decay = jnp.exp(-taus * rate)  # [H, N]
    coords = jnp.matmul(evecs.T, u0, precision=_PRECISION)  # [N, C]

    def back(coeff):
        return jnp.matmul(evecs, coeff[:, None] * coords, precision=_PRECISION)

    sums = jax.vmap(back)(sum_coeff)
    logits = jax.vmap(back)(decay) + (f0 - u0)[None]
    final = logits[horizons.index(max(horizons))]
    return FunctionSpaceSolution(residual_sums=sums, logits=logits, final_logits=final)


def evolve_mse_closed_form(
    kernel: Float[Array, "samples samples"],
    f0: Float[Array, "samples classes"],
    y: Float[Array, "samples classes"],
    mask: Bool[Array, " samples"] | None = None,
    *,
    eta: ArrayLike,
    horizons: Sequence[int],
) -> FunctionSpaceSolution:
    """The MSE kernel flow ``df/ds = -(1/Ñ) K (f - y)`` on the grid ``s_t = t·η``, in closed form.

    Args:
        kernel: ``[N, N]`` trace kernel (masked rows/columns zero).
        f0: ``[N, C]`` initial logits.
        y: ``[N, C]`` regression targets (e.g. one-hot labels).
        mask: optional ``[N]`` booleans; masked rows keep ``f0`` and add nothing to the sums.
        eta: grid step η (may be traced).
        horizons: static tuple of integer horizons.

    Returns:
        A `FunctionSpaceSolution` (same contract as `solve_function_space`).
    """
    mask = jnp.ones(f0.shape[:1], bool) if mask is None else mask
    u0 = jnp.where(mask[:, None], f0 - y.astype(f0.dtype), jnp.zeros((), f0.dtype))
    count = jnp.maximum(jnp.sum(mask), 1)
    return closed_form_from_residual(kernel, f0, u0, eta=eta, horizons=horizons, num_samples=count)
