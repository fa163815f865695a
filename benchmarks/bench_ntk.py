"""Micro-benchmark of the NTK engine (docs/ntk_step.md): kernel, solver, and the whole step per client.

Command (from the repo root):

    python -m benchmarks.bench_ntk                     # N = 1200, C = 10, 800 grid steps
    python -m benchmarks.bench_ntk --small             # N = 300, 200 steps, seconds

Expected wall time on the 2-core dev box: about 2 min (full). It times, warm (compile excluded,
best of --repeats):

- the trace kernel of the 784-100-10 MLP: structured (`trace_kernel`) at N and materialized
  (`trace_kernel_materialized`, the reference's explicit Jacobian) at --materialized_n;
- the function-space solver for one client at N, C, max(T) for each solver;
- B clients at once: ``jax.lax.map`` over clients (each kernel stays hot while it steps) vs
  ``jax.vmap`` (batched products), for the default solver;
- with --many_clients, the solvers vmapped over that many clients (the accelerator setting), and
  the whole step over that many clients with `ntk.batch_map` (lax.map on CPU, vmap elsewhere);
- with --projection_ks, the relative error of the projected trace kernel (mean of 3 seeds) and
  its time, per kind, at --materialized_n samples;
- one whole `ntk_evolution_step` at N.

Writes benchmarks/results/bench_ntk.json (bench_ntk_small.json with --small; another folder with
--output_dir).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import _flops
from spark_tpu import models, ntk

_SMALL = flags.DEFINE_bool("small", False, "N = 300, 200 grid steps.")
_N = flags.DEFINE_integer("n", 1200, "Pooled samples per client.")
_STEPS = flags.DEFINE_integer("steps", 800, "Grid steps max(T).")
_CLIENTS = flags.DEFINE_integer("clients", 4, "Clients for the map-vs-vmap comparison.")
_MANY = flags.DEFINE_integer(
    "many_clients", 0, "If > 0, also time the default solver vmapped over this many clients."
)
_BATCHES = flags.DEFINE_list(
    "many_batch_sizes", [], "With --many_clients: also lax.map(batch_size=b) over the clients."
)
_PROJ_KS = flags.DEFINE_list(
    "projection_ks", [], "Also measure projected-kernel error vs k (gaussian, kronecker)."
)
_MAT_N = flags.DEFINE_integer("materialized_n", 200, "Samples for the materialized kernel.")
_SOLVERS = flags.DEFINE_list("solvers", ["euler", "bosh3", "rk4"], "Solvers to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (best is kept).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "benchmarks/results", "Where the result file goes.")


def _time(fn, *args) -> float:
    return _flops.best_time(fn, *args, reps=_REPEATS.value)


def _problem(n: int, key):
    kx, ky, km = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, 28, 28), jnp.float32)
    y = jax.nn.one_hot(jax.random.randint(ky, (n,), 0, 10), 10, dtype=jnp.float32)
    return models.MLP((28, 28), key=km), x, y


def _solver_fn(y, horizons, solver):
    def solve(kernel, f0):
        return ntk.solve_function_space(
            kernel, f0, ntk.cross_entropy(y).residual, eta=jnp.float32(0.01), horizons=horizons,
            num_samples=y.shape[0], solver=solver,
        ).residual_sums  # fmt: skip

    return solve


def main(argv):
    del argv
    n, steps = (300, 200) if _SMALL.value else (_N.value, _STEPS.value)
    horizons = tuple(sorted({max(1, steps // 8), steps // 4, steps // 2, steps}))
    model, x, y = _problem(n, jax.random.key(0))
    results = {"device": str(jax.devices()[0]), "n": n, "classes": 10, "steps": steps}

    kernel = jax.jit(ntk.trace_kernel)(model, x)
    f0 = jax.vmap(model)(x)
    results["kernel_structured_s"] = _time(jax.jit(ntk.trace_kernel), model, x)
    m = min(_MAT_N.value, n)
    results["kernel_structured_s_at_materialized_n"] = _time(
        jax.jit(ntk.trace_kernel), model, x[:m]
    )
    results["kernel_materialized_s"] = _time(jax.jit(ntk.trace_kernel_materialized), model, x[:m])
    results["materialized_n"] = m

    for solver in _SOLVERS.value:
        results[f"solve_{solver}_s"] = _time(jax.jit(_solver_fn(y, horizons, solver)), kernel, f0)

    b = _CLIENTS.value
    kernels, f0s = jnp.stack([kernel] * b), jnp.stack([f0] * b)
    solve = _solver_fn(y, horizons, "rk4")
    results["clients"] = b
    results["rk4_lax_map_per_client_s"] = (
        _time(jax.jit(lambda k, f: jax.lax.map(lambda a: solve(*a), (k, f))), kernels, f0s) / b
    )
    results["rk4_vmap_per_client_s"] = _time(jax.jit(jax.vmap(solve)), kernels, f0s) / b

    if _MANY.value:
        many = _MANY.value
        kernels, f0s = jnp.broadcast_to(kernel, (many, n, n)), jnp.broadcast_to(f0, (many, n, 10))
        results["many_clients"] = many
        results["rk4_vmap_many_per_client_s"] = _time(jax.jit(jax.vmap(solve)), kernels, f0s) / many
        for size in _BATCHES.value:
            chunked = jax.jit(
                lambda k, f, size=int(size): jax.lax.map(
                    lambda a: solve(*a), (k, f), batch_size=size
                )
            )
            results[f"rk4_map_batch{size}_per_client_s"] = _time(chunked, kernels, f0s) / many
        results["euler_vmap_many_per_client_s"] = (
            _time(jax.jit(jax.vmap(_solver_fn(y, horizons, "euler"))), kernels, f0s) / many
        )
        stacked = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (many, *leaf.shape)), model)
        xs = jnp.broadcast_to(x, (many, *x.shape))

        def one_step(mdl, xq):
            objective = ntk.cross_entropy(y)
            return ntk.ntk_evolution_step(
                mdl, xq, objective, eta=jnp.float32(0.01), horizons=horizons
            )[1].tau

        results["step_rk4_batch_map_many_per_client_s"] = (
            _time(jax.jit(lambda m, xx: ntk.batch_map(one_step, m, xx)), stacked, xs) / many
        )

    for k in (int(v) for v in _PROJ_KS.value):
        exact = ntk.trace_kernel(model, x[:m])
        for kind in ("gaussian", "kronecker"):
            fn = jax.jit(
                lambda seed, xm, k=k, kind=kind: ntk.projected_trace_kernel(
                    model, xm, k=k, seed=seed, kind=kind
                )
            )
            fn = functools.partial(fn, xm=x[:m])
            errors = [
                float(jnp.linalg.norm(fn(jax.random.key(s)) - exact) / jnp.linalg.norm(exact))
                for s in range(3)
            ]
            results[f"projection_{kind}_k{k}_rel_error"] = float(np.mean(errors))
            results[f"projection_{kind}_k{k}_s"] = _time(fn, jax.random.key(0))

    step = jax.jit(
        lambda mdl: (
            ntk.ntk_evolution_step(
                mdl, x, ntk.cross_entropy(y), eta=jnp.float32(0.01), horizons=horizons
            )[1].tau
        )
    )
    results["step_rk4_s"] = _time(step, model)
    for key, value in results.items():
        print(f"{key:45s} {value}")
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    name = "bench_ntk" + ("_small" if _SMALL.value else "") + ".json"
    with open(os.path.join(_OUTPUT_DIR.value, name), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
