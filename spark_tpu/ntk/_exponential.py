"""An error-controlled exponential Runge–Kutta solver of the function-space flow, stiff part
deflated (docs/ntk_step.md §8).

    df/ds = -(1/Ñ) K residual(f),  f(0) = f0,  sampled at s_t = t·η, t = 0..max(T).

Why: RK4's step is bounded by stability, not accuracy, and the stiffness lives in a few
directions, the top eigenvectors of K (relative eigenvalues 1, 0.3, 0.2, 0.1, …). This solver
integrates those directions with matrix functions of the frozen linearization and the rest
explicitly, so its step is set by accuracy.

The split. Once per dataset, a block Krylov space of K (`krylov_depth` kernel products on
blocks of C vectors) gives Ritz pairs ``K ≈ V Λ Vᵀ`` (``V`` ``[N, k]``). At the start of every
step, with ``D`` the residual's Jacobian at the current state (per sample a C×C block; the
softmax Jacobian for cross-entropy), the flow of the deviation ``δ = g - g_n`` is rewritten
exactly as

    δ' = L δ + N(δ),   L = -(1/Ñ) (V Λ Vᵀ ⊗ I_C) D,   N(δ) = F(g_n + δ) - L δ,

and integrated with an exponential Runge–Kutta method (`METHODS`, default Krogstad's 4th-order
method). ``L`` has rank ``kC`` and is similar to a symmetric matrix, ``-(1/Ñ) W Λ^½ S Λ^½ Wᵀ D``
with ``S = Λ^½ Wᵀ D W Λ^½ = Q Θ Qᵀ`` (``W = V ⊗ I_C``), so every ``φ_j(c h L) v`` is
``v / j! + c·h·(-1/Ñ)·W Λ^½ Q φ_{j+1}(-c h Θ / Ñ) Qᵀ Λ^½ Wᵀ D v``: a ``kC``-dimensional
eigendecomposition per step and skinny products with ``V``, never a kernel product. Each stage
costs one kernel product (``F``), as in RK4. The projections ``Qᵀ Λ^½ Wᵀ D x`` of the stages'
deviations need no JVP either: ``project(lift(z)) = Qᵀ S Q z = Θ z``; only the kernel-product
images are projected through ``D`` (one closed-form row Jacobian per step, `row_jacobian`).
Both the φ-functions and this identity take each row's Jacobian ``D`` to be symmetric positive
semi-definite, as it is for every built-in objective (softmax Jacobians, the identity); for a
residual whose row Jacobian is not (e.g. class-weighted cross-entropy) the linear part is only
approximate and the adaptive solver (``solver="adaptive"``) is the one to use.

Error control is `solve_adaptive`'s: the FSAL slope ``F(g_{n+1})`` (the next step's first
stage) gives the embedded solution with the last stage's weight moved onto it, and the error is
judged on the residual. Steps are whole quarter grid intervals, at most `max_stride`. The
residuals at the grid points inside a step come from the method's continuous extension
``b_i(θ)`` (3rd order, exact on the stiff part), not from a cubic Hermite interpolant of the
step's ends: early steps span grid points where the stiff modes are still decaying, which a
cubic cannot follow (measured on round-5 Fashion-MNIST neighbourhoods: Hermite 1.9e-3 relative
error of the residual sums, the continuous extension 3e-5, at the same steps). It is evaluated
at the grid points a step covers, rounded up to a bucket of `_DENSE_BUCKETS` (a ``lax.switch``),
and at the horizons only on the steps that reach one. The kernel
products: ``1 + krylov_depth + 4·(accepted + rejected steps)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._adaptive import UNITS, _RESIDUAL_FLOOR, AdaptiveStats, _rms, major_dot, transposed_product
from ._batching import batch_any, batch_max, eigh, qr_q
from ._objective import classes_first, row_jacobian

_PRECISION = jax.lax.Precision.HIGHEST
DEFAULT_EXP_RTOL = 1e-5
# Wall time, not products, chose these two (benchmarks/results/bench_solver_options.json):
# every step also evaluates the residual at the grid points it covers and eigendecomposes a
# rank·C-dimensional matrix, so rank 4 and steps of at most 32 grid intervals (~20% more kernel
# products than rank 8 and 64) were 1.6–2× faster on real Ñ = 1200 neighbourhoods (when every
# step still evaluated max_stride + 1 points; see docs/ntk_step.md §8 for the re-run since).
DEFAULT_EXP_MAX_STRIDE = 32
DEFAULT_RANK = 4  # deflated eigenpairs: λ_5/λ_1 = 0.075 on the neighbourhood of docs/ntk_step.md §8
_DENSE_BUCKETS = (1, 2, 4, 8, 12, 16, 24)  # grid points per step, below max_stride
DEFAULT_KRYLOV_DEPTH = 3  # blocks of C vectors: a 3C-dimensional Krylov space for k Ritz pairs

# A stage coefficient of an exponential method: Σ coeff · φ_p(c·hL), as ((coeff, p, c), ...).
Coefficient = tuple[tuple[float, int, float], ...]
# A weight as a function of the fraction θ of the step: Σ coeff · θ^p φ_p(θ·hL), ((coeff, p), ...).
Weight = tuple[tuple[float, int], ...]


class ExpMethod(NamedTuple):
    """An explicit exponential Runge–Kutta method (docs/style.md §7): stage coefficients `a`
    (lower triangular rows of `Coefficient`s) and weights `b` as functions of θ, the continuous
    extension whose value at θ = 1 is the step. The last stage is at c = 1; moving its weight onto
    the FSAL slope ``N(δ_{n+1})`` gives the embedded solution."""

    a: tuple[tuple[Coefficient, ...], ...]
    b: tuple[Weight, ...]


_H = 0.5
# b_i(θ) of both 4-stage methods: the quadrature conditions Σ b_i = θφ1(θhL), Σ b_i c_i =
# θ²φ2(θhL), Σ b_i c_i²/2 = θ³φ3(θhL) at c = 0, 1/2, 1/2, 1 (b_2 = b_3): a 3rd-order dense
# output that integrates the stiff part exactly inside the step (a cubic Hermite interpolant
# of the end points cannot follow a transient that decays within the step).
_B4 = (((1.0, 1), (-3.0, 2), (4.0, 3)), ((2.0, 2), (-4.0, 3)), ((2.0, 2), (-4.0, 3)),
       ((-1.0, 2), (4.0, 3)))  # fmt: skip
METHODS: dict[str, ExpMethod] = {
    # Krogstad (2005), 4th order (stiff order 3): c = 0, 1/2, 1/2, 1.
    "krogstad": ExpMethod(
        a=(
            (),
            (((0.5, 1, _H),),),
            (((0.5, 1, _H), (-1.0, 2, _H)), ((1.0, 2, _H),)),
            (((1.0, 1, 1.0), (-2.0, 2, 1.0)), (), ((2.0, 2, 1.0),)),
        ),
        b=_B4,
    ),
    # Cox & Matthews (2002) ETDRK4: c = 0, 1/2, 1/2, 1.
    "etdrk4": ExpMethod(
        a=(
            (),
            (((0.5, 1, _H),),),
            ((), ((0.5, 1, _H),)),
            (((1.0, 1, 1.0), (-1.0, 1, _H)), (), ((1.0, 1, _H),)),
        ),
        b=_B4,
    ),
}
DEFAULT_METHOD = "krogstad"
_MAX_PHI = 4


def phi_functions(z: Array, count: int = _MAX_PHI + 1) -> Array:
    """``[φ_0(z), …, φ_{count-1}(z)]`` for real ``z <= 0`` (``φ_0 = exp``,
    ``φ_{j+1}(z) = (φ_j(z) − 1/j!)/z``): for |z| < 1 the series of the last one and the
    recurrence downwards, ``φ_j = z·φ_{j+1} + 1/j!``; beyond, the recurrence upwards from exp."""
    small = jnp.abs(z) < 1.0
    zs = jnp.where(small, z, 0.0)
    zl = jnp.where(small, -1.0, z)
    top = count - 1
    series = jnp.zeros_like(zs)
    for m in reversed(range(18)):  # Horner: Σ_m z^m / (m + top)!
        series = series * zs + 1.0 / math.factorial(m + top)
    down = [series]
    for j in reversed(range(top)):
        down.append(zs * down[-1] + 1.0 / math.factorial(j))
    down = down[::-1]
    out, prev = [], jnp.exp(zl)
    for j in range(count):
        out.append(jnp.where(small, down[j], prev))
        prev = (prev - 1.0 / math.factorial(j)) / zl
    return jnp.stack(out)


def krylov_ritz(kernel_product, start: Array, depth: int, rank: int):
    """Top `rank` Ritz pairs of K from the block Krylov space of `start` ``[B, N]``: `depth`
    products ``X K`` of orthonormal blocks (fully reorthogonalized), then Rayleigh–Ritz.

    Returns ``(V [N, rank], λ [rank])``, λ descending."""
    blocks, images = [], []
    x = start
    for _ in range(depth):
        for _ in range(2):  # orthonormalize twice against the earlier blocks (twice is enough,
            for b in blocks:  # also when the space is exhausted and x is round-off)
                x = x - jnp.matmul(jnp.matmul(x, b.T, precision=_PRECISION), b, precision=_PRECISION)
            x = qr_q(x.T).T
        blocks.append(x)
        images.append(kernel_product(x))
        x = images[-1]
    basis, image = jnp.concatenate(blocks), jnp.concatenate(images)
    # Where the space is exhausted (fewer valid rows than vectors) the last blocks are round-off,
    # normalized: orthonormalize through the Gram matrix, dropping its null directions.
    s, u = eigh(jnp.matmul(basis, basis.T, precision=_PRECISION))
    keep = s > 10 * basis.shape[0] * jnp.finfo(basis.dtype).eps
    u = u * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, s, 1.0)), 0.0)[None]
    h = jnp.matmul(u.T, jnp.matmul(jnp.matmul(basis, image.T, precision=_PRECISION), u,
                                   precision=_PRECISION), precision=_PRECISION)  # fmt: skip
    basis = jnp.matmul(u.T, basis, precision=_PRECISION)
    lam, vec = eigh(0.5 * (h + h.T))
    lam, vec = lam[::-1][:rank], vec[:, ::-1][:, :rank]
    return jnp.matmul(basis.T, vec, precision=_PRECISION), jnp.maximum(lam, 0.0)


def grid_points_covered(pos, step):
    """How many grid points t (in quarter-interval units, ``t·UNITS``) lie in ``[pos, pos + step)``."""
    return (pos + step + UNITS - 1) // UNITS - (pos + UNITS - 1) // UNITS


class _Linearization(NamedTuple):
    """The stiff part L at a state: the state ``point [C, N]`` (``D x`` is the residual's JVP
    there) and the eigendecomposition ``S = Q Θ Qᵀ`` ``[kC, kC]``, ``[kC]``."""

    point: Array
    q: Array
    theta: Array


class _Carry(NamedTuple):
    pos: Array
    step: Array
    g: Array
    slope: Array
    lin: _Linearization
    running: Array
    sums: Array
    snaps: Array
    accepted: Array
    rejected: Array


def solve_exponential(
    kernel: Float[Array, "samples samples"],
    f0: Float[Array, "samples classes"],
    residual: Callable[[Array], Array],
    *,
    eta: ArrayLike,
    horizons: Sequence[int],
    num_samples: ArrayLike,
    rtol: float = DEFAULT_EXP_RTOL,
    max_stride: int = DEFAULT_EXP_MAX_STRIDE,
    rank: int = DEFAULT_RANK,
    krylov_depth: int = DEFAULT_KRYLOV_DEPTH,
    method: str = DEFAULT_METHOD,
):
    """Integrates the kernel flow with an error-controlled exponential RK method whose linear
    part is the top-`rank` eigenspace of K times the residual Jacobian, frozen per step.

    Args: as `solve_adaptive`, and
        rank: deflated Ritz pairs k (the linear part has rank k·C).
        krylov_depth: blocks of the Krylov space (kernel products), ``krylov_depth·C >= rank``.
        method: a key of `METHODS`.

    Returns:
        ``(residual_sums [H, N, C], logits [H, N, C], final_logits [N, C], AdaptiveStats)``;
        ``products`` counts the Krylov products too.
    """
    horizons = tuple(int(t) for t in horizons)
    tab = METHODS[method]
    total = max(horizons)
    dtype = f0.dtype
    classes, n = f0.shape[1], f0.shape[0]
    width = min(classes, n)  # Krylov block: one kernel product of a [C, N] block
    krylov_depth = max(1, min(int(krylov_depth), n // width))
    rank = max(1, min(int(rank), krylov_depth * width))
    scale = -1.0 / jnp.asarray(num_samples, dtype)
    h_unit = jnp.asarray(eta, dtype) / UNITS
    max_units = int(max_stride) * UNITS
    end = total * UNITS
    stops = jnp.asarray(horizons, jnp.int32) * UNITS

    residual_t = classes_first(residual)

    def kernel_product(x):
        return transposed_product(x, kernel)

    def rhs(g):
        return scale * kernel_product(residual_t(g))

    rows = (jnp.diagonal(kernel) > 0).astype(dtype)  # masked rows of K are zero
    start = jax.random.normal(jax.random.key(0), (width, n), dtype) * rows[None]
    v, lam = krylov_ritz(kernel_product, start, krylov_depth, rank)
    root = jnp.sqrt(lam)
    v_t = jax.lax.optimization_barrier(v.T)  # [k, N], for `major_dot`

    def linearize(g) -> _Linearization:
        jac = row_jacobian(residual, g)  # [b, a, n] = ∂r_an/∂g_bn
        # M[i, a, j, b] = Σ_n v_ni v_nj D_abn as one [C², N] × [N, k²] matmul (an einsum of
        # the three operands took 2.5× longer on CPU).
        vv = (v[:, :, None] * v[:, None, :]).reshape(n, rank * rank)
        m = jnp.matmul(jac.reshape(classes * classes, n), vv, precision=_PRECISION)
        m = jnp.transpose(m.reshape(classes, classes, rank, rank), (2, 1, 3, 0))
        s = (root[:, None, None, None] * m * root[None, None, :, None]).reshape(
            rank * classes, rank * classes
        )
        theta, q = eigh(0.5 * (s + s.T))
        return _Linearization(g, q, jnp.maximum(theta, 0.0))

    def project(lz: _Linearization, x):
        """``Qᵀ Λ^½ Wᵀ D x`` -> [kC]."""
        # D x as the residual's JVP: on CPU 12 µs at Ñ = 1,182, against 41 µs for an einsum with
        # the stored blocks D (lowered to N batched C×C matvecs) and 490 µs for a multiply-reduce.
        dx = jax.jvp(residual_t, (lz.point,), (x,))[1]
        y = jnp.matmul(dx, v, precision=_PRECISION).T * root[:, None]  # [k, C]
        return jnp.matmul(lz.q.T, y.reshape(-1), precision=_PRECISION)

    def lift(lz: _Linearization, z):
        """``W Λ^½ Q z`` -> [C, N]."""
        y = jnp.matmul(lz.q, z, precision=_PRECISION).reshape(rank, classes) * root[:, None]
        return jnp.matmul(y.T, v.T, precision=_PRECISION)

    def combine(lz, coeffs, slopes, projected, h, phis):
        """A stage's ``δ = h Σ_j a_j(hL) N_j`` and its projection ``Qᵀ Λ^½ Wᵀ D δ`` (`project`),
        the latter without a JVP: `project` is linear and ``project(lift(z)) = Qᵀ S Q z = Θ z``.
        `phis[c]` holds ``φ_p(c·h·(-Θ/Ñ))``."""
        plain, low = jnp.zeros_like(slopes[0]), jnp.zeros_like(projected[0])
        plain_p = jnp.zeros_like(projected[0])
        for coeff, nj, pj in zip(coeffs, slopes, projected):
            for value, p, c in coeff:
                plain = plain + (value / math.factorial(p)) * nj
                plain_p = plain_p + (value / math.factorial(p)) * pj
                if c != 0.0:
                    low = low + (value * c * h * scale) * phis[c][p + 1] * pj
        return h * (plain + lift(lz, low)), h * (plain_p + lz.theta * low)

    def dense(c: _Carry, slopes, projected, h, theta):
        """``g_n + h Σ_i b_i(θ) N_i`` at the fractions `theta` [P] of the step -> [P, C, N]."""
        table = np.zeros((len(slopes), _MAX_PHI))  # b_i(θ) = Σ_p table[i, p] θ^p φ_p(θ hL)
        for i, weight in enumerate(tab.b):
            for value, p in weight:
                table[i, p] += value
        phis = phi_functions(theta[:, None] * h * scale * c.lin.theta[None], _MAX_PHI + 1)
        powers = jnp.stack([theta**p for p in range(_MAX_PHI)], axis=1)  # [P, p]
        factorials = np.asarray([math.factorial(p) for p in range(_MAX_PHI)], float)
        plain_t = jnp.matmul(jnp.asarray(table / factorials, dtype), powers.T)  # [i, P]
        per_power = jnp.matmul(
            jnp.asarray(table.T, dtype), jnp.stack(projected), precision=_PRECISION
        )  # [p, kC]: Σ_i table[i, p] Qᵀ Λ^½ Wᵀ D N_i
        low = jnp.einsum(
            "qp,pqk,pk->qk", powers * theta[:, None] * h * scale, phis[1:], per_power,
            precision=_PRECISION,
        )  # fmt: skip
        y = jnp.matmul(low, c.lin.q.T, precision=_PRECISION).reshape(-1, rank, classes)
        y_t = jnp.transpose(y * root[None, :, None], (1, 0, 2)).reshape(rank, -1)  # [k, P·C]
        lifted = major_dot(y_t, v_t)  # [P·C, N]
        mixed = major_dot(plain_t, jnp.stack(slopes).reshape(len(slopes), -1))  # [P, C·N]
        return c.g[None] + h * (mixed.reshape(-1, classes, n) + lifted.reshape(-1, classes, n))

    def attempt(c: _Carry):
        h = c.step.astype(dtype) * h_unit
        lz = c.lin
        nodes = {node for row in tab.a for coeff in row for _, _, node in coeff} | {1.0}
        phis = {x: phi_functions(x * h * scale * lz.theta, _MAX_PHI + 1) for x in nodes if x}
        slopes, projected = [c.slope], [project(lz, c.slope)]
        for row in tab.a[1:]:  # stage j: N_j = F(g_n + δ_j) - L δ_j, one kernel product
            delta, delta_p = combine(lz, row, slopes, projected, h, phis)
            fk = rhs(c.g + delta)
            fk_p = project(lz, fk)
            slopes.append(fk - scale * lift(lz, delta_p))
            projected.append(fk_p - scale * lz.theta * delta_p)
        weights = [[(value, p, 1.0) for value, p in weight] for weight in tab.b]
        step, step_p = combine(lz, weights, slopes, projected, h, phis)  # δ_{n+1}
        g1 = c.g + step
        k5 = rhs(g1)
        # N_4 - N(δ_{n+1}) and its projection
        diff = slopes[-1] - (k5 - scale * lift(lz, step_p))
        diff_p = projected[-1] - (project(lz, k5) - scale * lz.theta * step_p)
        est = combine(lz, [weights[-1]], [diff], [diff_p], h, phis)[0]
        r1 = residual_t(g1)
        dr = r1 - residual_t(g1 - est)
        err = _rms(dr) / (rtol * (_RESIDUAL_FLOOR + _rms(r1)))
        err = jnp.where(jnp.isfinite(err), err, jnp.asarray(jnp.inf, dtype))
        return g1, k5, err, (slopes, projected)

    def advance_over(size: int, c: _Carry, stages, hit):
        """Residual sums over the grid points of [pos, pos + step), at most `size` of them."""
        first = (c.pos + UNITS - 1) // UNITS
        t = first + jnp.arange(size, dtype=jnp.int32)
        inside = t * UNITS < c.pos + c.step
        theta = (t * UNITS - c.pos).astype(dtype) / c.step.astype(dtype)
        h = c.step.astype(dtype) * h_unit
        f_t = dense(c, *stages, h, jnp.where(inside, theta, 0.0))
        res = jax.vmap(residual_t)(f_t)  # points outside the step (θ = 0) get weight 0 below
        # Horizon τ ending in (pos, pos + step]: Σ_{t < τ} = running + the points before τ; the
        # last row sums the whole step. (Weighted sums, not a cumsum: on CPU that lowers to a
        # reduce-window quadratic in the up to 65 points, which took a third of the solve.)
        weights = jnp.concatenate([t[None] < stops[:, None] // UNITS, inside[None]]) & inside[None]
        # (The barriers keep XLA:CPU from fusing the softmax into the dot as a YNNPACK fusion.)
        res, w_t = jax.lax.optimization_barrier((res.reshape(size, -1), weights.T.astype(dtype)))
        summed = c.running[None] + major_dot(w_t, res).reshape(-1, classes, n)
        return summed[-1], jnp.where(hit[:, None, None], summed[:-1], c.sums)

    # A step of s quarter intervals covers at most ceil(s / 4) grid points; the dense output is
    # evaluated at a bucket's worth, not always at max_stride's (~2x fewer residuals per solve).
    sizes = sorted({b for b in _DENSE_BUCKETS if b < max_stride} | {int(max_stride)})
    branches = [functools.partial(advance_over, size) for size in sizes]

    def advance(c: _Carry, stages, ok):
        """Residual sums and horizon snapshots over the grid points of [pos, pos + step). (On a
        batch of clients under ``vmap``, the largest bucket any of them needs, `batch_max`.)"""
        # (steps never exceed max_units, so `covered` <= max_stride, the last bucket; a larger
        # one would be clamped to it by lax.switch and lose points)
        covered = grid_points_covered(c.pos, c.step)
        bucket = jnp.searchsorted(jnp.asarray(sizes, jnp.int32), batch_max(covered))
        hit = (stops > c.pos) & (stops <= c.pos + c.step) & ok  # (a rejected step changes none)
        running, sums = jax.lax.switch(bucket, branches, c, stages, hit)

        def snapshot():  # the flow at the horizons the step reaches (5 of all the steps)
            theta = jnp.clip((stops - c.pos).astype(dtype) / c.step.astype(dtype), 0.0, 1.0)
            at = dense(c, *stages, c.step.astype(dtype) * h_unit, theta)
            return jnp.where(hit[:, None, None], at, c.snaps)

        snaps = jax.lax.cond(batch_any(jnp.any(hit)), snapshot, lambda: c.snaps)
        return running, sums, snaps

    def body(c: _Carry) -> _Carry:
        g1, k5, err, stages = attempt(c)
        ok = (err <= 1.0) | (c.step <= 1)
        running, sums, snaps = advance(c, stages, ok)
        factor = jnp.clip(0.9 * jnp.where(err > 0, err, 1e-10) ** -0.25, 0.2, 4.0)
        proposal = jnp.clip(jnp.floor(c.step.astype(dtype) * factor), 1, max_units).astype(jnp.int32)
        new_pos = jnp.where(ok, c.pos + c.step, c.pos)
        proposal = jnp.minimum(proposal, jnp.maximum(end - new_pos, 1))
        lin1 = linearize(g1)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        return _Carry(
            pos=new_pos, step=proposal, g=pick(g1, c.g), slope=pick(k5, c.slope),
            lin=pick(lin1, c.lin), running=pick(running, c.running), sums=sums, snaps=snaps,
            accepted=c.accepted + ok.astype(jnp.int32),
            rejected=c.rejected + (~ok).astype(jnp.int32),
        )  # fmt: skip

    g0 = f0.T
    zeros = jnp.zeros((len(horizons), *g0.shape), dtype)
    zero = jnp.zeros((), jnp.int32)
    init = _Carry(
        pos=zero, step=jnp.minimum(jnp.int32(UNITS), end), g=g0, slope=rhs(g0), lin=linearize(g0),
        running=jnp.zeros_like(g0), sums=zeros, snaps=jnp.broadcast_to(g0, zeros.shape),
        accepted=zero, rejected=zero,
    )  # fmt: skip
    if total == 0:
        out = init
    else:
        out = jax.lax.while_loop(lambda c: c.pos < end, body, init)
    steps = out.accepted + out.rejected
    # F(g_0), the Krylov blocks, and one product per stage of every attempted step (the FSAL
    # slope F(g_{n+1}) is the next step's first stage).
    products = 1 + krylov_depth + len(tab.a) * steps if total else jnp.zeros((), jnp.int32)
    stats = AdaptiveStats(products=products, accepted=out.accepted, rejected=out.rejected)
    return jnp.swapaxes(out.sums, 1, 2), jnp.swapaxes(out.snaps, 1, 2), out.g.T, stats
