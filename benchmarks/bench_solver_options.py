"""Wall time of the function-space solvers and their options on real Fashion-MNIST neighbourhoods,
one client at a time, beside their kernel products and their error (docs/ntk_step.md §8).

    python -m benchmarks.bench_solver_options       # Ñ = 300, 600, 1200; 2 neighbourhoods each
    python -m benchmarks.bench_solver_options --small   # Ñ = 120, one neighbourhood, seconds

Each size is the pooled closed neighbourhood of a 5-regular graph (Ñ = 6 × samples per client) of a
fresh 20-client run (per-client Dirichlet α = 0.1, seed 0, the MLP at its initialization, η = 0.01,
the paper's horizons 100–800). Every solver (the `experiments.solver_audit` names:
``exponential:rank=4:max_stride=32``, ``adaptive``, ``rk4/4``) is jitted for one client in float32
and timed warm, best of ``--repeats``, the solvers interleaved so that each sees the same machine
load; its error is the relative error of the residual sums r_τ against a float64 rk4 at one step
per grid interval (max over horizons). Beside each solve, the same number of kernel products alone
is timed the same way (``products_alone_s``; ``products_share`` in the summary): the rest of a
solve's time is its per-step work. Ratios within one run are the numbers to read on a shared
machine. Writes benchmarks/results/bench_solver_options.json (``_small`` with --small).
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
from absl import app, flags

_SAMPLES = flags.DEFINE_list("samples_per_client", ["50", "100", "200"], "Sizes (Ñ = 6 × this).")
_HOODS = flags.DEFINE_integer("hoods", 2, "Neighbourhoods per size (clients 0, 1, ...).")
_SOLVERS = flags.DEFINE_list(
    "solvers",
    ["exponential", "exponential:rank=8:max_stride=64", "exponential:rank=4:max_stride=64",
     "exponential:rank=8:max_stride=32", "adaptive"],
    "Solvers and options, as experiments.solver_audit names them.",
)  # fmt: skip
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds (best kept).")
_SMALL = flags.DEFINE_bool("small", False, "Ñ = 120, one neighbourhood, horizons up to 200.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "benchmarks/results", "Where the result goes.")

HORIZONS = (100, 200, 400, 600, 800)


def _hoods(samples: int, count: int):
    """``count`` real neighbourhoods at Ñ = 6·samples: (kernel, f0, y) in float64."""
    import equinox as eqx

    from experiments import solver_audit
    from spark_tpu import ntk, simulator

    cfg = simulator.Config(
        algorithm="ntk_dfl", clients=20, samples_per_client=samples, partition="dirichlet",
        alpha=0.1, topology="regular", degree=5, rounds=1, devices=1, seed=0,
    )  # fmt: skip
    sim = simulator.Simulation(cfg)
    out = []
    for avg, x, y in solver_audit._neighbourhoods(sim, cfg)[:count]:
        net = eqx.combine(avg, sim.setup.model.static)
        params, apply = ntk.batched_forward(net)
        x64 = x.astype(np.float64)
        out.append((np.asarray(ntk.trace_kernel(net, x64)), np.asarray(apply(params, x64)), y))
    return out


def _solve_fn(dtype, options: dict, horizons):
    import jax
    import jax.numpy as jnp

    from spark_tpu import ntk

    @jax.jit
    def solve(kernel, f0, y):
        obj = ntk.cross_entropy(jax.nn.one_hot(y, f0.shape[1], dtype=dtype))
        sol = ntk.solve_function_space(
            kernel, f0, obj.residual, eta=jnp.asarray(0.01, dtype), horizons=horizons,
            num_samples=y.shape[0], **options,
        )  # fmt: skip
        return sol.residual_sums, sol.products

    return solve


def _products_fn():
    """A jitted ``(K, x [C, N], count) -> x`` of `count` kernel products alone, in the solvers'
    product form (`transposed_product`): the floor a solve with that many products cannot beat."""
    import jax

    from spark_tpu.ntk._adaptive import transposed_product

    @jax.jit
    def products(kernel, x, count):
        def one(_, y):
            y = transposed_product(y, kernel)
            return y / jax.numpy.max(jax.numpy.abs(y))  # keeps the iterate finite

        return jax.lax.fori_loop(0, count, one, x)

    return products


def _best_of(calls: dict) -> dict:
    """Best wall time of each zero-argument call over ``--repeats`` rounds, the calls interleaved
    so that each sees the same machine load (after one untimed warm-up call each)."""
    import jax

    for call in calls.values():
        jax.block_until_ready(call())
    best = {name: np.inf for name in calls}
    for _ in range(_REPEATS.value):
        for name, call in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(call())
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main(argv) -> None:
    del argv
    from spark_tpu import platform

    platform.emulate_cpu_devices(1)
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from experiments.solver_audit import _solver_options

    sizes = [20] if _SMALL.value else [int(s) for s in _SAMPLES.value]
    count = 1 if _SMALL.value else _HOODS.value
    horizons = (50, 100, 200) if _SMALL.value else HORIZONS
    fns = {name: _solve_fn(jnp.float32, _solver_options(name), horizons) for name in _SOLVERS.value}
    reference = _solve_fn(jnp.float64, {"solver": "rk4"}, horizons)
    alone = _products_fn()  # one compiled loop; the count is traced
    rows = []
    for samples in sizes:
        for q, (kernel, f0, y) in enumerate(_hoods(samples, count)):
            ref = np.asarray(reference(kernel, f0, y)[0])
            args = (kernel.astype(np.float32), f0.astype(np.float32), y)
            first, result = {}, {}
            for name, fn in fns.items():  # compile (and the first call) one by one
                t = time.perf_counter()
                result[name] = jax.block_until_ready(fn(*args))
                first[name] = time.perf_counter() - t
            best = _best_of({name: functools.partial(fn, *args) for name, fn in fns.items()})
            # The same number of kernel products alone, timed the same way: what remains of a
            # solve's time is its per-step work (docs/ntk_step.md §8).
            x = args[1].T
            floor = _best_of({name: functools.partial(alone, args[0], x, int(result[name][1]))
                              for name in fns})  # fmt: skip
            for name in fns:
                sums, products = result[name]
                diff = (np.asarray(sums, np.float64) - ref).reshape(len(horizons), -1)
                err = np.linalg.norm(diff, axis=1) / np.linalg.norm(ref.reshape(len(horizons), -1), axis=1)
                rows.append({"n": int(len(y)), "hood": q, "solver": name, "seconds": best[name],
                             "first_call_s": first[name], "products": int(products),
                             "products_alone_s": floor[name],
                             "rel_err_residual_sums": float(err.max())})  # fmt: skip
                print(f"Ñ={len(y):5d} hood {q}  {name:36s} {best[name] * 1e3:8.1f} ms  "
                      f"products {int(products):5d} (alone {floor[name] * 1e3:.1f} ms)  "
                      f"error {err.max():.1e}  "
                      f"(first call {first[name]:.1f} s)", flush=True)  # fmt: skip
    summary = {}
    for n in sorted({r["n"] for r in rows}):
        at = [r for r in rows if r["n"] == n]
        base = {r["hood"]: r["seconds"] for r in at if r["solver"] == _SOLVERS.value[-1]}
        summary[str(n)] = {
            name: {
                "seconds_mean": float(np.mean([r["seconds"] for r in at if r["solver"] == name])),
                f"speedup_over_{_SOLVERS.value[-1]}": float(np.mean(
                    [base[r["hood"]] / r["seconds"] for r in at if r["solver"] == name])),
                "products_mean": float(np.mean([r["products"] for r in at if r["solver"] == name])),
                "products_share": float(np.mean([r["products_alone_s"] / r["seconds"]
                                                 for r in at if r["solver"] == name])),
                "max_error": float(max(r["rel_err_residual_sums"] for r in at if r["solver"] == name)),
            } for name in fns
        }  # fmt: skip
    out = {
        "command": "python -m benchmarks.bench_solver_options" + (" --small" if _SMALL.value else ""),
        "horizons": horizons, "summary": summary, "rows": rows,
        "machine": {"cpus": os.cpu_count(), "jax": jax.__version__, "device": str(jax.devices()[0]),
                    "load_average": os.getloadavg()},
    }  # fmt: skip
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    path = os.path.join(
        _OUTPUT_DIR.value, "bench_solver_options" + ("_small" if _SMALL.value else "") + ".json"
    )
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
