"""An error-controlled solver of the function-space flow, per dataset (docs/ntk_step.md).

    df/ds = -(1/Ñ) K residual(f),  f(0) = f0,  sampled at s_t = t·η, t = 0..max(T).

Why: the flow's stiffness is set by the neighbourhood (λ_max of K) and by the state (the softmax
Jacobian damps the stiff directions more or less along the trajectory), so a fixed step that is
stable on one neighbourhood or in one phase leaves the stability region on another. This solver
chooses every step from an error estimate of the step just taken, separately for each dataset,
inside one compiled `lax.while_loop` (static shapes; under `vmap` finished datasets idle).

The method: classical RK4 with the embedded 3rd-order solution ``b̂ = (1/6, 1/3, 1/3, 0, 1/6)``
that uses the first-same-as-last slope ``k5 = F(y_{n+1})``, so the local error estimate
``(h/6)(k4 − k5)`` of the logits costs no kernel product (``k5`` is the next step's first stage and
the end slope of the dense output). What the method sums is the residual, so the error is judged
there: ``e = RMS(r(y4) − r(y3)) / (rtol·(10⁻³ + RMS(r(y4))))``. A step is accepted when e ≤ 1; the
next is ``h·clip(0.9·e^{-1/4}, 0.2, 4)``. A step outside RK4's stability region has a growing
estimate, so the controller also keeps every step stable, whatever the neighbourhood; the
smallest step (η/4, stable for any η·λ_max(K)/Ñ up to 22, since the softmax Jacobian's
eigenvalues are at most 1/2) is always accepted.

Steps are whole multiples of a quarter grid interval (η/4) and at most `max_stride` grid
intervals; residuals at the grid points inside a step come from the step's cubic Hermite
interpolant (4th order, no kernel product), so the left Riemann sums ``r_τ`` are the same sums of
the same grid points as for every other solver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from ._objective import classes_first

_PRECISION = jax.lax.Precision.HIGHEST
UNITS = 4  # solver positions are counted in quarter grid intervals
DEFAULT_RTOL = 1e-5  # measured: max relative error of Δw ≈ 4.5·rtol (experiments/solver_audit.py)
DEFAULT_MAX_STRIDE = 8  # steps are stability-limited near 4-6 intervals; 8 keeps dense output cheap
_RESIDUAL_FLOOR = 1e-3  # residual RMS below which errors are judged absolutely


class AdaptiveStats(NamedTuple):
    """Cost of one adaptive solve: kernel products, accepted and rejected steps."""

    products: Int[Array, ""]
    accepted: Int[Array, ""]
    rejected: Int[Array, ""]


class _Carry(NamedTuple):
    pos: Int[Array, ""]  # position in units of η/UNITS
    step: Int[Array, ""]  # proposed step, same units
    g: Array  # [C, N] state
    slope: Array  # [C, N] F(g)
    running: Array  # [C, N] Σ residuals at the grid points before `pos`
    sums: Array  # [H, C, N]
    snaps: Array  # [H, C, N]
    accepted: Int[Array, ""]
    rejected: Int[Array, ""]


def transposed_product(x: Array, kernel: Array) -> Array:
    """``x K`` for class-major ``x [C, N]`` and a symmetric kernel ``K [N, N]``, as a dot that
    contracts the major dimension of a sample-major copy of x.

    Why: XLA:CPU lowers ``matmul(x, K)`` contracting x's minor dimension to a YNNPACK fusion that,
    inside the solvers' loops, took several times longer than the same product from a
    sample-major ``xᵀ`` (one exponential solve on two real Ñ = 1,182 neighbourhoods: 536 ms
    against 442 ms with nothing else changed). The barrier keeps XLA from folding the transpose
    back into the dot; the copy it costs is C·N floats.
    """
    return major_dot(jax.lax.optimization_barrier(x.T), kernel)


def major_dot(a: Array, b: Array) -> Array:
    """``aᵀ b`` for 2-D `a` ``[K, M]`` and `b` ``[K, N]``, contracting both leading dimensions:
    the dot form that XLA:CPU runs as a plain GEMM rather than a YNNPACK fusion (see
    `transposed_product`)."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_PRECISION)


def _rms(v):
    return jnp.sqrt(jnp.mean(jnp.square(v)))


def hermite(g0, d0, g1, d1, span, theta):
    """Cubic Hermite interpolant at fractions `theta` [m] of a step of length `span` -> [m, ...]."""
    t = theta.reshape((-1,) + (1,) * g0.ndim)
    t2, t3 = t * t, t * t * t
    g0, d0, g1, d1 = (v[None] for v in (g0, span * d0, g1, span * d1))
    return (2 * t3 - 3 * t2 + 1) * g0 + (t3 - 2 * t2 + t) * d0 + (3 * t2 - 2 * t3) * g1 + (
        t3 - t2
    ) * d1


def solve_adaptive(
    kernel: Float[Array, "samples samples"],
    f0: Float[Array, "samples classes"],
    residual: Callable[[Array], Array],
    *,
    eta: ArrayLike,
    horizons: Sequence[int],
    num_samples: ArrayLike,
    rtol: float = DEFAULT_RTOL,
    max_stride: int = DEFAULT_MAX_STRIDE,
):
    """Integrates the kernel flow with error-controlled RK4 and sums residuals per horizon.

    Args:
        kernel: ``[N, N]`` symmetric trace kernel (masked rows/columns zero).
        f0: ``[N, C]`` logits at the linearization point.
        residual: ``f -> [N, C]`` (masked rows zero).
        eta: grid step η; may be traced.
        horizons: static tuple of integer horizons (grid steps).
        num_samples: Ñ; may be traced.
        rtol: local error tolerance of the residual, relative to its RMS (see the module doc).
        max_stride: the longest step, in grid intervals.

    Returns:
        ``(residual_sums [H, N, C], logits [H, N, C], final_logits [N, C], AdaptiveStats)``.
    """
    horizons = tuple(int(t) for t in horizons)
    total = max(horizons)
    dtype = f0.dtype
    scale = -1.0 / jnp.asarray(num_samples, dtype)
    h_unit = jnp.asarray(eta, dtype) / UNITS
    max_units = int(max_stride) * UNITS
    points = int(max_stride) + 1  # grid points a step can contain, at most
    end = total * UNITS
    stops = jnp.asarray(horizons, jnp.int32) * UNITS

    residual_t = classes_first(residual)

    def rhs(g):
        return transposed_product(scale * residual_t(g), kernel)

    def attempt(c: _Carry):
        h = c.step.astype(dtype) * h_unit
        k1 = c.slope
        k2 = rhs(c.g + (0.5 * h) * k1)
        k3 = rhs(c.g + (0.5 * h) * k2)
        k4 = rhs(c.g + h * k3)
        g1 = c.g + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        k5 = rhs(g1)
        # The summed quantity is the residual: measure the error there, against its size.
        r1 = residual_t(g1)
        dr = r1 - residual_t(g1 - (h / 6) * (k4 - k5))
        err = _rms(dr) / (rtol * (_RESIDUAL_FLOOR + _rms(r1)))
        err = jnp.where(jnp.isfinite(err), err, jnp.asarray(jnp.inf, dtype))
        return g1, k5, err

    def advance(c: _Carry, g1, k5):
        """Residual sums and horizon snapshots over the grid points of [pos, pos + step)."""
        first = (c.pos + UNITS - 1) // UNITS  # first grid index at or after pos
        t = first + jnp.arange(points, dtype=jnp.int32)
        inside = t * UNITS < c.pos + c.step
        theta = (t * UNITS - c.pos).astype(dtype) / c.step.astype(dtype)
        span = c.step.astype(dtype) * h_unit
        f_t = hermite(c.g, c.slope, g1, k5, span, jnp.where(inside, theta, 0.0))
        res = jnp.where(inside[:, None, None], jax.vmap(residual_t)(f_t), 0.0)
        partial = c.running[None] + jnp.cumsum(res, axis=0)  # partial[j] = Σ up to point j
        # Horizon τ ending in (pos, pos + step]: Σ_{t < τ} = partial[τ - first - 1] (or running).
        hit = (stops > c.pos) & (stops <= c.pos + c.step)
        j = stops // UNITS - first - 1
        before = jnp.where(
            (j >= 0)[:, None, None], jnp.take(partial, jnp.clip(j, 0, points - 1), axis=0),
            c.running[None],
        )  # fmt: skip
        theta_h = (stops - c.pos).astype(dtype) / c.step.astype(dtype)
        at = hermite(c.g, c.slope, g1, k5, span, jnp.clip(theta_h, 0.0, 1.0))
        sums = jnp.where(hit[:, None, None], before, c.sums)
        snaps = jnp.where(hit[:, None, None], at, c.snaps)
        return partial[-1], sums, snaps

    def body(c: _Carry) -> _Carry:
        g1, k5, err = attempt(c)
        ok = (err <= 1.0) | (c.step <= 1)  # the smallest step always advances
        running, sums, snaps = advance(c, g1, k5)
        factor = jnp.clip(0.9 * jnp.where(err > 0, err, 1e-10) ** -0.25, 0.2, 4.0)
        proposal = jnp.clip(jnp.floor(c.step.astype(dtype) * factor), 1, max_units).astype(jnp.int32)
        new_pos = jnp.where(ok, c.pos + c.step, c.pos)
        proposal = jnp.minimum(proposal, jnp.maximum(end - new_pos, 1))
        pick = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return _Carry(
            pos=new_pos, step=proposal, g=pick(g1, c.g), slope=pick(k5, c.slope),
            running=pick(running, c.running), sums=pick(sums, c.sums), snaps=pick(snaps, c.snaps),
            accepted=c.accepted + ok.astype(jnp.int32), rejected=c.rejected + (~ok).astype(jnp.int32),
        )  # fmt: skip

    g0 = f0.T
    zeros = jnp.zeros((len(horizons), *g0.shape), dtype)
    zero = jnp.zeros((), jnp.int32)
    init = _Carry(
        pos=zero, step=jnp.minimum(jnp.int32(1), end), g=g0, slope=rhs(g0),
        running=jnp.zeros_like(g0), sums=zeros, snaps=jnp.broadcast_to(g0, zeros.shape),
        accepted=zero, rejected=zero,
    )  # fmt: skip
    if total == 0:
        out = init
    else:
        out = jax.lax.while_loop(lambda c: c.pos < end, body, init)
    steps = out.accepted + out.rejected
    stats = AdaptiveStats(products=1 + 4 * steps, accepted=out.accepted, rejected=out.rejected)
    return (
        jnp.swapaxes(out.sums, 1, 2),
        jnp.swapaxes(out.snaps, 1, 2),
        out.g.T,
        stats,
    )
