"""SPARK (arXiv 2512.12737; docs/spark.md): NTK-DFL + Nesterov momentum + a stage-wise annealed soft-label
regularizer on the neighbourhood's pooled data. Every choice the abstract leaves open is a named
option; defaults are set by ``experiments/spark_ablation.py``.

Random projection of Jacobians (docs/spark.md §5; off by default): ``--spark projection=
gaussian|kronecker`` with ``projection_dim=k`` per layer. Neighbours send ``J_l P_l`` (Ñ_j × C × k_l
per layer, `ntk.layer_projections`) instead of J and the kernel is formed from them.
``weight_step=exact`` gets Jᵀr by a second exchange (q sends each neighbour its residual rows for
every candidate horizon, the neighbour returns ``J_jᵀ r_j`` per horizon: numerically the current
VJP); ``weight_step=backproject`` uses ``P (JP)ᵀ r`` locally (NTK evolution restricted to the
random subspace ``w + P z``). Projection seed: the run's round key (``--seed`` and the round folded
in, identical on every client) folded with ``PROJECTION_STREAM``, then the layer index. A fresh
projection every round keeps the back-projected steps from all lying in one fixed k-dimensional
subspace per layer, and makes the kernel errors independent across rounds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from spark_tpu import gossip, ntk
from spark_tpu.ntk._projection import back_project_with, project_jacobian_with, projection_sizes

from ._base import BYTES_PER_FLOAT, Algorithm, Model, RoundContext, alive_degree, num_params
from ._ntk_dfl import (
    POOLING_OPTIONS, bucket_rows, evolve_clients, map_clients, ntk_dfl_bytes, ntk_options,
    pool_neighbourhood, selection_bytes,
)
from ._spec import AlgorithmSpec, BuildContext, register
from ._stages import Schedule, parse_stages

# Chosen by experiments/spark_ablation.py (results/spark_ablation/): a 3-round warm-up of plain
# NTK-DFL keeps the untrained initial model from acting as teacher (with λ > 0 from round 0 the
# first round lost 12 points), then Nesterov μ = 0.9 with λ annealed 0.5 → 0.1 (cosine), T = 2.
DEFAULT_STAGES = "0: lam=0, mu=0; 3: lam=0.5->0.1@cos, T=2, mu=0.9"
OPTIONS = {
    "momentum": ("nesterov", "heavy_ball"),
    "buffer": ("local", "gossip"),
    "teacher": ("averaged", "neighbor"),
    "projection": ("none", "gaussian", "kronecker"),
    "projection_dim": "a positive integer",
    "weight_step": ("exact", "backproject"),
}
DEFAULT_OPTIONS = {
    "momentum": "nesterov", "buffer": "local", "teacher": "averaged",
    "projection": "none", "projection_dim": 256, "weight_step": "exact",
}
PROJECTION_STREAM = 0x50524A  # folded into the round key to give the round's projection seed
_NEEDS_PROJECTION = ("projection_dim", "weight_step")


class SparkState(NamedTuple):
    """Per-client model and momentum buffer v_q (zero at start)."""

    params: Any
    velocity: Any


def resolve_options(options: dict) -> dict:
    """Defaults overridden by --spark KEY=VALUE, validated."""
    out = dict(DEFAULT_OPTIONS)
    for key, value in options.items():
        if key not in OPTIONS:
            raise ValueError(f"--spark={key}={value}: unknown option; choose from {sorted(OPTIONS)}.")
        if isinstance(OPTIONS[key], str):
            out[key] = _positive_int(key, value)
            continue
        if value not in OPTIONS[key]:
            raise ValueError(f"--spark={key}={value}: choose one of {', '.join(OPTIONS[key])}.")
        out[key] = value
    if out["projection"] == "none":  # a width or a back-projection without a projection
        for key in _NEEDS_PROJECTION:
            if key in options and (key == "projection_dim" or out[key] != DEFAULT_OPTIONS[key]):
                raise ValueError(
                    f"--spark={key}={options[key]}: needs --spark=projection=gaussian or "
                    "kronecker (projection is none)."
                )
    return out


def _positive_int(key: str, value) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--spark={key}={value}: choose {OPTIONS[key]}, e.g. {key}=256.")
    return int(text)


def _projection_step(model: Model, start, ctx: RoundContext, opts: dict) -> dict:
    """`ntk.ntk_evolution_step` options for the random projection of docs/spark.md §5 ({} when off).

    The matrices are drawn once per round from the round's projection seed (the same on every
    client) and shared by every client's step.
    """
    if opts["projection"] == "none":
        return {}
    template = eqx.combine(jax.tree.map(lambda p: p[0], start), model.static)
    seed = jax.random.fold_in(ctx.key, PROJECTION_STREAM)
    mats = ntk.layer_projections(
        template, k=opts["projection_dim"], seed=seed, kind=opts["projection"]
    )
    if opts["weight_step"] == "exact":  # kernel from J·P; Jᵀr by the exact (second-exchange) VJP
        return {"kernel_fn": lambda net, x, mask: ntk.kernel_from_projection(
            project_jacobian_with(net, x, mats), mask)}  # fmt: skip

    def linearize(net, x, mask):  # kernel from J·P; Jᵀr ≈ P (JP)ᵀ r
        jp = project_jacobian_with(net, x, mats)
        return ntk.kernel_from_projection(jp, mask), lambda r: back_project_with(net, jp, r, mats)

    return {"linearize_fn": linearize}


def _pool_with_teacher(
    model: Model, averaged, ctx, teacher: str, client_batch: int, compact: bool
):
    """The pooled neighbourhood and the teacher's logits g on its rows, in one exchange: averaged,
    f(X_Sq; w̄_q); neighbor, block by block f(X_j; w̄_j), the model j holds after this round's
    averaging."""
    if teacher == "averaged":  # g = f(X_Sq; w̄_q)
        pooled, _ = pool_neighbourhood(ctx, compact=compact)
        return pooled, map_clients(model.apply, (averaged, pooled.x), client_batch)
    own = map_clients(model.apply, (averaged, ctx.data.x), client_batch)
    return pool_neighbourhood(ctx, extra=own, compact=compact)  # each neighbour's own model


def spark(
    model: Model, *, num_classes: int, stages: str | Schedule = "", rounds: int, options: dict | None = None,
    eta0: float = 0.01, lr_decay: float = 0.07, horizons=(100, 200, 400, 600, 800),
    solver: str = "auto", loss: str = "ce", client_batch: int = 0, solver_stride: int = 1,
    buckets: tuple[int, int] | None = None, tau_selection: str = "pooled",
) -> Algorithm:
    """SPARK. Per round k, with (λ, T, μ) from the stage schedule at k:

    w̄_q = Σ_j W_qj w_j;  u_q = w̄_q + μ v_q (Nesterov; heavy-ball: u_q = w̄_q);
    the NTK step (docs/ntk_step.md) from u_q on S_q with residual (1−λ)(softmax(f)−Y) + λT(softmax(f/T) −
    softmax(g/T)), g the teacher's logits, τ* chosen on the same regularized loss;
    w_q = u_q + Δ_q (heavy-ball: + μ v_q);  v_q = w_q − w̄_q.

    ``options``: ``momentum`` (nesterov | heavy_ball), ``buffer`` (local | gossip), ``teacher``
    (averaged | neighbor), ``projection`` (none | gaussian | kronecker), ``projection_dim`` (k per
    layer), ``weight_step`` (exact | backproject); see the module docstring for the projection.
    ``tau_selection``: ``pooled`` or ``linearized``, as for NTK-DFL (`selection_bytes`).

    Metrics: ``train_loss`` is the plain cross-entropy at u_q on the pooled data (what NTK-DFL
    reports at w̄_q); ``objective`` is the regularized loss there, the one the step minimizes.
    """
    if not isinstance(stages, Schedule):
        stages = parse_stages(stages or DEFAULT_STAGES, rounds)
    schedule = stages
    opts = resolve_options(options or {})
    _refuse_combinations(loss, tau_selection, opts)
    eta = ntk.lr_schedule(eta0, lr_decay)

    def round_(state: SparkState, ctx: RoundContext):
        hp = schedule(ctx.round)
        averaged = gossip.mix(state.params, ctx.graph)
        buf = gossip.mix(state.velocity, ctx.graph) if opts["buffer"] == "gossip" else state.velocity
        nesterov = opts["momentum"] == "nesterov"
        start = jax.tree.map(lambda a, v: a + hp["mu"] * v, averaged, buf) if nesterov else averaged
        pooled, g = _pool_with_teacher(
            model, averaged, ctx, opts["teacher"], client_batch, compact=buckets is not None
        )

        def objective(y, mask, i):  # on the first len(y) pooled rows (buckets)
            return ntk.soft_label_regularized(
                y, g[i][: y.shape[0]], mask, weight=hp["lam"], temperature=hp["T"]
            )

        new, info = evolve_clients(
            model, start, pooled, objective, eta=eta(ctx.round), num_classes=num_classes,
            horizons=tuple(horizons), solver=solver, client_batch=client_batch,
            step_options={**_projection_step(model, start, ctx, opts), "stride": solver_stride},
            buckets=bucket_rows(buckets, ctx), tau_selection=tau_selection,
        )
        labels = jax.nn.one_hot(pooled.y, num_classes, dtype=pooled.x.dtype)
        plain = jax.vmap(lambda f, y, m: ntk.cross_entropy(y, m).loss(f))(
            map_clients(model.apply, (start, pooled.x), client_batch), labels, pooled.mask
        )
        if not nesterov:
            new = jax.tree.map(lambda w, v: w + hp["mu"] * v, new, buf)
        velocity = jax.tree.map(jnp.subtract, new, averaged)
        metrics = {
            "train_loss": plain, "objective": info.initial_loss, "tau": info.tau,
            "solver_products": info.solver_products, "solver_flagged": info.solver_flagged,
            "lam": jnp.broadcast_to(hp["lam"], info.tau.shape),
            "mu": jnp.broadcast_to(hp["mu"], info.tau.shape),
            "bytes_sent": _bytes(
                ctx, state.params, num_classes, hp, opts, model=model, pooled=pooled,
                num_horizons=len(tuple(horizons)), tau_selection=tau_selection,
            ),
        }
        return SparkState(new, velocity), metrics

    return Algorithm(init=lambda p: SparkState(p, jax.tree.map(jnp.zeros_like, p)), round=round_)


def _bytes(ctx: RoundContext, params, num_classes: int, hp, opts, *, model=None, pooled=None,
           num_horizons: int = 1, tau_selection: str = "pooled"):
    """Bytes each client sends in a SPARK round (docs/spark.md §8, docs/metrics.md §5), on top of NTK-DFL's exchange at the
    Jacobian point u_q (`ntk_dfl_bytes`, or `_projected_bytes`) and the choice of τ*
    (`selection_bytes`):

    - averaged teacher with λ > 0 and a Nesterov look-ahead (μ > 0): the neighbour needs w̄_q as
      well as u_q (3 models per edge) and returns the teacher logits f(X_j; w̄_q) (n·C floats)
      beside its logits at u_q. With heavy-ball (or μ = 0) u_q = w̄_q, so the teacher logits are
      the logits already sent with the Jacobian: nothing extra;
    - neighbour teacher with λ > 0: each neighbour also returns its own model's logits on its own
      data (n·C floats), whatever the momentum;
    - ``buffer=gossip``: the momentum buffer is mixed like the weights (one more model per edge).
    """
    one = jax.tree.map(lambda p: p[0], params)
    if opts["projection"] == "none":
        base = ntk_dfl_bytes(ctx, one, num_classes)
    else:
        base = _projected_bytes(ctx, one, num_classes, opts, model, pooled, num_horizons)
    base = base + selection_bytes(ctx, one, num_horizons, tau_selection)
    deg = alive_degree(ctx)
    n = jnp.sum(ctx.data.mask, axis=1).astype(jnp.float32)
    p = num_params(one)
    lam_on = hp["lam"] > 0
    lookahead = (hp["mu"] > 0) if opts["momentum"] == "nesterov" else False
    if opts["teacher"] == "averaged":
        extra = jnp.where(lam_on & lookahead, deg * (p + n * num_classes) * BYTES_PER_FLOAT, 0.0)
    else:
        extra = jnp.where(lam_on, deg * n * num_classes * BYTES_PER_FLOAT, 0.0)
    if opts["buffer"] == "gossip":
        extra = extra + deg * p * BYTES_PER_FLOAT
    return base + extra


def _projected_bytes(ctx, one, num_classes, opts, model, pooled, num_horizons):
    """NTK-DFL's bytes with J·P (n·C·Σ_l k_l floats per neighbour served) in place of J; for
    ``weight_step=exact`` also the second exchange: q sends each live neighbour j its residual rows
    for every horizon (H·n_j·C floats) and returns, to each neighbour it serves, J_qᵀ r for every
    horizon (H·P floats). docs/spark.md §8."""
    net = eqx.combine(one, model.static)
    floats = sum(projection_sizes(net, k=opts["projection_dim"], kind=opts["projection"]))
    base = ntk_dfl_bytes(ctx, one, num_classes, jacobian_floats=floats)
    if opts["weight_step"] == "backproject":
        return base
    own = jnp.sum(ctx.data.mask, axis=1)
    neighbour_rows = (jnp.sum(pooled.mask, axis=1) - own).astype(jnp.float32)  # Σ_j n_j, live j
    exchange = num_horizons * (
        neighbour_rows * num_classes + alive_degree(ctx) * num_params(one)
    ) * BYTES_PER_FLOAT
    return base + exchange


def _refuse_combinations(loss: str, tau_selection: str, opts: dict) -> None:
    if loss != "ce":
        raise ValueError(
            f"--loss={loss}: SPARK's soft-label regularizer is defined for cross-entropy; "
            "use --loss=ce."
        )
    if tau_selection == "linearized" and opts["projection"] != "none" and (
        opts["weight_step"] == "exact"
    ):
        raise ValueError(
            "--tau_selection=linearized with --spark=weight_step=exact: q holds only J·P, and the "
            "exact Δw_τ is not in the projected subspace, so J Δw_τ would need another exchange; "
            "use --tau_selection=pooled or --spark=weight_step=backproject."
        )


def check_flags(cfg) -> None:
    """The stage schedule, the options and their combinations, from the flags alone (called when
    the configuration is built, before any data loads)."""
    parse_stages(cfg.spark_stages or DEFAULT_STAGES, cfg.rounds)
    _refuse_combinations(cfg.loss, cfg.tau_selection, resolve_options(dict(cfg.spark_options)))


def _build(ctx: BuildContext) -> Algorithm:
    cfg = ctx.config
    return spark(
        ctx.model, stages=parse_stages(cfg.spark_stages or DEFAULT_STAGES, cfg.rounds),
        # the user's options, not resolved ones: spark() resolves them, and resolving twice
        # reads the default projection_dim as one given without a projection (and refuses it)
        rounds=cfg.rounds, options=dict(cfg.spark_options), **ntk_options(ctx),
    )


register(AlgorithmSpec(
    "spark", _build, reference=dict(lr=0.01),
    options=POOLING_OPTIONS + ("spark_stages", "spark_options"),
    state_options=("spark_stages", "spark_options"), trajectory_options=("rounds",),
    validate=check_flags,
    description="SPARK: NTK-DFL + Nesterov momentum + an annealed soft-label regularizer"))
