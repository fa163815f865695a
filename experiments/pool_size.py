"""Does the size of the pre-drawn graph pool change results? (issue 2; docs/topologies.md §3)

A time-varying topology draws ``--graph_pool`` random graphs at start-up and picks one per round
with the round's key, so shapes stay static inside the compiled program. If the pool were too
small, the sequence of graphs would repeat and could bias training. This runs D-PSGD (one gradient
step per round: the method whose trajectory depends on the most graphs) and NTK-DFL with pools of
different sizes, and reports the final accuracy spread against the seed-to-seed spread.

    python -m experiments.pool_size --pools=2,512 --methods=dpsgd   # ~20 min, busy 2-core CPU
    python -m experiments.pool_size --small  # seconds

Writes results/pool_size/pool_size.{json,md}.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import _grid

flags.DEFINE_list("pools", ["2", "8", "64", "512"], "Pool sizes.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds (the seed-to-seed spread is the yardstick).")
flags.DEFINE_list("methods", ["dpsgd", "ntk_dfl"], "Methods (dpsgd, ntk_dfl).")
flags.DEFINE_bool("small", False, "Smoke-test size.")
FLAGS = flags.FLAGS
OUT_DIR = _grid.results_dir("pool_size")


def configs():
    from spark_tpu import simulator

    base = dict(
        dataset="fashion_mnist", partition="dirichlet", alpha=0.1, clients=60,
        samples_per_client=100, degree=5, time_varying=True, devices=8, local_eval_samples=1000,
        target_accuracy=0.7,
    )
    runs = {
        "dpsgd": dict(algorithm="dgd", rounds=300, eval_every=25),
        "ntk_dfl": dict(algorithm="ntk_dfl", rounds=8, eval_every=8, horizons=(25, 50, 100)),
    }
    if FLAGS.small:
        base.update(clients=16, samples_per_client=30)
        runs = {"dpsgd": dict(algorithm="dgd", rounds=10, eval_every=5)}
    return {
        f"{name} pool={pool} seed={seed}": simulator.Config(
            graph_pool=int(pool), seed=int(seed), **base, **kw
        )
        for name, kw in runs.items()
        if name in FLAGS.methods
        for pool in FLAGS.pools
        for seed in FLAGS.seeds
    }


def main(_):
    name = "pool_size" + ("_small" if FLAGS.small else "")
    results = _grid.run_grid(name, configs(), out_dir=OUT_DIR)
    lines = ["| method | pool | final agg. acc per seed |", "|---|---|---|"]
    for method in sorted({k.split()[0] for k in results}):
        for pool in FLAGS.pools:
            accs = [
                results[k]["curve"][-1]["aggregated_acc"]
                for k in results
                if k.startswith(f"{method} pool={pool} ")
            ]
            lines.append(f"| {method} | {pool} | {', '.join(f'{a:.4f}' for a in accs)} |")
    text = "\n".join(lines)
    with open(os.path.join(OUT_DIR, name + ".md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    from spark_tpu import platform

    platform.emulate_cpu_devices(8)
    app.run(main)
