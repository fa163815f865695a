"""A user's own algorithm in a module outside the package, named by import path in tests/test_api.py
(``api_plugin:build`` and ``api_plugin:offset_spec``): every client adds a fixed offset to its model, then
mixes with its neighbours. Not a test module."""

import jax
import jax.numpy as jnp

import spark_tpu
from spark_tpu import gossip


def build(ctx: spark_tpu.BuildContext) -> spark_tpu.Algorithm:
    """Adds ctx.options['step'] (or the learning rate) to every weight, then mixes."""
    step = ctx.options.get("step", ctx.hyper["lr"])

    def round_(state, ctx_round):
        moved = jax.tree.map(lambda p: p + step, state.params)
        new = gossip.mix(moved, ctx_round.graph)
        zeros = jnp.zeros(ctx_round.client_ids.shape, jnp.float32)
        return spark_tpu.ParamsState(new), {"train_loss": zeros, "bytes_sent": zeros}

    return spark_tpu.Algorithm(init=spark_tpu.ParamsState, round=round_)


offset_spec = spark_tpu.AlgorithmSpec("plugin_offset", build, reference={"lr": 0.5},
                               defaults={"step": 0.25})


def make_net(input_shape, *, num_classes, key):
    """A user's model factory (``--model=api_plugin:make_net``): one linear layer."""
    import equinox as eqx

    size = 1
    for d in input_shape:
        size *= d

    class Flat(eqx.Module):
        layer: eqx.nn.Linear

        def __call__(self, x):
            return self.layer(x.reshape(-1))

    return Flat(eqx.nn.Linear(size, num_classes, key=key, dtype=jnp.float32))
