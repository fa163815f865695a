"""Accuracy audit of the function-space solvers on every client of real NTK-DFL rounds.

    python -m experiments.solver_audit                      # 60 clients × 100, α ∈ {0.05, 0.1, IID}
    python -m experiments.solver_audit --clients=20 --samples_per_client=200   # paper-size pools
    python -m experiments.solver_audit --clients=300 --samples_per_client=200  # the paper scale (GPU)
    python -m experiments.solver_audit --small              # a minute-long smoke version

For each heterogeneity level the launcher's NTK-DFL (``--train_solver``, by default the launcher's
default solver) trains a fresh 5-regular run;
at initialization and after each of ``--rounds_at`` rounds, every client's next NTK step is set up
as the round would: the uniform average w̄_q of its closed neighbourhood (a 5-regular graph of the
run's pool) and its pooled neighbourhood data (Ñ = 6·samples rows). For every client the audit
then solves the flow with each solver in float32 (the production dtype) and compares the weight
steps Δw_τ = -(η/Ñ) Jᵀ r_τ with a float64 reference (rk4, stride 1, ``--reference_substeps``
substeps per grid interval): relative error per horizon (max over horizons per client), whether
τ* (chosen with the real network, as the method does) is the reference's, and the kernel products.
Two more columns separate the solver from float32: each solver's error when it runs in float64
(its own discretization error), and the float32 floor, the reference's method run in float32
(round-off of the kernel, the flow and the VJP, whatever the solver).
Writes experiments/results/solver_audit/solver_audit.json (every client row and the per-solver distribution:
max, 99th percentile, median) and prints the table.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined only when run as a script, so that tests can import the
    audit's functions beside the launcher's flags)."""
    flags.DEFINE_integer("clients", 60, "Clients of each training run.")
    flags.DEFINE_integer("samples_per_client", 100, "Samples per client (pooled Ñ = 6 × this).")
    flags.DEFINE_alias("samples", "samples_per_client")  # the name in earlier result files
    flags.DEFINE_list("alphas", ["0.05", "0.1", "iid"], "Dirichlet α values, or 'iid'.")
    flags.DEFINE_list("rounds_at", ["0", "1", "5", "15"], "Training rounds audited.")
    flags.DEFINE_list(
        "solvers", ["adaptive", "exponential", "rk4/4", "rk4/1"],
        "Solvers under test: adaptive, exponential (optionally with options: "
        "exponential:rank=4:rtol=5e-6), or NAME/STRIDE."
    )
    flags.DEFINE_integer("reference_substeps", 1, "Reference substeps per interval.")
    flags.DEFINE_integer("devices", 2, "Emulated CPU devices of the training runs.")
    flags.DEFINE_integer("seed", 0, "Seed of partitions, graphs and models.")
    flags.DEFINE_bool("small", False, "12 clients × 40, α = 0.1, rounds 0 and 1.")
    flags.DEFINE_string("train_solver", None, "Solver of the training runs (default: the launcher's).")
    flags.DEFINE_string("name", "solver_audit", "Result name: experiments/results/solver_audit/NAME.json.")
    flags.DEFINE_string("out", None, "Result file (overrides --name; the earlier results' flag).")
    flags.DEFINE_integer("audit_clients", 0, "Audit clients 0..K-1 of each run (0: every client).")
    flags.DEFINE_bool("append", False, "Keep the result file's rows (the same solvers) and add "
                      "this run's: one summary over both, both commands recorded.")


HORIZONS = (100, 200, 400, 600, 800)
ETA0, DECAY = 0.01, 0.07


def _solver_options(name: str) -> dict:
    """``adaptive`` or ``exponential``, optionally with options (``exponential:rank=4:rtol=5e-6``),
    or ``NAME/STRIDE`` for a fixed-step solver."""
    if "/" in name:
        solver, stride = name.split("/")
        return {"solver": solver, "stride": int(stride)}
    solver, *pairs = name.split(":")
    options = {"solver": solver}
    for pair in pairs:
        key, value = pair.split("=")
        options[key] = float(value) if key == "rtol" else int(value)
    return options


def _neighbourhoods(sim, cfg):
    """Per client q: (w̄_q as a model pytree of arrays, pooled x, pooled y)."""
    import jax

    from spark_tpu.simulator import _build

    params = jax.tree.map(lambda a: np.asarray(a)[sim._client_order][: cfg.clients], sim.state.params)
    w = _build.make_topology(cfg).mixing_matrices()[0]
    arrays = sim.setup.arrays
    out = []
    for q in range(cfg.clients):
        members = np.flatnonzero(w[q] > 0)
        avg = jax.tree.map(lambda a: np.tensordot(w[q][members], a[members], axes=1), params)
        rows = np.concatenate([np.flatnonzero(arrays.mask[j]) for j in members])
        owner = np.concatenate([np.full(int(arrays.mask[j].sum()), j) for j in members])
        x = np.asarray(arrays.x)[owner, rows]
        y = np.asarray(arrays.y)[owner, rows]
        out.append((avg, x.reshape(len(x), -1), y))
    return out


@functools.lru_cache(maxsize=None)
def _solver_fn(model, classes: int, dtype_name: str, options: tuple):
    """A jitted ``(w̄, x, y, η[, mask]) -> (Δw_τ for all τ, τ*, products, flagged)`` in
    `dtype_name`; masked rows (padding) are left out of the kernel, the flow and the loss."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from spark_tpu import ntk

    dtype = jnp.dtype(dtype_name)

    @jax.jit
    def solve(avg, x, y, eta, mask=None):
        net = eqx.combine(jax.tree.map(lambda a: a.astype(dtype), avg), model.static)
        xs = x.astype(dtype)
        params, apply = ntk.batched_forward(net)
        f0, vjp_fn = jax.vjp(lambda p: apply(p, xs), params)
        kernel = ntk.trace_kernel(net, xs, mask).astype(dtype)
        obj = ntk.cross_entropy(jax.nn.one_hot(y, classes, dtype=dtype), mask)
        n = len(y) if mask is None else jnp.sum(mask).astype(dtype)
        eta = eta.astype(dtype)
        sol = ntk.solve_function_space(
            kernel, f0, obj.residual, eta=eta, horizons=HORIZONS, num_samples=n,
            **dict(options),
        )  # fmt: skip
        dw = ntk.weight_steps(vjp_fn, sol.residual_sums, eta=eta, num_samples=n)
        tau, _ = ntk.select_horizon(params, apply, xs, dw, obj)
        return dw, tau, sol.products, sol.flagged

    return solve


def _audit_client(model, avg, x, y, eta, classes, solvers, ref_substeps, pad_to=None):
    """Every solver on one neighbourhood; with `pad_to`, rows are padded (masked) to that count
    so that all neighbourhoods share one compiled shape (the same numbers: masked rows are zero
    in the kernel and the residual)."""
    import jax

    mask = None
    if pad_to is not None:
        mask = np.arange(pad_to) < len(y)
        x = np.concatenate([x, np.zeros((pad_to - len(y), *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad_to - len(y), y.dtype)])

    def solve(dtype_name, options):
        fn = _solver_fn(model, classes, dtype_name, tuple(sorted(options.items())))
        dw, tau, products, flagged = fn(avg, x, y, np.float64(eta), mask)
        leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(dw)]
        return leaves, int(tau), int(products), bool(flagged)

    ref, ref_tau, _, _ = solve("float64", {"solver": "rk4", "substeps": ref_substeps})
    norms = np.sqrt(sum(np.sum(v**2, axis=tuple(range(1, v.ndim))) for v in ref))

    def error(dw):
        diff = np.sqrt(sum(np.sum((a - b) ** 2, axis=tuple(range(1, a.ndim)))
                           for a, b in zip(dw, ref)))  # fmt: skip
        return float(np.max(diff / norms))

    # The float32 floor: the reference's own method in float32 (round-off of kernel, flow and VJP).
    floor = error(solve("float32", {"solver": "rk4", "substeps": ref_substeps})[0])
    row = {}
    for name in solvers:
        dw, tau, products, flagged = solve("float32", _solver_options(name))
        row[name] = {"max_rel_err_dw": error(dw), "same_tau": tau == ref_tau,
                     "products": products, "flagged": flagged, "float32_floor": floor,
                     "float64_err_dw": error(solve("float64", _solver_options(name))[0])}  # fmt: skip
    return row


def _distribution(rows, name):
    errs = np.asarray([r["solvers"][name]["max_rel_err_dw"] for r in rows])
    products = np.asarray([r["solvers"][name]["products"] for r in rows])
    worst = rows[int(np.nanargmax(np.where(np.isfinite(errs), errs, np.inf)))]
    solver64 = np.asarray([r["solvers"][name]["float64_err_dw"] for r in rows])
    floor = np.asarray([r["solvers"][name]["float32_floor"] for r in rows])
    return {
        "clients": len(rows),
        "max": float(np.max(errs)), "p99": float(np.percentile(errs, 99)),
        "median": float(np.median(errs)),
        # The solver's own error (float64 against float64), and float32's round-off floor.
        "float64_max": float(np.max(solver64)), "float64_p99": float(np.percentile(solver64, 99)),
        "float64_median": float(np.median(solver64)), "float32_floor_max": float(np.max(floor)),
        "above_floor_max": float(np.max(errs - floor)),
        "tau_differs": float(np.mean([not r["solvers"][name]["same_tau"] for r in rows])),
        "flagged": float(np.mean([r["solvers"][name]["flagged"] for r in rows])),
        "products_mean": float(products.mean()), "products_max": int(products.max()),
        "worst": {k: worst[k] for k in ("alpha", "round", "client", "stiffness")},
    }  # fmt: skip


def main(argv) -> None:
    del argv
    from spark_tpu import platform

    clients, samples = (12, 40) if FLAGS.small else (FLAGS.clients, FLAGS.samples_per_client)
    alphas = ["0.1"] if FLAGS.small else FLAGS.alphas
    rounds_at = [0, 1] if FLAGS.small else sorted(int(r) for r in FLAGS.rounds_at)
    platform.emulate_cpu_devices(FLAGS.devices)
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx

    from spark_tpu import ntk, simulator

    rows, earlier_commands = _earlier()
    t0 = time.perf_counter()
    for alpha in alphas:
        iid = alpha == "iid"
        cfg = simulator.Config(
            algorithm="ntk_dfl", clients=clients, samples_per_client=samples,
            partition="iid" if iid else "dirichlet", alpha=1.0 if iid else float(alpha),
            topology="regular", degree=5, rounds=max(1, *rounds_at), devices=FLAGS.devices,
            seed=FLAGS.seed, eval_every=1,
            **({"solver": FLAGS.train_solver} if FLAGS.train_solver else {}),
        )  # fmt: skip
        sim = simulator.Simulation(cfg)
        classes = sim.setup.dataset.num_classes
        done = 0
        for at in rounds_at:
            if at > done:
                sim.advance(at - done)
                done = at
            eta = float(ntk.lr_schedule(ETA0, DECAY)(at))
            hoods = _neighbourhoods(sim, cfg)
            for q, (avg, x, y) in enumerate(hoods[: FLAGS.audit_clients or len(hoods)]):
                net = eqx.combine(avg, sim.setup.model.static)
                kernel = np.asarray(ntk.trace_kernel(net, x.astype(np.float64)))
                stiffness = float(np.linalg.eigvalsh(kernel)[-1]) * eta / len(y)
                solved = _audit_client(
                    sim.setup.model, avg, x, y, eta, classes, FLAGS.solvers,
                    FLAGS.reference_substeps, pad_to=(cfg.degree + 1) * samples,
                )  # fmt: skip
                rows.append({"alpha": alpha, "round": at, "client": q, "stiffness": stiffness,
                             "solvers": solved})  # fmt: skip
                line = "  ".join(f"{k} {v['max_rel_err_dw']:.1e}/{v['products']}"
                                 for k, v in solved.items())  # fmt: skip
                print(f"α={alpha} round {at} client {q:3d} stiffness {stiffness:.2f}: {line}"
                      f"  [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
            _write(rows, clients, samples, alphas, rounds_at, earlier_commands)
    summary = _write(rows, clients, samples, alphas, rounds_at, earlier_commands)
    print("\nsolver    clients  float32: max  p99       median    float64: max  p99       "
          "τ* differs  flagged  products mean/max")
    for name, d in summary.items():
        print(f"{name:9s} {d['clients']:7d}  {d['max']:.2e}  {d['p99']:.2e}  {d['median']:.2e}  "
              f"{d['float64_max']:.2e}  {d['float64_p99']:.2e}  "
              f"{d['tau_differs']:10.2%}  {d['flagged']:7.2%}  {d['products_mean']:.0f}/{d['products_max']}")
    print(f"float32 round-off floor (rk4 at one step per interval, float32): max "
          f"{max(d['float32_floor_max'] for d in summary.values()):.2e}")


def _path() -> str:
    path = FLAGS.out or f"experiments/results/solver_audit/{FLAGS.name}.json"
    return path.replace(".json", "_small.json") if FLAGS.small else path


def _earlier() -> tuple[list, list[str]]:
    """With --append, the rows already in the result file (their solvers must be this run's)
    and the commands behind them; else nothing."""
    if not FLAGS.append or not os.path.exists(_path()):
        return [], []
    with open(_path()) as f:
        earlier = json.load(f)
    if list(earlier["summary"]) != list(FLAGS.solvers):
        raise ValueError(f"--append: {_path()} audited {list(earlier['summary'])}, "
                         f"not --solvers={','.join(FLAGS.solvers)}.")
    commands = earlier["command"]
    return earlier["rows"], commands if isinstance(commands, list) else [commands]


def _write(rows, clients, samples, alphas, rounds_at, earlier_commands=()):
    import jax

    summary = {name: _distribution(rows, name) for name in FLAGS.solvers}
    out = {
        "command": "python -m experiments.solver_audit" + (" --small" if FLAGS.small else
            f" --clients={clients} --samples_per_client={samples} --alphas={','.join(alphas)} "
            f"--rounds_at={','.join(map(str, rounds_at))} --solvers={','.join(FLAGS.solvers)} "
            f"--reference_substeps={FLAGS.reference_substeps}"
            + (f" --train_solver={FLAGS.train_solver}" if FLAGS.train_solver else "")
            + (f" --name={FLAGS.name}" if FLAGS.name != "solver_audit" else "")
            + (f" --audit_clients={FLAGS.audit_clients}" if FLAGS.audit_clients else "")
            + (" --append" if FLAGS.append else "")),
        "train_solver": FLAGS.train_solver or "the launcher's default",
        "horizons": HORIZONS, "reference": f"rk4, stride 1, {FLAGS.reference_substeps} substep(s), float64",
        "summary": summary, "rows": rows,
        "machine": {"cpus": os.cpu_count(), "jax": jax.__version__,
                    "load_average": os.getloadavg()},
    }  # fmt: skip
    if earlier_commands:
        out["command"] = [*earlier_commands, out["command"]]
    path = _path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return summary


if __name__ == "__main__":
    define_flags()
    app.run(main)
