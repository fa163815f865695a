"""The paper-scale comparison (issues 4 and 5): NTK-DFL, SPARK and the gradient baselines on the
reference setting of docs/ntk_dfl.md §4 — Fashion-MNIST, 300 clients of 200 samples, per-client Dirichlet α,
MLP 784-100-10, a random 5-regular graph every round (drawn from a pool of 64 pre-drawn graphs),
horizons {100, 200, 400, 600, 800}.

    python -m experiments.paper --alphas=0.1 --seeds=0            # the headline (H100: ~9 min)
    python -m experiments.paper --alphas=0.5,iid --methods=ntk_dfl,spark,dfedavg

Writes results/paper/paper_<alpha>_s<seed>.json (curves and summaries), .png and .md (table).
Every method is evaluated every ``--eval_every`` rounds (1 by default), so rounds-to-target are
comparable across methods: evaluating one method every 5 rounds would report its rounds-to-target
up to 4 rounds late.
Reference hyperparameters (docs/baselines.md §7): DFedAvg lr 0.1, batch 25, 20 local epochs; DFedAvgM lr 0.01,
batch 50, momentum 0.9, 20 local epochs; D-PSGD lr 0.1, batch 10, one step per round; NTK-DFL
η0 = 0.01 decaying by exp(−0.07 k).
"""

from __future__ import annotations

from absl import app, flags

from experiments import _grid

flags.DEFINE_list("alphas", ["0.1"], "Dirichlet α values, or 'iid'.")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_list(
    "methods", ["dpsgd", "dfedavg", "dfedavgm", "ntk_dfl", "spark", "ntk_dfl+momentum"], "Methods."
)
flags.DEFINE_integer("rounds", 25, "Rounds for NTK-DFL, SPARK and NTK-DFL + momentum.")
flags.DEFINE_integer("grad_rounds", 150, "Rounds for DFedAvg(M).")
flags.DEFINE_integer("dpsgd_rounds", 400, "Rounds for D-PSGD (one minibatch step each).")
flags.DEFINE_integer("eval_every", 1, "Evaluation period of every method (rounds-to-target "
                     "is only as fine as this).")
flags.DEFINE_integer("clients", 300, "Clients.")
flags.DEFINE_integer("samples_per_client", 200, "Samples per client.")
flags.DEFINE_integer("devices", 0, "Devices (0: all accelerators, else 8 emulated CPUs).")
flags.DEFINE_float("target_accuracy", 0.85, "Target accuracy for rounds/bytes-to-target.")
flags.DEFINE_string("topology", "regular", "regular, ring or erdos_renyi.")
flags.DEFINE_list("horizons", [], "NTK horizons (default: the reference 100,200,400,600,800).")
flags.DEFINE_string("solver", "auto", "NTK function-space solver (auto, adaptive, exponential, or fixed: rk4, rkc4, ...).")
flags.DEFINE_integer("solver_stride", 1, "Fixed-step solvers: grid intervals per step after step 32.")
flags.DEFINE_bool("small", False, "A seconds-long smoke version on CPU.")
FLAGS = flags.FLAGS

MOMENTUM_ONLY = "0: lam=0, mu=0.9"
OUT_DIR = _grid.results_dir("paper")


def method_config(method: str, base: dict):
    from spark_tpu import simulator

    ntk = dict(rounds=FLAGS.rounds, eval_every=FLAGS.eval_every)
    grad = dict(rounds=FLAGS.grad_rounds, eval_every=FLAGS.eval_every)
    table = {
        "ntk_dfl": dict(algorithm="ntk_dfl", **ntk),
        "spark": dict(algorithm="spark", **ntk),
        "ntk_dfl+momentum": dict(algorithm="spark", spark_stages=MOMENTUM_ONLY, **ntk),
        "dfedavg": dict(algorithm="dfedavg", **grad),
        "dfedavgm": dict(algorithm="dfedavgm", **grad),
        "dpsgd": dict(algorithm="dgd", rounds=FLAGS.dpsgd_rounds, eval_every=FLAGS.eval_every),
    }
    if method not in table:
        raise ValueError(f"--methods: unknown {method!r}; choose from {sorted(table)}.")
    return simulator.Config(**{**base, **table[method]})


def main(_):
    import jax

    devices = FLAGS.devices or len(jax.devices())
    for alpha in FLAGS.alphas:
        for seed in FLAGS.seeds:
            base = dict(
                dataset="fashion_mnist", clients=FLAGS.clients,
                samples_per_client=FLAGS.samples_per_client, degree=5,
                topology=FLAGS.topology, time_varying=FLAGS.topology != "ring",
                partition="iid" if alpha == "iid" else "dirichlet",
                alpha=0.1 if alpha == "iid" else float(alpha), seed=int(seed), devices=devices,
                local_eval_samples=2000, target_accuracy=FLAGS.target_accuracy, graph_pool=64,
            )
            if FLAGS.horizons:
                base["horizons"] = tuple(int(h) for h in FLAGS.horizons)
            base.update(solver=FLAGS.solver, solver_stride=FLAGS.solver_stride)
            if FLAGS.small:
                base.update(clients=16, samples_per_client=30, horizons=(10, 20), graph_pool=4)
            if FLAGS.topology == "erdos_renyi":  # the same mean degree as the 5-regular graph
                base["edge_probability"] = 5 / (base["clients"] - 1)
            name = f"paper_{alpha}_s{seed}" + (f"_{FLAGS.topology}" if FLAGS.topology != "regular" else "")
            if FLAGS.horizons:
                name += "_h" + "-".join(FLAGS.horizons)
            if FLAGS["solver"].present or FLAGS["solver_stride"].present:
                name += f"_{FLAGS.solver}x{FLAGS.solver_stride}"
            if (FLAGS.clients, FLAGS.samples_per_client) != (300, 200):
                name += f"_q{FLAGS.clients}n{FLAGS.samples_per_client}"
            name += "_small" if FLAGS.small else ""
            configs = {m: method_config(m, base) for m in FLAGS.methods}
            if FLAGS.small:
                configs = {m: c.replace(rounds=3, eval_every=1) for m, c in configs.items()}
            results = _grid.run_grid(name, configs, out_dir=OUT_DIR)
            title = (f"Fashion-MNIST, {FLAGS.clients} clients × {FLAGS.samples_per_client}, "
                     f"{FLAGS.topology}, α={alpha}, seed {seed}")
            print(_grid.report(results, name, title, FLAGS.target_accuracy, out_dir=OUT_DIR))


if __name__ == "__main__":
    from spark_tpu import platform

    platform.emulate_cpu_devices(8)  # used only where there is no accelerator
    app.run(main)
