"""What keeps the NTK methods stable on a fixed ring (issue 5, robustness)?

At the paper setting on a fixed ring, NTK-DFL + momentum (μ = 0.9) collapses in every seed and
SPARK's annealed regularizer does not prevent it (README, "Robustness to the topology"). This
compares the knobs the SPARK abstract leaves open (docs/spark.md §1), on the reduced ring of that section (Fashion-MNIST, 60
clients × 100 samples, per-client Dirichlet α = 0.1, fixed ring, 20 rounds, target 80%):

    python -m experiments.ring_stability            # ~15 min on the 2-core CPU
    python -m experiments.ring_stability --small    # a seconds-long smoke version

Writes results/ring_stability/ring_stability.{json,png,md}.
"""

from __future__ import annotations

from absl import app, flags

from experiments import _grid

flags.DEFINE_bool("small", False, "Smoke-test size.")
flags.DEFINE_float("alpha", 0.1, "Dirichlet α.")
flags.DEFINE_integer("clients", 60, "Clients.")
flags.DEFINE_integer("samples_per_client", 100, "Samples per client.")
flags.DEFINE_integer("rounds", 20, "Rounds.")
flags.DEFINE_integer("devices", 0, "Emulated CPU devices (0: one per core, at most 8).")
flags.DEFINE_float("target_accuracy", 0.8, "Target accuracy.")
flags.DEFINE_string("name", "ring_stability", "Results name.")
FLAGS = flags.FLAGS
OUT_DIR = _grid.results_dir("ring_stability")

WARMUP = "0: lam=0, mu=0; 3: "
SHORT = (25, 50, 100, 200)  # shorter function-space horizons than the reference {100, …, 800}
# label: (algorithm, stages, --spark options, horizons or None for the reference set)
VARIANTS = {
    "ntk_dfl": ("ntk_dfl", "", (), None),
    "ntk_dfl, horizons ≤ 200": ("ntk_dfl", "", (), SHORT),
    "ntk_dfl+momentum μ=0.9": ("spark", "0: lam=0, mu=0.9", (), None),
    "ntk_dfl+momentum μ=0.5": ("spark", "0: lam=0, mu=0.5", (), None),
    "spark (default)": ("spark", "", (), None),
    "spark μ=0.5": ("spark", WARMUP + "lam=0.5->0.1@cos, T=2, mu=0.5", (), None),
    "spark λ 1.0→0.5": ("spark", WARMUP + "lam=1.0->0.5@cos, T=2, mu=0.9", (), None),
    "spark, gossiped buffer": ("spark", "", (("buffer", "gossip"),), None),
    "regularizer only (λ 0.5→0.1, μ=0)": (
        "spark", WARMUP + "lam=0.5->0.1@cos, T=2, mu=0", (), None
    ),
    "ntk_dfl+momentum μ=0.9, horizons ≤ 200": ("spark", "0: lam=0, mu=0.9", (), SHORT),
    "spark, horizons ≤ 200": ("spark", "", (), SHORT),
}


def configs():
    from spark_tpu import platform, simulator

    base = dict(
        dataset="fashion_mnist", partition="dirichlet", alpha=FLAGS.alpha, clients=FLAGS.clients,
        samples_per_client=FLAGS.samples_per_client, rounds=FLAGS.rounds, topology="ring",
        time_varying=False,
        devices=FLAGS.devices or platform.default_cpu_devices(), local_eval_samples=2000,
        target_accuracy=FLAGS.target_accuracy,
    )
    small = FLAGS.small
    if small:
        base.update(clients=16, samples_per_client=30, rounds=4)
    out = {}
    for label, (algo, stages, opts, horizons) in VARIANTS.items():
        extra = {"horizons": horizons} if horizons else {}
        if small:
            extra["horizons"] = (5, 10) if horizons else (10, 20)
        out[label] = simulator.Config(
            algorithm=algo, spark_stages=stages, spark_options=opts, **base, **extra
        )
    return out


def main(_):
    name = FLAGS.name + ("_small" if FLAGS.small else "")
    results = _grid.run_grid(name, configs(), out_dir=OUT_DIR)
    title = f"Fixed ring, {FLAGS.clients} clients, α={FLAGS.alpha}"
    print(_grid.report(results, name, title, FLAGS.target_accuracy, out_dir=OUT_DIR))


if __name__ == "__main__":
    from spark_tpu import platform

    platform.emulate_cpu_devices(platform.default_cpu_devices())
    app.run(main)
