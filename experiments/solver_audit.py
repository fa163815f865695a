"""Accuracy audit of the function-space solvers on every client of real NTK-DFL rounds.

    python -m experiments.solver_audit                      # 60 clients × 100, α ∈ {0.05, 0.1, IID}
    python -m experiments.solver_audit --clients=20 --samples_per_client=200   # paper-size pools
    python -m experiments.solver_audit --clients=300 --samples_per_client=200  # the paper scale
    python -m experiments.solver_audit --small              # a minute-long smoke version

For each heterogeneity level the launcher's NTK-DFL (``--train_solver``, by default the launcher's
default solver) trains a fresh 5-regular run;
at initialization and after each of ``--rounds_at`` rounds, every client's next NTK step is set up
as the round would: the uniform average w̄_q of its closed neighbourhood (a 5-regular graph of the
run's pool) and its pooled neighbourhood data (Ñ = 6·samples rows). For every client the audit
then solves the flow with each solver in float32 (the production dtype) and compares the weight
steps Δw_τ = -(η/Ñ) Jᵀ r_τ with a float64 reference (`rk4_reference`: classical RK4 written here,
apart from the package's solvers, ``--reference_substeps`` steps per grid interval and 4 in the
first 8; within 3e-6 of DOP853 at rtol 1e-11, tests/test_solver_audit.py): relative error per
horizon (max over horizons per client), whether τ* (chosen with the real network, as the method
does) is the reference's, and the kernel products. Two more columns separate the solver from
float32: each solver's error when it runs in float64 (its own discretization error;
``--nosolver_float64`` skips it, a third of the time), and the float32 floor, the reference's
method run in float32 (round-off of the kernel, the flow and the VJP, whatever the solver).
Writes experiments/results/solver_audit/NAME.json (every client row and the per-solver
distribution: max, 99th percentile, median) and NAME.png (the distributions, and the default's
error against each neighbourhood's stiffness), and prints the table. ``--replot`` recomputes the
summaries, redraws the PNG and prints the README's Markdown tables (`markdown`).
At Ñ = 1,200 a client takes about 3.3 s on the 2-core CPU with two solvers and
``--nosolver_float64`` (the float64 reference 1.7 s of it), so 300 clients take 17 minutes per
audited round.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
import scipy.linalg
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
    flags.DEFINE_integer("reference_check", 0, "Check the reference against DOP853 on the first "
                         "K audited clients of each round (about 20 s each at Ñ = 1,200).")
    flags.DEFINE_bool("solver_float64", True, "Also run each solver in float64 (its own "
                      "discretization error; about a third of the audit's time at Ñ = 1,200).")
    flags.DEFINE_integer("devices", 2, "Emulated CPU devices of the training runs.")
    flags.DEFINE_integer("seed", 0, "Seed of partitions, graphs and models.")
    flags.DEFINE_bool("small", False, "12 clients × 40, α = 0.1, rounds 0 and 1.")
    flags.DEFINE_string("train_solver", None, "Solver of the training runs (default: the launcher's).")
    flags.DEFINE_string("name", "solver_audit", "Result name: experiments/results/solver_audit/NAME.json.")
    flags.DEFINE_string("out", None, "Result file (overrides --name; the earlier results' flag).")
    flags.DEFINE_integer("audit_clients", 0, "Audit clients 0..K-1 of each run (0: every client).")
    flags.DEFINE_bool("replot", False, "Only recompute the summaries of NAME.json from its rows "
                      "and redraw NAME.png.")
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


def rk4_reference(kernel, f0, y_onehot, mask, *, eta, num_samples, horizons, substeps=1,
                  warmup_steps=8, warmup_substeps=4):
    """The audit's reference flow, written here apart from the package's solvers: classical RK4
    on ``df/ds = -(1/Ñ) K (softmax(f) - Y)`` (masked rows zero) with `substeps` steps per grid
    interval of length η (``max(warmup_substeps, substeps)`` in the first `warmup_steps`
    intervals, where the flow's stiff transient is), and the left Riemann sums
    ``r_τ = Σ_{t<τ} residual(f(s_t))`` as ``[horizons, N, C]``. Four kernel products per step."""
    import jax
    import jax.numpy as jnp

    stops = jnp.asarray(horizons)
    rows = mask.astype(f0.dtype)[None, :]

    def residual(g):  # classes-first [C, N]: r·K is the fast skinny product, K symmetric
        return (jax.nn.softmax(g, axis=0) - y_onehot.T) * rows

    def rhs(g):
        return -jnp.matmul(residual(g), kernel, precision=jax.lax.Precision.HIGHEST) / num_samples

    def rk4(g, h):
        k1 = rhs(g)
        k2 = rhs(g + 0.5 * h * k1)
        k3 = rhs(g + 0.5 * h * k2)
        k4 = rhs(g + h * k3)
        return g + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    def interval(t, carry):
        g, running, sums = carry
        running = running + residual(g)
        sums = jnp.where((stops == t + 1)[:, None, None], running, sums)
        m = jnp.where(t < warmup_steps, max(warmup_substeps, substeps), substeps)
        g = jax.lax.fori_loop(0, m, lambda _, g: rk4(g, eta / m.astype(g.dtype)), g)
        return g, running, sums

    g0 = f0.T
    sums = jnp.zeros((len(horizons), *g0.shape), f0.dtype)
    _, _, sums = jax.lax.fori_loop(0, max(horizons), interval, (g0, jnp.zeros_like(g0), sums))
    return jnp.swapaxes(sums, 1, 2)


@functools.lru_cache(maxsize=None)
def _reference_fn(model, classes: int, dtype_name: str, substeps: int):
    """A jitted ``(w̄, x, y, η, mask) -> (Δw_τ for all τ, τ*)`` with `rk4_reference` in
    `dtype_name`: the float64 reference, or in float32 the round-off floor."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from spark_tpu import ntk

    dtype = jnp.dtype(dtype_name)

    @jax.jit
    def solve(avg, x, y, eta, mask):
        net = eqx.combine(jax.tree.map(lambda a: a.astype(dtype), avg), model.static)
        xs = x.astype(dtype)
        params, apply = ntk.batched_forward(net)
        f0, vjp_fn = jax.vjp(lambda p: apply(p, xs), params)
        kernel = ntk.trace_kernel(net, xs, mask).astype(dtype)
        y_onehot = jax.nn.one_hot(y, classes, dtype=dtype)
        n = jnp.sum(mask).astype(dtype)
        eta = eta.astype(dtype)
        sums = rk4_reference(kernel, f0, y_onehot, mask, eta=eta, num_samples=n,
                             horizons=HORIZONS, substeps=substeps)  # fmt: skip
        dw = ntk.weight_steps(vjp_fn, sums, eta=eta, num_samples=n)
        tau, _ = ntk.select_horizon(params, apply, xs, dw, ntk.cross_entropy(y_onehot, mask))
        return dw, tau

    return solve


def dop853_check(model, avg, x, y, eta, classes, substeps=1) -> float:
    """How far the reference is from scipy's DOP853 (rtol 1e-10, atol 1e-12) on one real
    neighbourhood, float64: the largest relative error over the horizons of the weight steps
    Δw_τ = -(η/Ñ) Jᵀ r_τ from `rk4_reference`'s residual sums, as the audit measures solvers.
    About 20 s at Ñ = 1,200 (DOP853 takes ~5,000 products)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import scipy.integrate

    from spark_tpu import ntk

    net = eqx.combine(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), avg), model.static)
    xs = jnp.asarray(x, jnp.float64)
    kernel, f0 = np.asarray(ntk.trace_kernel(net, xs)), np.asarray(jax.vmap(net)(xs))
    n, c = f0.shape
    onehot = np.eye(classes)[y]

    def softmax(f):
        p = np.exp(f - f.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    def rhs(_, v):
        return (-(kernel @ (softmax(v.reshape(n, c)) - onehot)) / n).ravel()

    grid = np.arange(max(HORIZONS) + 1) * eta
    sol = scipy.integrate.solve_ivp(rhs, (0, grid[-1]), f0.ravel(), method="DOP853",
                                    t_eval=grid, rtol=1e-10, atol=1e-12)  # fmt: skip
    if not sol.success:
        raise RuntimeError(f"DOP853 failed: {sol.message}")
    running = np.cumsum(softmax(sol.y.T.reshape(-1, n, c)) - onehot, axis=0)
    truth = np.concatenate([np.zeros((1, n, c)), running])[list(HORIZONS)]
    ref = np.asarray(jax.jit(lambda k, f: rk4_reference(
        k, f, jnp.asarray(onehot), jnp.ones(n, bool), eta=eta, num_samples=float(n),
        horizons=HORIZONS, substeps=substeps))(kernel, f0))  # fmt: skip
    params, apply = ntk.batched_forward(net)
    _, vjp_fn = jax.vjp(lambda p: apply(p, xs), params)

    def steps(sums):
        dw = ntk.weight_steps(vjp_fn, jnp.asarray(sums), eta=eta, num_samples=float(n))
        return np.concatenate([np.reshape(v, (len(HORIZONS), -1)) for v in jax.tree.leaves(dw)], 1)

    want, got = steps(truth), steps(ref)
    return float(np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)))


def pad_rows(x, y, rows: int):
    """`x`, `y` padded with zero rows to `rows`, and the mask of the real ones (masked rows are
    zero in the kernel and the residual, so the numbers are those of the unpadded data)."""
    mask = np.arange(rows) < len(y)
    x = np.concatenate([x, np.zeros((rows - len(y), *x.shape[1:]), x.dtype)])
    return x, np.concatenate([y, np.zeros(rows - len(y), y.dtype)]), mask


def _audit_client(model, avg, x, y, eta, classes, solvers, ref_substeps, pad_to=None,
                  solver_float64=True):
    """Every solver on one neighbourhood; with `pad_to`, rows are padded (masked) to that count
    so that all neighbourhoods share one compiled shape (the same numbers: masked rows are zero
    in the kernel and the residual)."""
    import jax

    x, y, mask = pad_rows(x, y, len(y) if pad_to is None else pad_to)

    def solve(dtype_name, options):
        fn = _solver_fn(model, classes, dtype_name, tuple(sorted(options.items())))
        dw, tau, products, flagged = fn(avg, x, y, np.float64(eta), mask)
        leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(dw)]
        return leaves, int(tau), int(products), bool(flagged)

    def reference(dtype_name):
        dw, tau = _reference_fn(model, classes, dtype_name, ref_substeps)(
            avg, x, y, np.float64(eta), mask)
        return [np.asarray(v, np.float64) for v in jax.tree.leaves(dw)], int(tau)

    ref, ref_tau = reference("float64")
    norms = np.sqrt(sum(np.sum(v**2, axis=tuple(range(1, v.ndim))) for v in ref))

    def error(dw):
        diff = np.sqrt(sum(np.sum((a - b) ** 2, axis=tuple(range(1, a.ndim)))
                           for a, b in zip(dw, ref)))  # fmt: skip
        return float(np.max(diff / norms))

    # The float32 floor: the reference's own method in float32 (round-off of kernel, flow and VJP).
    floor = error(reference("float32")[0])
    row = {}
    for name in solvers:
        dw, tau, products, flagged = solve("float32", _solver_options(name))
        row[name] = {"max_rel_err_dw": error(dw), "same_tau": tau == ref_tau,
                     "products": products, "flagged": flagged, "float32_floor": floor,
                     "float64_err_dw": (error(solve("float64", _solver_options(name))[0])
                                        if solver_float64 else None)}  # fmt: skip
    return row


def _distribution(rows, name):
    """Max, 99th percentile and median of one solver's errors over `rows` (float32 as run; above
    the float32 floor; float64, where measured), τ* and flag rates, products, the worst clients."""
    cols = [r["solvers"][name] for r in rows]
    errs = np.asarray([c["max_rel_err_dw"] for c in cols])
    products = np.asarray([c["products"] for c in cols])

    def spread(prefix, values):
        return {f"{prefix}max": float(np.max(values)), f"{prefix}p99": float(np.percentile(values, 99)),
                f"{prefix}median": float(np.median(values))}  # fmt: skip

    def where(values):
        at = rows[int(np.nanargmax(np.where(np.isfinite(values), values, np.inf)))]
        return {k: at[k] for k in ("alpha", "round", "client", "stiffness")}

    out = {"clients": len(rows), **spread("", errs)}
    # The solver's own error (float64 against float64), where it was run; files before the
    # float32 floor existed have neither.
    solver64 = np.asarray([c["float64_err_dw"] for c in cols if c.get("float64_err_dw") is not None])
    out["float64_clients"] = len(solver64)
    if len(solver64):
        out.update(spread("float64_", solver64))
    if all("float32_floor" in c for c in cols):
        floor = np.asarray([c["float32_floor"] for c in cols])
        out["float32_floor_max"] = float(np.max(floor))
        out.update(spread("above_floor_", errs - floor))
        out["worst_above_floor"] = where(errs - floor)
    out.update({
        "tau_differs": float(np.mean([not c["same_tau"] for c in cols])),
        "flagged": float(np.mean([c["flagged"] for c in cols])),
        "products_mean": float(products.mean()), "products_max": int(products.max()),
        "worst": where(errs),
    })  # fmt: skip
    return out


def main(argv) -> None:
    del argv
    from spark_tpu import platform

    if FLAGS.replot:
        with open(_path()) as f:
            result = json.load(f)
        result.update(summaries(result["rows"], list(result["summary"])))
        with open(_path(), "w") as f:
            json.dump(result, f, indent=1)
        plot(result, _path().replace(".json", ".png"))
        print(markdown(result))
        return
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
                top = scipy.linalg.eigvalsh(kernel, subset_by_index=[len(y) - 1] * 2)[0]
                stiffness = float(top) * eta / len(y)
                solved = _audit_client(
                    sim.setup.model, avg, x, y, eta, classes, FLAGS.solvers,
                    FLAGS.reference_substeps, pad_to=(cfg.degree + 1) * samples,
                    solver_float64=FLAGS.solver_float64,
                )  # fmt: skip
                rows.append({"alpha": alpha, "round": at, "client": q, "stiffness": stiffness,
                             "solvers": solved})  # fmt: skip
                line = "  ".join(f"{k} {v['max_rel_err_dw']:.1e}/{v['products']}"
                                 for k, v in solved.items())  # fmt: skip
                print(f"α={alpha} round {at} client {q:3d} stiffness {stiffness:.2f}: {line}"
                      f"  [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
                if q < FLAGS.reference_check:
                    rows[-1]["reference_vs_dop853"] = dop853_check(
                        sim.setup.model, avg, x, y, eta, classes, FLAGS.reference_substeps)
                    print(f"  reference vs DOP853: {rows[-1]['reference_vs_dop853']:.1e}")
            _write(rows, clients, samples, alphas, rounds_at, earlier_commands)
    summary = _write(rows, clients, samples, alphas, rounds_at, earlier_commands)
    print("\nsolver    clients  float32: max  p99       median    float64: max  p99       "
          "τ* differs  flagged  products mean/max")
    for name, d in summary.items():
        print(f"{name:9s} {d['clients']:7d}  {d['max']:.2e}  {d['p99']:.2e}  {d['median']:.2e}  "
              f"{d.get('float64_max', np.nan):.2e}  {d.get('float64_p99', np.nan):.2e}  "
              f"{d['tau_differs']:10.2%}  {d['flagged']:7.2%}  {d['products_mean']:.0f}/{d['products_max']}")
    floors = [d["float32_floor_max"] for d in summary.values() if "float32_floor_max" in d]
    if floors:
        print(f"float32 round-off floor (the reference's method in float32): max {max(floors):.2e}")


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


GOAL = 1e-4  # issue 14's accuracy goal for the default solver: max relative error of Δw_τ


def plot(result: dict, path: str) -> None:
    """Two panels from a result file: each solver's error distribution over the audited clients
    (float32 error above the float32 floor, sorted: the curve's right end is the worst client),
    and the default solver's error against each neighbourhood's stiffness η·λ_max(K)/Ñ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (cdf, stiff) = plt.subplots(1, 2, figsize=(10.4, 3.9))
    tiny = 1e-9  # errors at or below the floor are drawn here (log axis)
    for name in result["summary"]:
        above = np.sort([max(r["solvers"][name]["max_rel_err_dw"]
                             - r["solvers"][name].get("float32_floor", 0.0), tiny) for r in rows])
        cdf.plot(above, np.arange(1, len(above) + 1) / len(above), label=name)
    cdf.axvline(GOAL, color="k", ls="--", lw=0.8, label=f"goal {GOAL:g}")
    cdf.set(xscale="log", xlabel="relative error of Δw_τ above the float32 floor (max over τ)",
            ylabel="fraction of audited clients")  # fmt: skip
    first = next(iter(result["summary"]))
    groups = sorted({(r["alpha"], r["round"]) for r in rows})
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(groups), 2)))  # 10 colours repeat beyond 10
    for key, colour in zip(groups, colours):
        pick = [r for r in rows if (r["alpha"], r["round"]) == key]
        stiff.scatter([r["stiffness"] for r in pick],
                      [max(r["solvers"][first]["max_rel_err_dw"]
                           - r["solvers"][first].get("float32_floor", 0.0), tiny) for r in pick],
                      s=6, color=colour, label=f"α={key[0]}, round {key[1]}")  # fmt: skip
    stiff.axhline(GOAL, color="k", ls="--", lw=0.8)
    stiff.set(yscale="log", xlabel="stiffness η·λ_max(K)/Ñ",
              ylabel=f"{first}: error above the floor")  # fmt: skip
    for ax in (cdf, stiff):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Solver audit: {len(rows)} client neighbourhoods against a float64 reference",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summaries(rows, solvers) -> dict:
    """The per-solver distribution over all rows (``summary``) and per audited (α, round)
    (``by_round``, keyed ``"α/round"``)."""
    groups = {}
    for r in rows:
        groups.setdefault(f"{r['alpha']}/{r['round']}", []).append(r)
    checked = [r["reference_vs_dop853"] for r in rows if "reference_vs_dop853" in r]
    return {
        **({"reference_check": {"clients": len(checked), "max": max(checked)}} if checked else {}),
        "summary": {name: _distribution(rows, name) for name in solvers},
        "by_round": {key: {name: _distribution(group, name) for name in solvers}
                     for key, group in groups.items()},
    }  # fmt: skip


def markdown(result: dict) -> str:
    """The README's two tables from a result file: each solver over every audited client, then
    per audited (α, round) the first solver above the float32 floor beside the last one as run
    (for files with the float32 floor; ``--replot`` prints them)."""

    def e(v):
        return f"{v:.1e}"

    def pct(v):
        return f"{100 * v:.1f}%"

    names = list(result["summary"])
    lines = ["| solver | float32 (as run): max | p99 | median | above the float32 floor: max | p99 "
             "| median | τ* differs | flagged | kernel products per client, mean / max |",
             "|---" * 10 + "|"]  # fmt: skip
    for name, s in result["summary"].items():
        lines.append(
            f"| {name} | {e(s['max'])} | {e(s['p99'])} | {e(s['median'])} | "
            f"{e(s['above_floor_max'])} | {e(s['above_floor_p99'])} | {e(s['above_floor_median'])} | "
            f"{pct(s['tau_differs'])} | {pct(s['flagged'])} | "
            f"{s['products_mean']:,.0f} / {s['products_max']:,} |"
        )
    first, last = names[0], names[-1]
    lines += ["", f"| α, audited after round | clients | {first} above the floor: max | p99 | median "
              f"| products mean / max | {last} as run: max | {last} flagged | {last} τ* differs "
              "| η·λ_max(K)/Ñ, max |", "|---" * 10 + "|"]  # fmt: skip

    def order(key):
        alpha, at = key.split("/")
        return (alpha == "iid", float(alpha) if alpha != "iid" else 0.0, int(at))

    for key in sorted(result["by_round"], key=order):
        x, r = result["by_round"][key][first], result["by_round"][key][last]
        stiff = max(row["stiffness"] for row in result["rows"]
                    if f"{row['alpha']}/{row['round']}" == key)  # fmt: skip
        alpha, at = key.split("/")
        lines.append(
            f"| {alpha}, {at} | {x['clients']} | {e(x['above_floor_max'])} | "
            f"{e(x['above_floor_p99'])} | {e(x['above_floor_median'])} | "
            f"{x['products_mean']:.0f} / {x['products_max']} | {e(r['max'])} | {pct(r['flagged'])} "
            f"| {pct(r['tau_differs'])} | {stiff:.2f} |"
        )
    return "\n".join(lines)


def _write(rows, clients, samples, alphas, rounds_at, earlier_commands=()):
    import jax

    tables = summaries(rows, FLAGS.solvers)
    summary = tables["summary"]
    out = {
        "command": "python -m experiments.solver_audit" + (" --small" if FLAGS.small else
            f" --clients={clients} --samples_per_client={samples} --alphas={','.join(alphas)} "
            f"--rounds_at={','.join(map(str, rounds_at))} --solvers={','.join(FLAGS.solvers)} "
            f"--reference_substeps={FLAGS.reference_substeps}"
            + (f" --train_solver={FLAGS.train_solver}" if FLAGS.train_solver else "")
            + (f" --name={FLAGS.name}" if FLAGS.name != "solver_audit" else "")
            + (f" --audit_clients={FLAGS.audit_clients}" if FLAGS.audit_clients else "")
            + ("" if FLAGS.solver_float64 else " --nosolver_float64")
            + (f" --reference_check={FLAGS.reference_check}" if FLAGS.reference_check else "")
            + (" --append" if FLAGS.append else "")),
        "train_solver": FLAGS.train_solver or "the launcher's default",
        "horizons": HORIZONS,
        "reference": f"rk4_reference (hand-written RK4, {FLAGS.reference_substeps} step(s) per "
                     "grid interval, 4 in the first 8), float64",
        **tables, "rows": rows,
        "machine": {"cpus": os.cpu_count(), "jax": jax.__version__,
                    "load_average": os.getloadavg()},
    }  # fmt: skip
    if earlier_commands:
        out["command"] = [*earlier_commands, out["command"]]
    path = _path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    plot(out, path.replace(".json", ".png"))
    return summary


if __name__ == "__main__":
    define_flags()
    app.run(main)
