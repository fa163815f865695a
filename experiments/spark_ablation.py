"""SPARK ablation (issue 5): which components and which stage schedule, at strong heterogeneity.

    python -m experiments.spark_ablation            # ~40 min on the 2-core CPU (see README)
    python -m experiments.spark_ablation --small    # a seconds-long smoke version

Runs NTK-DFL; NTK-DFL + momentum (μ = 0.9, no regularizer: the paper says this is unstable under
strong heterogeneity); the regularizer alone (μ = 0); and full SPARK under several stage schedules,
all on one reduced but real setting (Fashion-MNIST, per-client Dirichlet α, a random regular
graph every round from a pool of 32), and writes results/spark_ablation/spark_ablation.{json,png,md}.
"""

from __future__ import annotations

from absl import app, flags

from experiments import _grid

flags.DEFINE_bool("small", False, "Smoke-test size.")
flags.DEFINE_float("alpha", 0.05, "Dirichlet α (strong heterogeneity).")
flags.DEFINE_integer("clients", 60, "Clients.")
flags.DEFINE_integer("samples_per_client", 100, "Samples per client.")
flags.DEFINE_integer("rounds", 15, "Rounds.")
flags.DEFINE_integer("devices", 8, "Emulated devices.")
flags.DEFINE_string("name", "spark_ablation", "Results name.")
FLAGS = flags.FLAGS
OUT_DIR = _grid.results_dir("spark_ablation")

VARIANTS = {
    "ntk_dfl": ("ntk_dfl", "", ()),
    "ntk_dfl+momentum": ("spark", "0: lam=0, mu=0.9", ()),
    "regularizer only (λ=0.3, T=2)": ("spark", "0: lam=0.3, T=2, mu=0", ()),
    "spark constant (λ=0.3, T=2, μ=0.9)": ("spark", "0: lam=0.3, T=2, mu=0.9", ()),
    "spark warm-up 3, λ 0.5→0.1 cos": ("spark", "0: lam=0, mu=0; 3: lam=0.5->0.1@cos, T=2, mu=0.9", ()),
    "spark λ 0.5→0 linear, μ 0.9": ("spark", "0: lam=0.5->0, T=2, mu=0.9", ()),
    "spark heavy-ball, λ 0.5→0.1 cos": (
        "spark", "0: lam=0, mu=0; 3: lam=0.5->0.1@cos, T=2, mu=0.9", (("momentum", "heavy_ball"),)
    ),
}


def configs():
    from spark_tpu import simulator

    base = dict(
        dataset="fashion_mnist", partition="dirichlet", alpha=FLAGS.alpha, clients=FLAGS.clients,
        samples_per_client=FLAGS.samples_per_client, rounds=FLAGS.rounds, degree=5,
        devices=FLAGS.devices,
        local_eval_samples=1000, target_accuracy=0.75, graph_pool=32,
    )
    if FLAGS.small:
        base.update(clients=16, samples_per_client=30, rounds=4, horizons=(10, 20), graph_pool=4)
    return {
        label: simulator.Config(
            algorithm=algo, spark_stages=stages, spark_options=opts, **base
        )
        for label, (algo, stages, opts) in VARIANTS.items()
    }


def main(_):
    name = FLAGS.name + ("_small" if FLAGS.small else "")
    results = _grid.run_grid(name, configs(), out_dir=OUT_DIR)
    print(_grid.report(results, name, f"SPARK ablation, α={FLAGS.alpha}", 0.75, out_dir=OUT_DIR))


if __name__ == "__main__":
    from spark_tpu import platform

    platform.emulate_cpu_devices(8)
    app.run(main)
