"""NTK-FL (docs/ntk_fl.md; Yue et al., ICML 2022, arXiv 2110.03681): a server pools the sampled clients' Jacobians
and evolves the global model in function space.

One round k:

1. The server samples S = max(1, round(participation·Q)) clients with `sample_clients`: the same
   draw on every device, from the round key (and the same draw FedAvg makes for the same seed).
2. Each sampled client receives the global model w, computes its Jacobian ∂f(X_q; w)/∂w on all of
   its samples and uploads it with its labels and logits f(X_q; w).
3. The server pools them (Ñ = Σ n_q rows), runs the NTK evolution step (docs/ntk_step.md) from w with a
   constant η (0.01 in the reference: no decay) and horizons T (`NTK_FL_HORIZONS` by default), and
   takes w + Δw_τ* as the new global model.

How the simulator runs it inside the sharded round (L client slots per device):

- Every slot holds a copy of the global model (evaluation reads it) and a ``stamp``, the round in
  which it last received it. The engine leaves dropped clients' state untouched, so a copy may be
  stale; the server's model is the copy of the freshest slot (smallest client id among ties),
  found from one `gossip.client_sum` of a [Q] vector of stamps.
- As in NTK-DFL, the server receives the sampled clients' inputs and labels instead of their
  Jacobians and forms the kernel and the VJP at w itself: the result is identical. Each device
  writes its sampled clients' x/y/mask into an [S, n, ...] buffer at the client's position among
  the sampled ones (ordered by client id), zeros elsewhere, and `gossip.client_sum` adds the
  buffers: every device then holds the pooled data (the sums add zeros, so they are exact).
- The server step (an Ñ×Ñ kernel, about 4·max(T) kernel products, the horizon search) runs under
  `lax.cond` on one device only: the one holding the freshest slot (the "server device"). All
  devices run the same SPMD program, but a `cond` whose predicate differs per device executes one
  branch on each: the others return zeros at once, and a `client_sum` of the result broadcasts
  w + Δw_τ* (plus τ* and the loss) exactly. Replicating the step on every device costs D times
  the work: on 8 emulated CPU devices sharing 2 (busy) cores, at 100 clients × 200 samples with 7
  sampled (Ñ = 1400) and horizons up to 2000, a round took 5.7 s this way and 77 s replicated, with
  the same model (experiments/results/ntk_fl/ntk_fl_cost.md; more than 8×, as eight Ñ×Ñ kernels then
  compete for the cache). ``replicate_server=True`` keeps the replicated variant for that
  measurement. Splitting the kernel's rows across devices would need a collective
  inside every solver stage (thousands per round) and was not pursued.

Bytes (docs/ntk_fl.md §4), per client row, both directions of its link with the server, as FedAvg counts
them: a sampled client receives w (P floats) and uploads its Jacobian (n·C·P floats), labels (n
int32) and logits (n·C floats); unsampled clients send and receive nothing. Choosing τ* with the
real network on the pooled data (``tau_selection="pooled"``, the reference) needs the clients'
data, which the server does not hold: it sends each sampled client the |T| candidate steps (|T|·P
floats) and the client returns its loss sum for each (|T| floats). ``tau_selection="linearized"``
scores f(X; w) + J Δw_τ from the Jacobians the server already holds: no extra bytes. The server
sends the model only to the clients it samples (they need it for their Jacobians); the simulator
copies the new model into every slot for evaluation only, and that copy is not counted.

Metrics: ``tau`` is τ* on every client (each holds the model evolved for τ*), so the simulator's
horizon histogram counts client-rounds (Q per round), like NTK-DFL's; ``train_loss`` is the loss
of w on the pooled data, on the sampled clients; ``sampled`` marks them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from spark_tpu import gossip, ntk

from ._base import BYTES_PER_FLOAT, BYTES_PER_LABEL, Algorithm, Model, RoundContext, num_params
from ._server import sample_clients
from ._spec import AlgorithmSpec, BuildContext, register

# The reference horizons of NTK-FL (docs/ntk_fl.md §2).
NTK_FL_HORIZONS = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1500, 2000)


class NTKFLState(NamedTuple):
    """Every slot's copy of the global model and the round it last received it (−1: the init)."""

    params: Any
    stamp: Any


def _init(params) -> NTKFLState:
    count = jax.tree.leaves(params)[0].shape[0]
    return NTKFLState(params, jnp.full((count,), -1, jnp.int32))


def _scatter_clients(ctx: RoundContext, values, num_clients: int):
    """A [Q] vector with every local real client's value at its id and zeros elsewhere."""
    index = jnp.where(ctx.real, ctx.client_ids, num_clients)
    return jnp.zeros((num_clients,), values.dtype).at[index].set(values, mode="drop")


def _server_view(state: NTKFLState, ctx: RoundContext, chosen, num_clients: int):
    """Replicated on every device from one client_sum: the freshest slot's client id, and every
    sampled client's position among the sampled ones (by client id)."""
    table = jnp.stack([
        _scatter_clients(ctx, state.stamp + 2, num_clients),
        _scatter_clients(ctx, chosen.astype(jnp.int32), num_clients),
    ])
    stamps, chosen_all = gossip.client_sum(table[None])
    source = jnp.argmax(stamps).astype(ctx.client_ids.dtype)
    position = (jnp.cumsum(chosen_all) - 1)[jnp.minimum(ctx.client_ids, num_clients - 1)]
    return source, position


def _server_model(params, ctx: RoundContext, source, is_server, replicate: bool):
    """The copy in the freshest slot: on the server device (on every device if ``replicate``)."""
    slot = jnp.argmax(ctx.client_ids == source)
    w = jax.tree.map(lambda p: p[slot], params)
    if not replicate:
        return w  # read only by the server device's branch of `_on_server_device`
    return gossip.client_sum(jax.tree.map(lambda v: jnp.where(is_server, v, 0)[None], w))


def _gather_sampled(ctx: RoundContext, chosen, position, count: int):
    """The sampled clients' data pooled on every device: x [S·n, ...], y [S·n], mask [S·n]."""
    d = ctx.data
    index = jnp.where(chosen, position, count)

    def place(a):
        buffer = jnp.zeros((count,) + a.shape[1:], a.dtype)
        return buffer.at[index].set(a, mode="drop")[None]

    x, y, mask = gossip.client_sum((place(d.x), place(d.y), place(d.mask.astype(jnp.int32))))

    def flat(a):
        return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])

    return flat(x), flat(y), flat(mask) > 0


def _server_step(
    model: Model, w, pooled, *, num_classes, eta, horizons, solver, make_objective, stride,
    selection,
):
    """The NTK step (docs/ntk_step.md) from w on the pooled data: (w + Δw_τ*, τ*, loss of w,
    (solver products, 1 if the fixed-step solver was flagged else 0))."""
    x, y, mask = pooled
    objective = make_objective(jax.nn.one_hot(y, num_classes, dtype=x.dtype), mask)
    net = eqx.combine(w, model.static)
    new, info = ntk.ntk_evolution_step(
        net, x, objective, mask, eta=eta, horizons=horizons, solver=solver, stride=stride,
        selection=selection,
    )
    solved = (info.solver_products, info.solver_flagged.astype(jnp.int32))
    return eqx.partition(new, eqx.is_array)[0], info.tau, info.initial_loss, solved


def _on_server_device(step, is_server, replicate: bool):
    """``step()`` on the server device and zeros elsewhere, summed over devices: the server's
    result on every device (exact: the other terms are zeros)."""
    if replicate:  # every device evolves the same w on the same pooled data
        return step()
    shapes = jax.eval_shape(step)

    def zeros():
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    out = jax.lax.cond(is_server, step, zeros)
    return gossip.client_sum(jax.tree.map(lambda v: v[None], out))


def ntk_fl_bytes(
    ctx: RoundContext, chosen, params_one, num_classes: int, num_horizons: int = 0,
    tau_selection: str = "pooled",
):
    """Protocol bytes on each client's link with the server (docs/ntk_fl.md §4): a sampled client
    receives w (P floats) and uploads its Jacobian (n·C·P floats), labels (n) and logits (n·C); with
    ``tau_selection="pooled"`` it also receives the |T| candidate steps and returns |T| losses
    (|T|·(P + 1) floats); others 0."""
    p = num_params(params_one)
    n = jnp.sum(ctx.data.mask, axis=1).astype(jnp.float32)
    upload = n * (num_classes * (p + 1) * BYTES_PER_FLOAT + BYTES_PER_LABEL)
    select = num_horizons * (p + 1) * BYTES_PER_FLOAT if tau_selection == "pooled" else 0
    return jnp.where(chosen, upload + p * BYTES_PER_FLOAT + select, 0.0)


def ntk_fl(
    model: Model, *, num_clients: int, num_classes: int, participation: float = 0.07,
    eta: float = 0.01, horizons=NTK_FL_HORIZONS, solver: str = "auto", loss: str = "ce",
    replicate_server: bool = False, solver_stride: int = 1, tau_selection: str = "pooled",
) -> Algorithm:
    """NTK-FL (docs/ntk_fl.md §1) with a constant step η and the server step on one device.

    Args:
        model: the network's static structure.
        num_clients: Q, real clients.
        num_classes: C.
        participation: fraction of clients sampled per round (S = max(1, round(fraction·Q))).
        eta: the constant step η of the grid s_t = t·η.
        horizons: candidate horizons T.
        solver: a key of `spark_tpu.ntk.TABLEAUX`; MSE always uses the exact closed form.
        loss: "ce" or "mse".
        replicate_server: run the server step on every device (measurement only).
        solver_stride: grid intervals per solver step after the first 32.
        tau_selection: "pooled" (the real network on the sampled clients' data) or "linearized".
    """
    count = max(1, round(participation * num_clients))
    make_objective = ntk.cross_entropy if loss == "ce" else ntk.mse
    if loss == "mse":  # no softmax damping: the kernel flow is too stiff for RK4 at step η
        solver = "mse_closed_form"
    options = {
        "num_classes": num_classes, "eta": eta, "horizons": tuple(horizons), "solver": solver,
        "make_objective": make_objective, "stride": solver_stride, "selection": tau_selection,
    }

    def round_(state: NTKFLState, ctx: RoundContext):
        k_sample, _ = jax.random.split(ctx.key)  # FedAvg's split: the same sampled clients
        chosen = sample_clients(k_sample, ctx, num_clients, participation)
        source, position = _server_view(state, ctx, chosen, num_clients)
        is_server = jnp.any(ctx.client_ids == source)
        w = _server_model(state.params, ctx, source, is_server, replicate_server)
        pooled = _gather_sampled(ctx, chosen, position, count)
        new, tau, loss0, solved = _on_server_device(
            lambda: _server_step(model, w, pooled, **options), is_server, replicate_server
        )
        slots = ctx.client_ids.shape[0]
        params = jax.tree.map(lambda g: jnp.broadcast_to(g, (slots,) + g.shape), new)
        metrics = {
            "train_loss": jnp.where(chosen, loss0, jnp.nan),
            "tau": jnp.broadcast_to(tau, (slots,)),
            "sampled": chosen.astype(jnp.float32),
            "solver_products": jnp.broadcast_to(solved[0], (slots,)),
            "solver_flagged": jnp.broadcast_to(solved[1], (slots,)),
            "bytes_sent": ntk_fl_bytes(
                ctx, chosen, w, num_classes, len(tuple(horizons)), tau_selection
            ),
        }
        return NTKFLState(params, jnp.full((slots,), ctx.round, jnp.int32)), metrics

    return Algorithm(init=_init, round=round_)


def _build(ctx: BuildContext) -> Algorithm:
    """docs/ntk_fl.md §2: a constant η (no --lr_decay); NTK-FL's own horizons unless --horizons
    differs from the NTK-DFL default (passing exactly that default gives NTK-FL's)."""
    cfg = ctx.config
    left_default = cfg.horizons == type(cfg).__dataclass_fields__["horizons"].default
    return ntk_fl(
        ctx.model, num_clients=ctx.num_clients, num_classes=ctx.num_classes,
        participation=cfg.participation, eta=ctx.hyper["lr"], solver=cfg.solver, loss=cfg.loss,
        solver_stride=cfg.solver_stride, tau_selection=cfg.tau_selection,
        horizons=NTK_FL_HORIZONS if left_default else cfg.horizons,
    )


register(AlgorithmSpec(
    "ntk_fl", _build, uses_graph=False, reference=dict(lr=0.01),
    options=("horizons", "solver", "solver_stride", "client_batch", "tau_selection",
             "participation", "client_dropout", "loss"),
    description="NTK-FL: a server pools Jacobians and evolves in function space"))
