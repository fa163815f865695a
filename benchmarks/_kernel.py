"""The structured trace kernel against the materialized-Jacobian kernel, for benchmarks/bench.py.

The problem of benchmarks/bench_ntk.py (the 784-100-10 MLP on Gaussian inputs; `_problem` below
is its ``_problem``, copied because importing bench_ntk defines absl flags that clash with
bench.py's), over several N in one process, the two kernels' calls interleaved. Each row has the best-of-reps
seconds, compile seconds, XLA's per-program memory estimate (the materialized one holds the
N × C × P Jacobian), the analytic FLOPs and rates (`_flops`), and the relative difference
between the two kernels (they must agree).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from benchmarks import _flops
from benchmarks._sim import xla_mb
from spark_tpu import models, ntk


def _problem(n: int, key):
    kx, ky, km = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, 28, 28), jnp.float32)
    y = jax.nn.one_hot(jax.random.randint(ky, (n,), 0, 10), 10, dtype=jnp.float32)
    return models.MLP((28, 28), key=km), x, y


def _compile(fn, *args):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t


def _run(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def _best_interleaved(fns: dict, args, reps: int, cheap_reps: int = 10) -> dict[str, float]:
    """Best time of each function over ``reps`` interleaved rounds. In every round each function
    runs at least twice in a row (the first call after the other kernel pays for freeing its
    gigabytes), and ``cheap_reps`` times if it takes under 0.1 s (one slow call on the shared
    machine must not decide a millisecond kernel's time)."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        jax.block_until_ready(fn(*args))  # first call (allocation) untimed
    for _ in range(reps):
        for name, fn in fns.items():
            for i in range(cheap_reps):
                best[name] = min(best[name], _run(fn, *args))
                if i >= 1 and best[name] >= 0.1:
                    break
    return best


def kernels(
    sizes: list[int], materialized_max: int, reps: int = 3, devices: int = 1, label: str = ""
) -> list[dict]:
    """One row per N: structured (every N) and materialized (N ≤ ``materialized_max``)."""
    del devices, label
    rows = []
    for n in sizes:
        model, x, _ = _problem(n, jax.random.key(0))
        widths = _flops.mlp_widths(model)
        p = _flops.num_params(widths)
        fns, compile_s, memory = {}, {}, {}
        fns["structured"], compile_s["structured"] = _compile(ntk.trace_kernel, model, x)
        if n <= materialized_max:
            fns["materialized"], compile_s["materialized"] = _compile(
                ntk.trace_kernel_materialized, model, x
            )
        memory = {name: xla_mb(fn) for name, fn in fns.items()}
        best = _best_interleaved(fns, (model, x), reps)
        flops = {
            "structured": _flops.kernel_flops(n, widths),
            "materialized": _flops.materialized_kernel_flops(n, widths),
        }
        row = {
            "label": f"N={n}",
            "n": n,
            "params": p,
            "classes": widths[-1],
            "jacobian_mb": n * widths[-1] * p * 4 / 2**20,
        }
        for name in fns:
            row[f"{name}_s"] = best[name]
            row[f"{name}_compile_s"] = compile_s[name]
            row[f"{name}_xla_mb"] = memory[name]
            row[f"{name}_gflop"] = flops[name] / 1e9
            row[f"{name}_gflops"] = flops[name] / best[name] / 1e9
        if "materialized" in fns:
            k_s, k_m = fns["structured"](model, x), fns["materialized"](model, x)
            row["relative_difference"] = float(jnp.linalg.norm(k_s - k_m) / jnp.linalg.norm(k_m))
            row["materialized_over_structured"] = best["materialized"] / best["structured"]
        rows.append(row)
    return rows
