"""Gradient baselines over a graph (docs/baselines.md §2–4): consensus DGD/D-PSGD, ATC and CTA diffusion, and
DFedAvg/DFedAvgM (local SGD epochs, then averaging). All are ``adapt`` and ``combine`` composed
in one of two orders."""

from __future__ import annotations

import functools

import jax
import optax

from spark_tpu import gossip

from ._base import (
    Algorithm, Model, ParamsState, RoundContext, alive_degree, client_keys, model_bytes,
)
from ._local import local_sgd, minibatch_grad
from ._spec import AlgorithmSpec, BuildContext, register


def _sgd_step(model: Model, lr: float, batch_size: int, loss_name: str = "ce"):
    """adapt(params, data, key) -> (params − lr·∇L on a minibatch, loss)."""

    def adapt(params, x, y, mask, key):
        loss, g = minibatch_grad(model, params, x, y, mask, key, batch_size, loss_name)
        return jax.tree.map(lambda p, d: p - lr * d, params, g), loss, g

    return adapt


def _per_client(fn, params, ctx: RoundContext, keys):
    d = ctx.data
    return jax.vmap(fn)(params, d.x, d.y, d.mask, keys)


def _bytes(params, ctx: RoundContext):
    one = jax.tree.map(lambda p: p[0], params)
    return alive_degree(ctx) * model_bytes(one)


def consensus(
    model: Model, *, lr: float, batch_size: int, order: str = "dgd", loss: str = "ce"
) -> Algorithm:
    """DGD (seed eq. 4), ATC (eq. 5) or CTA (eq. 6) with one minibatch gradient step per round.

    dgd: θ_q ← Σ_r W_qr θ_r − η ∇L_q(θ_q);  atc: θ_q ← Σ_r W_qr (θ_r − η ∇L_r(θ_r));
    cta: θ_q ← ψ_q − η ∇L_q(ψ_q) with ψ_q = Σ_r W_qr θ_r. ``loss``: ce or mse.
    """
    if order not in ("dgd", "atc", "cta"):
        raise ValueError(f"order must be dgd, atc or cta, not {order!r}")
    adapt = _sgd_step(model, lr, batch_size, loss)

    def round_(state: ParamsState, ctx: RoundContext):
        keys = client_keys(ctx.key, ctx.client_ids)
        params = state.params
        if order == "cta":
            params = gossip.mix(params, ctx.graph)
        new, loss, grad = _per_client(adapt, params, ctx, keys)
        if order == "atc":
            new = gossip.mix(new, ctx.graph)
        elif order == "dgd":
            mixed = gossip.mix(params, ctx.graph)
            new = jax.tree.map(lambda m, g: m - lr * g, mixed, grad)
        return ParamsState(new), {"train_loss": loss, "bytes_sent": _bytes(params, ctx)}

    return Algorithm(init=ParamsState, round=round_)


def dfedavg(
    model: Model, *, lr: float, batch_size: int, local_epochs: int, momentum: float = 0.0,
    loss: str = "ce",
) -> Algorithm:
    """DFedAvg (momentum 0) / DFedAvgM: local SGD epochs from θ_q, then θ_q ← Σ_r W_qr θ_r.

    The local momentum buffer starts at zero every round (DFedAvgM, Sun et al. 2021, Alg. 1).
    """
    optimizer = optax.sgd(lr, momentum=momentum if momentum else None)
    train = functools.partial(
        local_sgd, model, optimizer=optimizer, epochs=local_epochs, batch_size=batch_size,
        loss=loss,
    )

    def round_(state: ParamsState, ctx: RoundContext):
        keys = client_keys(ctx.key, ctx.client_ids)
        local, loss = _per_client(
            lambda p, x, y, m, k: train(p, x, y, m, k), state.params, ctx, keys
        )
        new = gossip.mix(local, ctx.graph)
        return ParamsState(new), {"train_loss": loss, "bytes_sent": _bytes(state.params, ctx)}

    return Algorithm(init=ParamsState, round=round_)


def _build_consensus(order: str):
    def build(ctx: BuildContext) -> Algorithm:
        return consensus(ctx.model, lr=ctx.hyper["lr"], batch_size=ctx.hyper["batch_size"],
                         order=order, loss=ctx.config.loss)

    return build


def _build_dfedavg(ctx: BuildContext) -> Algorithm:
    return dfedavg(ctx.model, **ctx.hyper, loss=ctx.config.loss)


# Reference hyperparameters: docs/baselines.md §7.
_SGD = ("batch_size", "loss")
register(AlgorithmSpec("dgd", _build_consensus("dgd"), reference=dict(lr=0.1, batch_size=10),
                       options=_SGD, aliases=("dpsgd", "d-psgd"),
                       description="D-PSGD / DGD: mix, then a local gradient step"))
register(AlgorithmSpec("atc", _build_consensus("atc"), reference=dict(lr=0.1, batch_size=10),
                       options=_SGD, description="adapt-then-combine diffusion"))
register(AlgorithmSpec("cta", _build_consensus("cta"), reference=dict(lr=0.1, batch_size=10),
                       options=_SGD, description="combine-then-adapt diffusion"))
_LOCAL = ("batch_size", "local_epochs", "momentum", "loss")
register(AlgorithmSpec(
    "dfedavg", _build_dfedavg, options=_LOCAL,
    reference=dict(lr=0.1, batch_size=25, local_epochs=20, momentum=0.0),
    description="DFedAvg: local SGD epochs, then gossip averaging"))
register(AlgorithmSpec(
    "dfedavgm", _build_dfedavg, options=_LOCAL,
    reference=dict(lr=0.01, batch_size=50, local_epochs=20, momentum=0.9),
    description="DFedAvgM: DFedAvg with local momentum"))
