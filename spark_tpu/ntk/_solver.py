"""The function-space flow of the linearized network, on the horizon grid (docs/ntk_step.md §3, §8).

    df/ds = -(1/Ñ) K residual(f),  f(0) = f0,  sampled at s_t = t·η, t = 0..max(T).

For every horizon τ the solver returns the left Riemann sum ``r_τ = Σ_{t<τ} residual(f(s_t))``
(the cotangent of the weight step) and ``f(s_τ)``. One `lax.scan` runs over the grid; the running
sum is snapshotted at the horizons, so memory is O(#horizons · N · C) whatever max(T) is.

The default, ``"auto"``, picks one of the two error-controlled solvers by the static number of
pooled rows N: ``"exponential"`` (`solve_exponential`, ``ntk/_exponential.py``: the stiff
eigenspace of K integrated exactly, about a quarter of the kernel products) from
`AUTO_EXPONENTIAL_ROWS` rows, ``"adaptive"`` (error-controlled RK4, `solve_adaptive`,
``ntk/_adaptive.py``) below, where a kernel product is cheap beside the exponential solver's
per-step work (benchmarks/results/bench_solver_options.json). Both choose every step from an
error estimate, per dataset. The fixed-step methods are explicit Runge–Kutta tableaux
run by one engine (docs/style.md §7), with `substeps` equal steps per grid interval and a short
warm-up of finer steps; with ``stride > 1`` each strided step's local error estimate is checked
and a step past `FLAG_TOLERANCE` flags the solve (what leaving the stability region looks like):

- ``"euler"``: one kernel product per grid step; exactly discrete gradient descent of the
  linearized model with step η (the kernel flow's forward Euler). No warm-up by default.
- ``"rk4"``: classical 4th order, 4 products per substep. At the paper's stiffness
  (η·λ_max(K)/Ñ ≈ 3.6, damped by the softmax Jacobian, whose eigenvalues are ≤ 1/2) one substep
  per grid interval is stable. Almost all of its error comes from the stiff transient of the
  first few grid intervals, so those (`warmup_steps` = 8) take 4 substeps: on Fashion-MNIST and
  digits MLP kernels it then matches DOP853 (rtol 1e-10) to ≤ 2e-6 of the displacement, at 3%
  more products than plain RK4 (without the warm-up: up to 6e-4).
- ``"midpoint"``, ``"bosh3"``, ``"dopri5"``: 2nd, 3rd and (fixed-step) 5th order. ``"bosh3"``
  with the warm-up reaches about 5e-5 at 3 products per step.
- ``"rkc4"``, ``"rkc6"``: Runge–Kutta–Chebyshev (2nd order), stable for steps 3.6× and 8× longer
  than rk4's, so with ``stride`` 8–16 they take 40–60% fewer products than rk4 at stride 4, at a
  weight-step error of 1e-3–5e-3 instead of 1e-5 (``experiments/solver_stride.py --rkc``).

For a linear residual (MSE) the softmax damping is absent, so the effective stiffness is the full
η·λ_max/Ñ: use ``substeps >= 2`` with ``"rk4"`` there, or the exact `evolve_mse_closed_form`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._adaptive import (
    DEFAULT_MAX_STRIDE,
    DEFAULT_RTOL,
    _RESIDUAL_FLOOR,
    _rms,
    hermite,
    solve_adaptive,
    transposed_product,
)
from ._exponential import (
    DEFAULT_EXP_MAX_STRIDE,
    DEFAULT_EXP_RTOL,
    DEFAULT_KRYLOV_DEPTH,
    DEFAULT_RANK,
    solve_exponential,
)
from ._objective import classes_first

_PRECISION = jax.lax.Precision.HIGHEST


class Tableau(NamedTuple):
    """An explicit Runge–Kutta method: stage coefficients `a` (lower triangular rows), weights `b`."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int


TABLEAUX: dict[str, Tableau] = {
    "euler": Tableau(a=((),), b=(1.0,), order=1),
    "midpoint": Tableau(a=((), (0.5,)), b=(0.0, 1.0), order=2),
    "bosh3": Tableau(a=((), (0.5,), (0.0, 0.75)), b=(2 / 9, 1 / 3, 4 / 9), order=3),
    "rk4": Tableau(
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4
    ),
    "dopri5": Tableau(
        a=(
            (),
            (1 / 5,),
            (3 / 40, 9 / 40),
            (44 / 45, -56 / 15, 32 / 9),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
            (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        ),
        b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
        order=5,
    ),
}


def rkc_tableau(stages: int, damping: float = 0.05) -> Tableau:
    """The s-stage Runge–Kutta–Chebyshev method (Verwer, Hundsdorfer & Sommeijer 1990; 2nd
    order, real stability interval ≈ 0.65·s², RK4's: 2.79) as a Butcher tableau: its three-term
    recurrence Y_j = (1−μ_j−ν_j)Y_0 + μ_j Y_{j−1} + ν_j Y_{j−2} + μ̃_j h F(Y_{j−1}) + γ̃_j h F(Y_0)
    unrolled into each stage's coefficients on F(Y_0), …, F(Y_{s−1})."""
    s, w0 = stages, 1 + damping / stages**2
    t, dt, ddt = [1.0, w0], [0.0, 1.0], [0.0, 0.0]  # Chebyshev T_j(w0) and two derivatives
    for j in range(2, s + 1):
        t.append(2 * w0 * t[j - 1] - t[j - 2])
        dt.append(2 * t[j - 1] + 2 * w0 * dt[j - 1] - dt[j - 2])
        ddt.append(4 * dt[j - 1] + 2 * w0 * ddt[j - 1] - ddt[j - 2])
    w1 = dt[s] / ddt[s]
    b = [0.0, 0.0] + [ddt[j] / dt[j] ** 2 for j in range(2, s + 1)]
    b[0] = b[1] = b[2]
    rows = [np.zeros(s) for _ in range(s + 1)]
    rows[1][0] = b[1] * w1
    for j in range(2, s + 1):
        mu, nu = 2 * b[j] * w0 / b[j - 1], -b[j] / b[j - 2]
        mu_t = 2 * b[j] * w1 / b[j - 1]
        rows[j] = mu * rows[j - 1] + nu * rows[j - 2]
        rows[j][j - 1] += mu_t
        rows[j][0] += -(1 - b[j - 1] * t[j - 1]) * mu_t
    a = tuple(tuple(float(v) for v in rows[k][:k]) for k in range(s))
    return Tableau(a=a, b=tuple(float(v) for v in rows[s]), order=2)


TABLEAUX["rkc4"] = rkc_tableau(4)  # stable to h·λ ≈ 10 (rk4: 2.8): strides of 8-16 grid steps
TABLEAUX["rkc6"] = rkc_tableau(6)  # to h·λ ≈ 23

DEFAULT_WARMUP_STEPS = 8
DEFAULT_STRIDE_FROM = 32
ADAPTIVE = "adaptive"
EXPONENTIAL = "exponential"  # error-controlled exponential RK, stiff eigenspace deflated
AUTO = "auto"  # exponential from AUTO_EXPONENTIAL_ROWS pooled rows, adaptive below
# One client on real Fashion-MNIST neighbourhoods, 2-core CPU (bench_solver_options.json):
# at Ñ ≈ 290 adaptive took 0.6-0.8× the exponential solver's time, at Ñ ≈ 580 1.2-1.6×,
# at Ñ ≈ 1180 1.3-1.9×: the exponential step's fixed work (a rank·C eigendecomposition, the
# dense output, ~200 XLA ops per step) is paid back by its 4× fewer kernel products from a few
# hundred rows on.
AUTO_EXPONENTIAL_ROWS = 512
# A strided step whose residual error estimate (relative, as in `solve_adaptive`) exceeds this
# has left the method's accuracy region; past the stability boundary the estimate grows
# geometrically, so it is what an unstable fixed step looks like.
FLAG_TOLERANCE = 1e-3
_UNKNOWN_SOLVER = (
    "Unknown solver {name!r}; choose one of {choices} (or 'auto', 'adaptive', 'exponential', "
    "'mse_closed_form')."
)


class FunctionSpaceSolution(NamedTuple):
    """The flow sampled at the horizons.

    Attributes:
        residual_sums: ``[H, N, C]``, ``r_τ = Σ_{t<τ} residual(f(s_t))`` per horizon, in order.
        logits: ``[H, N, C]``, the linearized predictions ``f(s_τ)`` per horizon.
        final_logits: ``[N, C]``, ``f(s_max(T))``.
        products: kernel products ``[C, N] × [N, N]`` the solve took (int32 scalar).
        flagged: True when a fixed-step solver's step left its accuracy (most often its
            stability) region: the local error estimate of some strided step exceeded
            `FLAG_TOLERANCE` (see `solve_function_space`). Always False for "adaptive".
    """

    residual_sums: Float[Array, "horizons samples classes"]
    logits: Float[Array, "horizons samples classes"]
    final_logits: Float[Array, "samples classes"]
    products: Int[Array, ""] | int = 0
    flagged: Bool[Array, ""] | bool = False


def resolve_solver(solver: str, rows: int) -> str:
    """The solver that runs for `solver` on ``rows`` pooled rows: ``"auto"`` is
    ``"exponential"`` from `AUTO_EXPONENTIAL_ROWS` rows on and ``"adaptive"`` below; any other
    name is itself.

    >>> resolve_solver("auto", 1200), resolve_solver("auto", 120), resolve_solver("rk4", 1200)
    ('exponential', 'adaptive', 'rk4')
    """
    if solver != AUTO:
        return solver
    return EXPONENTIAL if int(rows) >= AUTO_EXPONENTIAL_ROWS else ADAPTIVE


def get_tableau(name: str) -> Tableau:
    """The tableau of the solver called `name`."""
    if name not in TABLEAUX:
        raise ValueError(_UNKNOWN_SOLVER.format(name=name, choices=sorted(TABLEAUX)))
    return TABLEAUX[name]


def check_horizons(horizons: Sequence[int]) -> tuple[int, ...]:
    """Validates a static tuple of non-negative integer horizons."""
    out = tuple(int(t) for t in horizons)
    if not out or min(out) < 0 or any(float(t) != float(o) for t, o in zip(horizons, out)):
        raise ValueError(f"horizons must be a non-empty tuple of integers >= 0; got {horizons!r}.")
    return out


def _rk_step(rhs, g, k1, h, tableau: Tableau, *, last_stage: bool = False):
    """One explicit RK step from `g` with its first stage `k1` already evaluated (and, with
    `last_stage`, the step's last stage slope too)."""
    ks = [k1]
    for row in tableau.a[1:]:
        y = g
        for coeff, k in zip(row, ks):
            if coeff != 0.0:
                y = y + (h * coeff) * k
        ks.append(rhs(y))
    for coeff, k in zip(tableau.b, ks):
        if coeff != 0.0:
            g = g + (h * coeff) * k
    return (g, ks[-1]) if last_stage else g


def _step_error(tableau, g, d, g1, d1, last, span, residual_t):
    """Relative residual error estimate of one step from its end points and slopes: RK4's
    embedded 3rd-order solution with the FSAL slope, ``(h/6)(k4 − k5)``, for ``rk4``; the
    Runge–Kutta–Chebyshev estimate ``0.8(y0 − y1) + 0.4h(F0 + F1)`` for the other tableaux."""
    if tableau == TABLEAUX["rk4"]:
        est = (span / 6) * (last - d1)
    else:
        est = 0.8 * (g - g1) + (0.4 * span) * (d + d1)
    r1 = residual_t(g1)
    return _rms(r1 - residual_t(g1 - est)) / (_RESIDUAL_FLOOR + _rms(r1))


def _scan_grid(
    carry, first, count, substeps, *, rhs, kernel_product, residual_t, h, tableau, stops
):
    """Grid steps ``first .. first+count-1``, each `substeps` RK steps; snapshots at `stops`."""

    def grid_step(carry, t):
        g, running, sums, snaps = carry
        res = residual_t(g)
        running = running + res
        g = _rk_step(rhs, g, kernel_product(res), h / substeps, tableau)
        if substeps > 1:
            g = jax.lax.fori_loop(
                1, substeps, lambda _, u: _rk_step(rhs, u, rhs(u), h / substeps, tableau), g
            )
        hit = (stops == t + 1)[:, None, None]
        return (g, running, jnp.where(hit, running, sums), jnp.where(hit, g, snaps)), None

    if count == 0:
        return carry
    steps = jnp.arange(first, first + count, dtype=jnp.int32)
    return jax.lax.scan(grid_step, carry, steps)[0]


def _scan_strided(carry, first, blocks, stride, *, rhs, residual_t, h, tableau, stops):
    """`blocks` RK steps of ``stride`` grid intervals each, from grid step `first`.

    The residual at the grid points inside a step comes from the cubic Hermite interpolant of the
    step's end points and slopes (4th-order accurate, like RK4 itself); it costs a softmax per
    grid point and no kernel product, since the end slope is the next step's first stage.
    """
    dtype = carry[0].dtype
    theta = jnp.arange(stride, dtype=dtype) / stride
    span = h * stride

    def block(state, t0):
        ((g, running, sums, snaps), d), worst = state
        g1, last = _rk_step(rhs, g, d, span, tableau, last_stage=True)
        d1 = rhs(g1)
        err = _step_error(tableau, g, d, g1, d1, last, span, residual_t)
        worst = jnp.maximum(worst, jnp.where(jnp.isfinite(err), err, jnp.inf))
        inner = hermite(g, d, g1, d1, span, theta)  # [stride, C, N]; inner[0] == g
        partial = running[None] + jnp.cumsum(jax.vmap(residual_t)(inner), axis=0)
        # Horizon τ in (t0, t0 + stride]: sum of residuals at t0 .. τ-1 = partial[τ - t0 - 1].
        offset = stops - t0 - 1
        hit = ((offset >= 0) & (offset < stride))[:, None, None]
        at_end = (offset == stride - 1)[:, None, None]
        inside = jnp.take(inner, jnp.clip(offset + 1, 0, stride - 1), axis=0)
        point = jnp.where(at_end, g1[None], inside)
        sums = jnp.where(hit, jnp.take(partial, jnp.clip(offset, 0, stride - 1), axis=0), sums)
        snaps = jnp.where(hit, point, snaps)
        return (((g1, partial[-1], sums, snaps), d1), worst), None

    starts = first + stride * jnp.arange(blocks, dtype=jnp.int32)
    worst = jnp.zeros((), dtype)
    ((carry, _), worst), _ = jax.lax.scan(block, ((carry, rhs(carry[0])), worst), starts)
    return carry, worst


def _check_counts(substeps: int, warmup_steps: int, warmup_substeps: int, stride: int) -> None:
    """Positive counts; stride and substeps not both above 1."""
    if min(int(substeps), int(warmup_substeps), int(stride)) < 1 or int(warmup_steps) < 0:
        raise ValueError(
            "substeps, warmup_substeps and stride must be >= 1 and warmup_steps >= 0; got "
            f"{substeps!r}, {warmup_substeps!r}, {stride!r}, {warmup_steps!r}."
        )
    if int(stride) > 1 and int(substeps) > 1:
        raise ValueError(f"Use stride > 1 or substeps > 1, not both; got {stride!r}, {substeps!r}.")


class _Phases(NamedTuple):
    """The grid split into solver phases: ``[0, warm)`` warm-up substeps, ``[warm, start)`` and
    ``[end, total)`` plain steps, ``[start, end)`` `blocks` strided steps of `stride` intervals."""

    total: int
    warm: int
    warm_substeps: int
    substeps: int
    start: int
    blocks: int
    stride: int

    @property
    def end(self) -> int:
        return self.start + self.blocks * self.stride


def _phases(horizons, solver, substeps, warmup_steps, warmup_substeps, stride, stride_from):
    """Validated phase layout shared by `solve_function_space` and `count_products`."""
    total = max(check_horizons(horizons))
    if solver == "euler" and int(stride) != 1:
        raise ValueError(
            "solver='euler' is discrete gradient descent of the linearized model: one step per "
            f"grid interval, so its stride must be 1; got {stride!r}."
        )
    if warmup_steps is None:
        warmup_steps = 0 if solver == "euler" else DEFAULT_WARMUP_STEPS
    _check_counts(substeps, warmup_steps, warmup_substeps, stride)
    warm, stride = min(int(warmup_steps), total), int(stride)
    start = min(max(warm, int(stride_from)), total) if stride > 1 else total
    return _Phases(
        total=total, warm=warm, warm_substeps=max(int(warmup_substeps), int(substeps)),
        substeps=int(substeps), start=start, blocks=(total - start) // stride, stride=stride,
    )  # fmt: skip


def count_products(
    horizons: Sequence[int],
    solver: str = "rk4",
    *,
    substeps: int = 1,
    warmup_steps: int | None = None,
    warmup_substeps: int = 4,
    stride: int = 1,
    stride_from: int = DEFAULT_STRIDE_FROM,
) -> int:
    """Kernel products ``[C, N] × [N, N]`` that `solve_function_space` runs with these options."""
    stages = len(get_tableau(solver).b)
    ph = _phases(horizons, solver, substeps, warmup_steps, warmup_substeps, stride, stride_from)
    fine = ph.total - ph.warm - ph.blocks * ph.stride
    out = stages * (ph.warm * ph.warm_substeps + fine * ph.substeps)
    return out + (1 + stages * ph.blocks if ph.blocks else 0)  # + the strided phase's first slope


def solve_function_space(
    kernel: Float[Array, "samples samples"],
    f0: Float[Array, "samples classes"],
    residual: Callable[[Array], Array],
    *,
    eta: ArrayLike,
    horizons: Sequence[int],
    num_samples: ArrayLike,
    solver: str = AUTO,
    substeps: int = 1,
    warmup_steps: int | None = None,
    warmup_substeps: int = 4,
    stride: int = 1,
    stride_from: int = DEFAULT_STRIDE_FROM,
    rtol: float | None = None,
    max_stride: int | None = None,
    rank: int = DEFAULT_RANK,
    krylov_depth: int = DEFAULT_KRYLOV_DEPTH,
) -> FunctionSpaceSolution:
    """Integrates the kernel flow on the grid ``s_t = t·η`` and sums residuals per horizon.

    Args:
        kernel: ``[N, N]`` symmetric trace kernel (masked rows/columns zero), dtype of `f0`.
        f0: ``[N, C]`` logits at the linearization point.
        residual: ``f -> [N, C]``, e.g. `Objective.residual` (masked rows zero).
        eta: grid step η; may be traced.
        horizons: static tuple of integer horizons T (grid steps); order is kept.
        num_samples: Ñ, the number of unmasked rows; may be traced.
        solver: ``"auto"`` (default: `resolve_solver`, exponential from
            `AUTO_EXPONENTIAL_ROWS` rows, else adaptive), ``"adaptive"`` (error-controlled
            RK4, `solve_adaptive`; uses only `rtol` and
            `max_stride` of the options below), ``"exponential"`` (error-controlled
            exponential RK with the top-`rank` eigenspace of K integrated exactly,
            `solve_exponential`; `rtol`, `max_stride`, `rank`, `krylov_depth`) or a key of
            `TABLEAUX` (fixed steps).
        substeps: static number of equal solver steps per grid interval.
        warmup_steps: the first grid intervals take ``max(warmup_substeps, substeps)`` steps
            each, resolving the stiff initial transient (the largest error source). None: 0 for
            ``"euler"`` (which then stays exactly discrete GD), 8 otherwise.
        warmup_substeps: substeps during the warm-up intervals.
        stride: static number of grid intervals per solver step after the warm-up (default 1).
            With ``stride > 1`` each RK step spans ``stride·η`` and the residuals at the grid
            points inside it come from the step's cubic Hermite interpolant, so a round costs
            about ``1/stride`` of the kernel products. Grid intervals past the last whole stride
            take one step each.
        stride_from: grid step where strided steps begin (at least the warm-up's end); before it
            steps are one grid interval. The flow is stiffest early, before the softmax saturates,
            so this buys stability for longer strides (see ``experiments/solver_stride.py``).
            Whether a strided step stayed accurate is checked by its local error estimate
            (free: it uses the step's stages and end slope); ``flagged`` reports a step whose
            estimate exceeded `FLAG_TOLERANCE`, which is what leaving the stability region does.
        rtol, max_stride: tolerance and longest step (grid intervals) of ``"adaptive"`` and
            ``"exponential"``; None: each solver's default (1e-5 and 8, 1e-5 and 32).
        rank, krylov_depth: deflated Ritz pairs of K and the Krylov blocks (kernel products)
            that find them, for ``"exponential"``.

    Returns:
        A `FunctionSpaceSolution`.
    """
    horizons = check_horizons(horizons)
    solver = resolve_solver(solver, kernel.shape[-1])
    if solver in (ADAPTIVE, EXPONENTIAL):
        fixed = {"substeps": substeps, "warmup_steps": warmup_steps, "stride": stride}
        if (substeps, warmup_steps, stride) != (1, None, 1):
            raise ValueError(
                f"solver={solver!r} chooses its own steps; {fixed} are options of the fixed-step "
                "solvers (e.g. solver='rk4')."
            )
        common = dict(eta=eta, horizons=horizons, num_samples=num_samples)
        if solver == ADAPTIVE:
            sums, logits, final, stats = solve_adaptive(
                kernel, f0, residual, **common, rtol=DEFAULT_RTOL if rtol is None else rtol,
                max_stride=DEFAULT_MAX_STRIDE if max_stride is None else max_stride,
            )  # fmt: skip
        else:
            sums, logits, final, stats = solve_exponential(
                kernel, f0, residual, **common, rtol=DEFAULT_EXP_RTOL if rtol is None else rtol,
                max_stride=DEFAULT_EXP_MAX_STRIDE if max_stride is None else max_stride,
                rank=rank, krylov_depth=krylov_depth,
            )  # fmt: skip
        return FunctionSpaceSolution(sums, logits, final, stats.products, jnp.asarray(False))
    tableau = get_tableau(solver)
    ph = _phases(horizons, solver, substeps, warmup_steps, warmup_substeps, stride, stride_from)
    dtype = f0.dtype
    scale = -1.0 / jnp.asarray(num_samples, dtype)
    # Work in the classes-first layout g = fᵀ: ``rᵀ K`` (= (K r)ᵀ, K symmetric) is the fast
    # skinny product on CPU (about 1.5x faster than ``K r`` at N = 1200, C = 10), taken as
    # `transposed_product` (a plain GEMM on XLA:CPU).

    residual_t = classes_first(residual)

    def kernel_product(res_t):
        return transposed_product(scale * res_t, kernel)

    def rhs(g):
        return kernel_product(residual_t(g))

    zeros = jnp.zeros((len(horizons), *f0.shape[::-1]), dtype)
    g0 = f0.T
    carry = (g0, jnp.zeros_like(g0), zeros, jnp.broadcast_to(g0, zeros.shape))
    common = {
        "rhs": rhs,
        "kernel_product": kernel_product,
        "residual_t": residual_t,
        "h": jnp.asarray(eta, dtype),
        "tableau": tableau,
        "stops": jnp.asarray(horizons, jnp.int32),
    }
    carry = _scan_grid(carry, 0, ph.warm, ph.warm_substeps, **common)
    carry = _scan_grid(carry, ph.warm, ph.start - ph.warm, ph.substeps, **common)
    worst = jnp.zeros((), dtype)
    if ph.blocks:
        strided = {k: v for k, v in common.items() if k != "kernel_product"}
        carry, worst = _scan_strided(carry, ph.start, ph.blocks, ph.stride, **strided)
    carry = _scan_grid(carry, ph.end, ph.total - ph.end, ph.substeps, **common)
    g, _, sums, snaps = carry
    products = count_products(
        horizons, solver, substeps=substeps, warmup_steps=warmup_steps,
        warmup_substeps=warmup_substeps, stride=stride, stride_from=stride_from,
    )  # fmt: skip
    return FunctionSpaceSolution(
        residual_sums=jnp.swapaxes(sums, 1, 2),
        logits=jnp.swapaxes(snaps, 1, 2),
        final_logits=g.T,
        products=jnp.asarray(products, jnp.int32),
        flagged=~(worst <= FLAG_TOLERANCE),
    )
