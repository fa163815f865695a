"""Your own Equinox model: a small residual MLP written here, trained by NTK-DFL and by D-PSGD.

`simulate(model=...)` takes an Equinox module (every client starts from it) or a factory
``(input_shape, num_classes, *, key) -> module``; the class below is such a factory. The NTK
methods need only `jax.jvp`/`jax.vjp` of the module, so any architecture works.
Run from the repository root: python -m examples.custom_model [--rounds=N]
"""

import argparse
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import spark_tpu


class ResidualMLP(eqx.Module):
    stem: eqx.nn.Linear
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, input_shape, num_classes, *, key, width=32, depth=2):
        keys = jax.random.split(key, depth + 2)
        dense = lambda i, o, k: eqx.nn.Linear(i, o, key=k, dtype=jnp.float32)  # noqa: E731
        self.stem = dense(math.prod(input_shape), width, keys[0])
        self.blocks = [dense(width, width, k) for k in keys[1:-1]]
        self.head = dense(width, num_classes, keys[-1])

    def __call__(self, x):  # one example -> logits
        h = jax.nn.relu(self.stem(x.reshape(-1)))
        for block in self.blocks:
            h = h + jax.nn.relu(block(h))
        return self.head(h)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args(argv)
    common = dict(partition="dirichlet", alpha=0.5, clients=args.clients, rounds=args.rounds,
                  samples_per_client=50, eval_every=args.rounds)
    runs = {"ntk_dfl": dict(horizons=(2, 4), lr=0.01), "dgd": dict(lr=0.1, batch_size=10)}
    for algorithm, options in runs.items():
        h = spark_tpu.simulate(algorithm, ResidualMLP, "digits", "ring", **common, **options)
        print(f"{algorithm}: mean local accuracy {h['mean_local_acc'][-1]:.4f}, "
              f"aggregated {h['aggregated_acc'][-1]:.4f} after {args.rounds} rounds")


if __name__ == "__main__":
    main()
