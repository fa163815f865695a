"""NTK-DFL (docs/ntk_dfl.md §1): average, pool the neighbourhood's data, evolve in function space.

One round for client q: w̄_q = Σ_j W_qj w_j; every neighbour j returns its Jacobian at w̄_q on its
data with labels and logits; q runs the NTK evolution step (docs/ntk_step.md) from w̄_q on the pooled data
S_q. Inside the simulator q receives its neighbours' inputs and labels instead of Jacobians (the
result is identical: the kernel and the VJP are computed at w̄_q either way); bytes are counted for
the protocol (weights both ways, Jacobians, labels, logits, and the exchange that chooses τ*:
`selection_bytes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from absl import logging

from spark_tpu import gossip, ntk, topology

from ._base import (
    BYTES_PER_FLOAT, BYTES_PER_LABEL, Algorithm, Model, ParamsState, RoundContext, alive_degree,
    num_params,
)
from ._spec import AlgorithmSpec, BuildContext, register

if TYPE_CHECKING:
    from spark_tpu.topology import GossipPlan


class Pooled(NamedTuple):
    """A neighbourhood's pooled data, client-stacked: x [L, Ñ, ...], y [L, Ñ], mask [L, Ñ]."""

    x: Any
    y: Any
    mask: Any


def pool_neighbourhood(ctx: RoundContext, extra=None, compact: bool = False):
    """Gathers every client's closed neighbourhood's data (and optional per-sample ``extra``
    rows, e.g. teacher logits) into pooled arrays; dead links and padding are masked.

    ``compact`` puts the alive neighbours' blocks first (self stays first), so that a prefix of
    the pooled rows holds everything a low-degree client has (see `evolve_clients`' buckets)."""
    d = ctx.data
    nb = gossip.neighbors((d.x, d.y, d.mask, extra), ctx.graph)
    alive = gossip.neighbor_mask(ctx.graph)
    if compact:
        order = jnp.argsort(~alive, axis=1, stable=True)  # [L, K + 1]

        def front(a):
            index = order.reshape(order.shape + (1,) * (a.ndim - 2))
            return jnp.take_along_axis(a, index, axis=1)

        nb, alive = jax.tree.map(front, nb), front(alive)
    keep = alive[:, :, None] & nb[2]

    def flat(a):
        return a.reshape((a.shape[0], a.shape[1] * a.shape[2]) + a.shape[3:])

    pooled = Pooled(flat(nb[0]), flat(nb[1]), flat(keep))
    return pooled, (None if extra is None else flat(nb[3]))


def ntk_dfl_bytes(
    ctx: RoundContext, params_one, num_classes: int, models_per_edge: int = 2,
    jacobian_floats: int | None = None,
):
    """Protocol bytes each client sends in the exchange that builds the NTK step (docs/ntk_dfl.md §7,
    docs/metrics.md §5): to every live neighbour its model w_q (for the averaging) and the
    linearization point (w̄_q), ``models_per_edge`` models in all, plus, for every neighbour it
    serves, the Jacobian of its own data at that neighbour's point (n·C·P floats), its labels
    (n int32) and its logits (n·C).

    ``jacobian_floats`` replaces P as the floats per sample and class of what is sent in place of
    the Jacobian (Σ_l k_l for the random projection of docs/spark.md §5). The choice of τ* is
    counted apart, by `selection_bytes`."""
    p = num_params(params_one)
    j = p if jacobian_floats is None else jacobian_floats
    n = jnp.sum(ctx.data.mask, axis=1).astype(jnp.float32)
    per_neighbour = models_per_edge * p * BYTES_PER_FLOAT + n * (
        num_classes * (j + 1) * BYTES_PER_FLOAT + BYTES_PER_LABEL
    )
    return alive_degree(ctx) * per_neighbour


def selection_bytes(ctx: RoundContext, params_one, num_horizons: int, tau_selection: str):
    """Bytes each client sends to choose τ* (docs/ntk_step.md §5 across a neighbourhood).

    ``pooled`` (the loss of the real network on the pooled data, the reference): q holds Δw_τ for
    every candidate τ but not its neighbours' data, so it sends each live neighbour the |T|
    candidate steps (|T|·P floats) and each neighbour returns the sum of its per-sample losses
    for every candidate (|T| floats; q knows n_j from the labels). A client does both, once per
    live link: deg·|T|·(P + 1)·4 bytes. At the paper setting (deg 5, |T| = 5, P = 79,510) that is
    7.95 MB per client per round.
    ``linearized`` (the loss of f(X_j; w) + J_j Δw_τ): computed by q from the Jacobians (or, with
    a back-projected weight step, the projected Jacobians J_j P, since then Δw_τ = P z_τ) and
    logits it already received: 0 bytes.
    """
    if tau_selection == "linearized":
        return jnp.zeros_like(alive_degree(ctx))
    p = num_params(params_one)
    return alive_degree(ctx) * (num_horizons * (p + 1) * BYTES_PER_FLOAT)


# Float32 N×N arrays one client's evolution step holds at its peak, with margin: an XLA buffer of
# ~3.1 N² floats per client was measured (H100, Erdős–Rényi pool padded to Ñ = 3200, 300 clients).
_KERNEL_COPIES = 8
_MEMORY_SHARE = 0.4  # of the device's memory for one vmapped batch of evolution steps
_DEFAULT_DEVICE_BYTES = 16 * 2**30  # when the backend reports no limit


def auto_client_batch(num_local: int, pooled_size: int, device_bytes: int) -> int:
    """Clients per vmapped batch on an accelerator: all ``num_local`` when their kernels fit in
    a share of ``device_bytes``, else the largest batch that does (0 means "vmap all")."""
    per_client = _KERNEL_COPIES * 4 * pooled_size**2
    fit = int(_MEMORY_SHARE * device_bytes) // per_client
    return 0 if fit >= num_local else max(1, fit)


def _on_accelerator() -> bool:
    return jax.default_backend() != "cpu"


def _device_bytes() -> int:
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", _DEFAULT_DEVICE_BYTES))


def map_clients(fn: Callable, xs, client_batch: int, pooled_size: int | None = None):
    """Applies ``fn`` to every local client: client_batch=0 picks by platform (lax.map on CPU,
    where a client's kernel stays in cache, ~2x faster; vmap on accelerators, ~5x faster, in
    batches that fit the device's memory when ``pooled_size`` is given, see `auto_client_batch`);
    k > 0 maps in vmapped batches of k (bounded memory); k < 0 vmaps all."""
    if client_batch == 0 and pooled_size and _on_accelerator():
        num_local = jax.tree.leaves(xs)[0].shape[0]
        client_batch = auto_client_batch(num_local, pooled_size, _device_bytes()) or -1
    if client_batch < 0:
        return jax.vmap(fn)(*xs)
    strategy = "auto" if client_batch == 0 else "map"
    return ntk.batch_map(fn, *xs, strategy=strategy, batch_size=client_batch or None)


def degree_buckets(plan: GossipPlan, min_saving: float = 0.2) -> tuple[int, int] | None:
    """Two pooled widths for NTK-DFL and SPARK on graphs with uneven degrees (docs/ntk_dfl.md §5).

    A client's pooled data has one block per closed-neighbourhood slot, padded to the pool's
    largest degree K. With ``(s, b)`` every client is evolved on its first ``s`` slots (self and
    up to s − 1 alive neighbours, compacted to the front), and the ``b`` clients of a device with
    the most pooled rows again on all K + 1: enough, because in no graph of the pool does any
    device hold more than ``b`` clients of degree ≥ s (links that fail only lower degrees). The
    widths minimise L·s² + b·(K + 1)² (the NTK step's cost grows with the square of the pooled
    size); None when that saves less than ``min_saving`` of L·(K + 1)², e.g. on regular graphs.
    Host side, from the plan's tables; `evolve_clients` runs the two widths.
    """
    degrees = (plan.base_weight > 0).sum(axis=-1)  # [G, D, L]
    k1, slots = plan.max_degree + 1, plan.slots
    full = slots * k1**2
    best = None
    for s in range(1, k1):
        b = int((degrees >= s).sum(axis=-1).max())  # clients needing more than s slots
        cost = slots * s**2 + b * k1**2
        if best is None or cost < best[0]:
            best = (cost, s, b)
    if best is None or best[0] > (1 - min_saving) * full:
        return None
    return best[1], best[2]


def bucket_rows(buckets: tuple[int, int] | None, ctx: RoundContext) -> tuple[int, int] | None:
    """(pooled slots, b) → (pooled rows, b): each slot is one client's block of samples."""
    return None if buckets is None else (buckets[0] * ctx.data.mask.shape[1], buckets[1])


def evolve_clients(
    model: Model, start, pooled: Pooled, objectives, *, eta, num_classes, horizons, solver,
    client_batch, step_options: dict | None = None, buckets: tuple[int, int] | None = None,
    tau_selection: str = "pooled",
):
    """The NTK evolution step (docs/ntk_step.md) for every local client from ``start`` on its pooled data.

    ``objectives(y_onehot, mask, i) -> ntk.Objective`` builds client i's objective on the first
    ``len(y_onehot)`` pooled rows; ``step_options`` go to `ntk.ntk_evolution_step` (e.g. a
    projected ``kernel_fn``, docs/spark.md §5). ``buckets=(rows, b)`` (pooled data compacted, see
    `degree_buckets`): every client runs on its first ``rows`` pooled rows, then the
    ``b`` clients with the most valid rows run again on all of them and replace their results.
    Masked rows do not change the step, so this is the padded computation at a lower cost.
    """
    step_options = step_options or {}

    def one(p, x, y, mask, i):
        obj = objectives(jax.nn.one_hot(y, num_classes, dtype=x.dtype), mask, i)
        net = eqx.combine(p, model.static)
        new, info = ntk.ntk_evolution_step(
            net, x, obj, mask, eta=eta, horizons=horizons, solver=solver,
            selection=tau_selection, **step_options,
        )  # MSE runs use solver="mse_closed_form" (see ntk_dfl)
        return eqx.partition(new, eqx.is_array)[0], info

    def run(p, x, y, mask, i):
        return map_clients(one, (p, x, y, mask, i), client_batch, mask.shape[1])

    index = jnp.arange(pooled.mask.shape[0], dtype=jnp.int32)
    if buckets is None:
        return run(start, pooled.x, pooled.y, pooled.mask, index)
    rows, big = buckets
    new, info = run(start, *(a[:, :rows] for a in pooled), index)
    if big == 0:
        return new, info
    sel = jax.lax.top_k(jnp.sum(pooled.mask, axis=1), big)[1]  # the b fullest neighbourhoods
    take = lambda t: jax.tree.map(lambda a: a[sel], t)  # noqa: E731
    new_big, info_big = run(take(start), *take(tuple(pooled)), sel)
    put = lambda a, b: a.at[sel].set(b)  # noqa: E731
    return jax.tree.map(put, new, new_big), jax.tree.map(put, info, info_big)


def ntk_dfl(
    model: Model, *, num_classes: int, eta0: float = 0.01, lr_decay: float = 0.07,
    horizons=(100, 200, 400, 600, 800), solver: str = "auto", loss: str = "ce",
    client_batch: int = 0, solver_stride: int = 1, buckets: tuple[int, int] | None = None,
    tau_selection: str = "pooled",
) -> Algorithm:
    """NTK-DFL (Thompson et al., ICML 2025; docs/ntk_dfl.md) with η_k = η0·exp(−decay·k).

    ``tau_selection``: ``pooled`` (the real network's loss on the pooled data, the reference) or
    ``linearized``; see `selection_bytes` for what each sends.

    ``solver``: ``"adaptive"`` (error-controlled) or a fixed-step tableau, whose
    ``solver_stride`` is the grid intervals per step after the first 32 (see
    `ntk.solve_function_space`). ``buckets``: `degree_buckets` of the plan (pooled
    slots, clients at full width), to skip most padding on graphs with uneven degrees.
    """
    schedule = ntk.lr_schedule(eta0, lr_decay)
    make_objective = ntk.cross_entropy if loss == "ce" else ntk.mse
    if loss == "mse":  # no softmax damping: the kernel flow is too stiff for RK4 at step η
        solver = "mse_closed_form"

    def round_(state: ParamsState, ctx: RoundContext):
        averaged = gossip.mix(state.params, ctx.graph)
        pooled, _ = pool_neighbourhood(ctx, compact=buckets is not None)
        new, info = evolve_clients(
            model, averaged, pooled, lambda y, m, i: make_objective(y, m),
            eta=schedule(ctx.round), num_classes=num_classes, horizons=tuple(horizons),
            solver=solver, client_batch=client_batch, step_options={"stride": solver_stride},
            buckets=bucket_rows(buckets, ctx), tau_selection=tau_selection,
        )
        one = jax.tree.map(lambda p: p[0], state.params)
        sent = ntk_dfl_bytes(ctx, one, num_classes) + selection_bytes(
            ctx, one, len(tuple(horizons)), tau_selection
        )
        metrics = {
            "train_loss": info.initial_loss, "tau": info.tau, "bytes_sent": sent,
            "solver_products": info.solver_products, "solver_flagged": info.solver_flagged,
        }
        return ParamsState(new), metrics

    return Algorithm(init=ParamsState, round=round_)


# The run options every NTK method reads; NTK-DFL and SPARK also pool neighbourhood data
# (--degree_buckets) and decay η (--lr_decay).
NTK_OPTIONS = ("horizons", "solver", "solver_stride", "client_batch", "tau_selection")
POOLING_OPTIONS = NTK_OPTIONS + ("degree_buckets", "lr_decay")


def ntk_options(ctx: BuildContext) -> dict:
    """The keyword arguments `ntk_dfl` and `spark` share, from the run's configuration."""
    cfg = ctx.config
    options = dict(
        num_classes=ctx.num_classes, eta0=ctx.hyper["lr"], lr_decay=cfg.lr_decay,
        horizons=cfg.horizons, solver=cfg.solver, loss=cfg.loss, client_batch=cfg.client_batch,
        solver_stride=cfg.solver_stride, tau_selection=cfg.tau_selection,
    )
    plan = ctx.plan
    if cfg.degree_buckets and plan is not None:
        options["buckets"] = degree_buckets(plan)
        if options["buckets"] is not None:
            slots, big = options["buckets"]
            logging.info(
                "pooled data in two widths: %d of %d neighbourhood slots for every client, all "
                "for the %d fullest per device (--degree_buckets)", slots, plan.max_degree + 1, big,
            )
    return options


def _build(ctx: BuildContext) -> Algorithm:
    return ntk_dfl(ctx.model, **ntk_options(ctx))


# Reference step size η0: docs/ntk_dfl.md §3.
register(AlgorithmSpec("ntk_dfl", _build, reference=dict(lr=0.01),
                       options=POOLING_OPTIONS + ("loss",),
                       description="NTK-DFL: neighbours exchange Jacobians, evolve, average"))
