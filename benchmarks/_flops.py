"""Analytic FLOP counts of the NTK round and reference matmul rates, for benchmarks/bench.py.

Counts are multiply–adds × 2 of the matrix products the code runs (elementwise work is listed
where it is not negligible). For an MLP with layer widths ``d_0 (input), d_1, …, d_L = C`` and
``P`` parameters, per client with ``N`` pooled rows (padding included: the compiled program works
on the padded shapes):

- Structured trace kernel (`spark_tpu.ntk.trace_kernel`). For a dense layer ``l`` with input width
  ``d_{l-1}`` the input factor is the Gram matrix ``a aᵀ``: ``2 N² d_{l-1}``, or 6/9 of it from
  384 rows, where only the upper blocks of a 3 × 3 split are computed (`gram_flops`). Its cotangent factor
  is ``Σ_c g_c g_cᵀ``: ``2 N² C d_l`` in general, ``0`` for the last layer (one-hot cotangents) and
  ``2 N² d_l`` for the second-to-last when the map between them is elementwise (the collapsed
  form: ``Σ_j s_j φ'_{nj} φ'_{mj}``). For 784-100-10 that is ``2 N² (784 + 100 + 100)``: the
  issue's ``N²(784+1) + C N²(100+1)`` is the uncollapsed count, without the factor 2 of a
  multiply–add (the ``+1`` bias terms are elementwise adds, counted in ``6 N²`` of elementwise
  work). Plus the per-example forward pass ``2 N P`` and the C cotangents through the last layer
  ``2 N C² d_{L-1}``.
- Materialized kernel (`trace_kernel_materialized`): the Jacobian by C reverse passes per
  example, ``≈ 2 N C P`` (+ the forward ``2 N P``), then ``einsum('ncp,mcp->nm')``: ``2 N² C P``.
- Solver (`solve_function_space`, RK with ``s`` stages): one ``[C, N] × [N, N]`` product
  (``2 N² C``) per stage; ``8`` warm-up grid steps take ``4`` substeps (the default), the other
  ``T_max − 8`` one: RK4 with T_max = 800 makes ``4 (8·4 + 792) = 3,296`` products. With
  ``--solver_stride=m`` the steps after grid step 32 span m grid intervals (`ntk.count_products`):
  ``m = 4`` makes 993.
- Weight steps and selection: the forward at w ``2 N P``, one VJP per horizon (``2 N P`` for the
  weight gradients + ``2 N C d_{L-1}`` back through the last layer) and one forward per horizon at
  ``w + Δw_τ`` (``2 N P``).
"""

from __future__ import annotations

import itertools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from spark_tpu import ntk

WARMUP_STEPS, WARMUP_SUBSTEPS = 8, 4  # solve_function_space's defaults (see its docstring)


def mlp_widths(params) -> list[int]:
    """``[d_0, d_1, …, C]`` of a spark_tpu MLP (``params.layers[i].weight`` is ``[out, in]``)."""
    layers = params.layers
    return [int(layers[0].weight.shape[-1])] + [int(layer.weight.shape[-2]) for layer in layers]


def num_params(widths: list[int]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def gram_flops(n: int, width: int) -> float:
    """``u uᵀ`` for ``u [n, width]`` as `trace_kernel` computes it: from
    ``ntk._kernel._BLOCKED_FROM`` rows only the blocks on and above the diagonal of a
    ``_BLOCKS × _BLOCKS`` split (6 of 9), else ``2 n² width``."""
    from spark_tpu.ntk import _kernel

    if n < _kernel._BLOCKED_FROM:
        return 2.0 * n * n * width
    blocks, edges = _kernel._BLOCKS, [n * i // _kernel._BLOCKS for i in range(_kernel._BLOCKS + 1)]
    sizes = [edges[i + 1] - edges[i] for i in range(blocks)]
    return 2.0 * width * sum(sizes[i] * sizes[j] for i in range(blocks) for j in range(i, blocks))


def kernel_flops(n: int, widths: list[int]) -> float:
    """Structured trace kernel of an MLP, per client (see the module docstring)."""
    classes, layers = widths[-1], len(widths) - 1
    total = 0.0
    for layer in range(layers):
        d_in, d_out = widths[layer], widths[layer + 1]
        total += gram_flops(n, d_in)
        if layer == layers - 2:  # collapsed: the activation between the last two is elementwise
            total += gram_flops(n, d_out)
        elif layer < layers - 2:
            total += gram_flops(n, classes * d_out)
    p = num_params(widths)
    return total + 6 * n * n + 2 * n * p + 2 * n * classes**2 * widths[-2]


def materialized_kernel_flops(n: int, widths: list[int]) -> float:
    """`trace_kernel_materialized`: Jacobian by C reverse passes, then the N×N contraction."""
    classes, p = widths[-1], num_params(widths)
    return 2 * n * n * classes * p + 2 * n * classes * p + 2 * n * p


def solver_products(horizons, solver: str = "rk4", stride: int = 1) -> int:
    """Number of ``[C, N] × [N, N]`` kernel products of `solve_function_space` per client."""
    return ntk.count_products(
        horizons, solver, warmup_steps=None if solver == "euler" else WARMUP_STEPS,
        warmup_substeps=WARMUP_SUBSTEPS, stride=stride,
    )  # fmt: skip


def round_flops(
    n: int, widths: list[int], horizons, clients: int, solver: str = "rk4", teacher: bool = False,
    stride: int = 1, products: float | None = None,
) -> dict[str, float]:  # fmt: skip
    """FLOPs of one NTK-DFL (or SPARK, ``teacher=True``) round over ``clients`` client slots;
    ``products``: kernel products per client as measured (the adaptive solver's are data-dependent),
    else counted from the fixed-step solver's options."""
    classes, p, h = widths[-1], num_params(widths), len(horizons)
    if products is None:
        products = solver_products(horizons, solver, stride)
    per_client = {
        "kernel": kernel_flops(n, widths),
        "solver": products * 2.0 * n * n * classes,
        "steps": 2 * n * p * (1 + 2 * h)
        + h * 2 * n * classes * widths[-2]
        + (2 * n * p if teacher else 0),
    }
    out = {f"{k}_gflop": clients * v / 1e9 for k, v in per_client.items()}
    out["total_gflop"] = sum(out.values())
    out["solver_products"] = products
    return out


def best_time(fn, *args, reps: int) -> float:
    """Best wall time of ``reps`` warm calls of ``fn(*args)`` (one untimed call compiles first)."""
    jax.block_until_ready(fn(*args))
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rates(n: int, classes: int, reps: int = 5, chain: int = 100) -> dict[str, float]:
    """GFLOP/s of a plain float32 ``[n, n] × [n, n]`` matmul and of ``chain`` chained solver-shaped
    ``[C, n] × [n, n]`` products (memory-bound), best of ``reps``, on the default device."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((classes, n)), jnp.float32)
    square = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    scale = jnp.float32(1.0 / n)

    def skinny(g, k):
        body = lambda _, v: jnp.matmul(v, k, precision=jax.lax.Precision.HIGHEST) * scale
        return jax.lax.fori_loop(0, chain, body, g)

    t_square = best_time(square, a, b, reps=reps)
    t_skinny = best_time(jax.jit(skinny), g, a, reps=reps)
    return {
        "matmul_n": n,
        "square_matmul_gflops": 2.0 * n**3 / t_square / 1e9,
        "skinny_matmul_gflops": chain * 2.0 * n * n * classes / t_skinny / 1e9,
    }
