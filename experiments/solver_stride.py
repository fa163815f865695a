"""Accuracy and cost of the function-space solver against its step stride (docs/ntk_step.md §8).

Command (from the repo root):

    python -m experiments.solver_stride             # paper shapes: N = 1200 pooled rows, τ ≤ 800
    python -m experiments.solver_stride --small     # N = 300, τ ≤ 200: seconds

The grid of the flow is fixed by the method (``s_t = t·η``, residuals summed at every grid
point), but how finely the ODE is integrated between grid points is ours to choose. This script
fixes the default ``--solver_stride``: for each (solver, stride) it reports

- the relative error of the weight step ``Δw_τ = -(η/Ñ) Jᵀ r_τ`` at every horizon, max over
  horizons and linearization points, against a float64 reference (rk4, stride 1, every grid
  interval split into 8 substeps; that reference itself agrees with rk4 at 4 substeps to ~1e-9);
- whether the horizon τ* chosen with the real network is the reference's;
- kernel products per client and the measured float32 solver time per client at N.

The data are real: a pooled neighbourhood of 6 Fashion-MNIST clients (per-client Dirichlet
α = 0.1, ~200 samples each) and the MLP 784-100-10 at its initialization and after 1 and 3 NTK
steps (later rounds: sharper softmax, milder stiffness). Writes
experiments/results/solver_stride/NAME.json (``--name``, default solver_stride; NAME_small.json
with --small) and prints the table.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags

from benchmarks import _flops

_SMALL = flags.DEFINE_bool("small", False, "N = 300, horizons up to 200.")
_STRIDES = flags.DEFINE_list("strides", ["1", "2", "3", "4", "6", "8"], "Strides to compare.")
_SOLVERS = flags.DEFINE_list("solvers", ["rk4", "euler"], "Solvers to compare.")
_FROM = flags.DEFINE_list("stride_froms", ["32"], "Grid steps where strides begin, to compare.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "experiments/results/solver_stride", "Where the result file goes."
)
_NAME = flags.DEFINE_string("name", "solver_stride", "Result file name (--small appends _small).")
_RKC = flags.DEFINE_list(
    "rkc", [], "Also offer Runge–Kutta–Chebyshev solvers rkcS with these stage counts S to "
    "--solvers (spark_tpu.ntk.rkc_tableau; rkc4 and rkc6 are built in).",
)



def _pooled(n_clients: int, per_client: int, seed: int = 0):
    from spark_tpu import data

    ds = data.load_dataset("fashion_mnist")
    part = data.partition(
        ds.train_y, 300, method="dirichlet", seed=seed, alpha=0.1, samples_per_client=per_client
    )
    rng = np.random.default_rng(seed)
    clients = rng.choice(300, n_clients, replace=False)
    idx = np.concatenate([part.indices[c] for c in clients])
    x = data.normalize(ds.train_x[idx], ds).reshape(len(idx), -1)
    return x.astype(np.float64), ds.train_y[idx], ds.num_classes


def main(argv) -> None:
    del argv
    from spark_tpu.ntk import _solver

    for stages in _RKC.value:
        _solver.TABLEAUX.setdefault(f"rkc{int(stages)}", _solver.rkc_tableau(int(stages)))
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from spark_tpu import models, ntk

    small = _SMALL.value
    horizons = (25, 50, 100, 150, 200) if small else (100, 200, 400, 600, 800)
    x, y, classes = _pooled(6, 50 if small else 200)
    yh = jax.nn.one_hot(y, classes, dtype=jnp.float64)
    eta = 0.01
    obj = ntk.cross_entropy(yh)
    model = models.make_model("mlp", (784,), classes, key=jax.random.key(0), dtype=jnp.float64)

    def linearization(net, dtype):
        net = jax.tree.map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, net
        )
        xs = jnp.asarray(x, dtype)
        params, apply = ntk.batched_forward(net)
        f0, vjp_fn = jax.vjp(lambda p: apply(p, xs), params)
        kernel = ntk.trace_kernel(net, xs).astype(dtype)
        return params, apply, xs, f0, vjp_fn, kernel

    def solve(kernel, f0, dtype, solver, stride, substeps=1, warmup=8):
        objective = ntk.cross_entropy(yh.astype(dtype))
        return ntk.solve_function_space(
            kernel, f0, objective.residual, eta=eta, horizons=horizons, num_samples=len(y),
            solver=solver, stride=stride, substeps=substeps,
            warmup_substeps=max(4, substeps), stride_from=warmup,
        )  # fmt: skip

    points = {}
    net = model
    for step in range(4):
        if step in (0, 1, 3):
            points[f"after {step} NTK steps"] = net
        net, _ = ntk.ntk_evolution_step(net, jnp.asarray(x), obj, eta=eta, horizons=horizons)

    rows = []
    for label, net in points.items():
        params, apply, xs, f0, vjp_fn, kernel = linearization(net, jnp.float64)
        lam = float(jnp.linalg.eigvalsh(kernel)[-1])
        ref = solve(kernel, f0, jnp.float64, "rk4", 1, substeps=8)
        ref_dw = ntk.weight_steps(vjp_fn, ref.residual_sums, eta=eta, num_samples=len(y))
        ref_tau, _ = ntk.select_horizon(params, apply, xs, ref_dw, obj)
        ref_norm = jax.vmap(lambda d: jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(d))))(
            ref_dw
        )
        p32 = linearization(net, jnp.float32)
        for solver, stride, warmup in _variants():
            sol = solve(kernel, f0, jnp.float64, solver, stride, warmup=warmup)
            dw = ntk.weight_steps(vjp_fn, sol.residual_sums, eta=eta, num_samples=len(y))
            err = (
                jax.vmap(
                    lambda a, b: jnp.sqrt(
                        sum(
                            jnp.sum((u - v) ** 2)
                            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
                        )
                    )
                )(dw, ref_dw)
                / ref_norm
            )
            tau, _ = ntk.select_horizon(params, apply, xs, dw, obj)
            fn = jax.jit(
                lambda k, f, s=solver, st=stride, w=warmup: solve(
                    k, f, jnp.float32, s, st, warmup=w
                )
            )
            best = _flops.best_time(fn, p32[5], p32[3], reps=3)
            rows.append({
                    "point": label, "solver": solver, "stride": stride, "stride_from": warmup,
                    "stiffness": lam * eta / len(y),
                    "max_rel_err_dw": float(jnp.max(err)),
                    "rel_err_dw": [float(e) for e in err],
                    "finite": bool(jnp.all(jnp.isfinite(err))),
                    "same_tau": bool(int(tau) == int(ref_tau)),
                    "products": ntk.count_products(horizons, solver, stride=stride, stride_from=warmup),
                    "solver_s_float32": best,
                })  # fmt: skip
            r = rows[-1]
            print(
                f"{label:22s} {solver:5s} stride {stride} from {warmup}: max rel err {r['max_rel_err_dw']:.2e} "
                f"same τ* {r['same_tau']}  products {r['products']}  {best * 1e3:.0f} ms",
                flush=True,
            )
    summary = {}
    for solver, stride, warmup in _variants():
        sel = [
            r
            for r in rows
            if (r["solver"], r["stride"], r["stride_from"]) == (solver, stride, warmup)
        ]
        summary[f"{solver}/{stride}/{warmup}"] = {
            "max_rel_err_dw": max(r["max_rel_err_dw"] for r in sel),
            "all_same_tau": all(r["same_tau"] for r in sel),
            "products": sel[0]["products"],
            "solver_s_float32": float(np.median([r["solver_s_float32"] for r in sel])),
        }
    out = {
        "command": "python -m experiments.solver_stride" + (" --small" if small else "")
        + (f" --name={_NAME.value}" if _NAME.value != "solver_stride" else "")
        + "".join(f" --{k}={','.join(v)}" for k, v in (
            ("solvers", _SOLVERS.value), ("strides", _STRIDES.value), ("rkc", _RKC.value)) if v),
        "n": len(y), "horizons": horizons, "eta": eta, "rows": rows, "summary": summary,
        "machine": {"cpus": os.cpu_count(), "jax": jax.__version__, "load_average": os.getloadavg()},
    }  # fmt: skip
    print(
        "\nsolver/stride/from  max rel err of Δw  same τ*  products  solver s (float32, 1 client)"
    )
    for k, v in summary.items():
        print(
            f"{k:12s}  {v['max_rel_err_dw']:.2e}  {v['all_same_tau']!s:7s}  {v['products']:8d}  "
            f"{v['solver_s_float32']:.3f}"
        )
    path = os.path.join(_OUTPUT_DIR.value, _NAME.value + ("_small" if small else "") + ".json")
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


def _variants():
    out = []
    for solver in _SOLVERS.value:
        for stride in (int(s) for s in _STRIDES.value):
            for warmup in (int(w) for w in _FROM.value):
                if (solver, stride, warmup) not in out and (
                    solver != "euler" or warmup == int(_FROM.value[0])
                ):
                    out.append((solver, stride, warmup))
    return out


if __name__ == "__main__":
    app.run(main)
