"""NTK-FL against FedAvg (docs/ntk_fl.md; arXiv 2110.03681): Fashion-MNIST, per-client Dirichlet label skew, the
server sampling 7% of the clients every round, MLP 784-100-10.

    # the reduced CPU setting, results/ntk_fl/ntk_fl.{json,png,md} (8 emulated devices on 2 busy cores:
    # 14 min; NTK-FL 7.4 s/round, FedAvg 6 s/round since every slot runs its local epochs)
    python -m experiments.ntk_fl --clients=100 --samples_per_client=200 --rounds=20 \
        --fedavg_rounds=100
    # the reference scale (300 clients of 200 samples; 21 sampled, Ñ = 4200), on an accelerator
    # (on this CPU expect roughly 9x the server step, ~50 s/round, and ~20 s/FedAvg round)
    python -m experiments.ntk_fl --clients=300 --rounds=30 --fedavg_rounds=200 --devices=0 \
        --target_accuracy=0.85 --name=ntk_fl_300
    # cost of the server step on one device vs replicated on all (results/ntk_fl/ntk_fl_cost.{json,md})
    python -m experiments.ntk_fl --cost --clients=100 --samples_per_client=200 --cost_rounds=2
    # a seconds-long smoke version (16 clients × 30 samples, 3 rounds each; writes NAME_small)
    python -m experiments.ntk_fl --small

NTK-FL: constant η = 0.01, horizons {100, 200, …, 1000, 1500, 2000} (the simulator's defaults
for ntk_fl). FedAvg: lr 0.1, batch 25, 20 local epochs (docs/baselines.md §7 reference), the same participation
and the same sampled clients every round (both draw from the round key the same way).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from experiments import _grid

flags.DEFINE_integer("clients", 100, "Clients (300 in the reference).")
flags.DEFINE_integer("samples_per_client", 200, "Samples per client.")
flags.DEFINE_float("participation", 0.07, "Fraction of clients the server samples per round.")
flags.DEFINE_float("alpha", 0.1, "Dirichlet α of the per-client label skew.")
flags.DEFINE_integer("rounds", 20, "NTK-FL rounds.")
flags.DEFINE_integer("fedavg_rounds", 100, "FedAvg rounds.")
flags.DEFINE_integer("fedavg_eval_every", 1, "FedAvg evaluation period (1, as NTK-FL's, so "
                     "rounds-to-target compare).")
flags.DEFINE_integer("devices", 8, "Devices (0: all accelerators; on CPU, emulated).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_float("target_accuracy", 0.75, "Target accuracy for rounds/bytes-to-target.")
flags.DEFINE_string("name", "ntk_fl", "Results name.")
flags.DEFINE_bool("cost", False, "Measure the server step on one device vs on every device.")
flags.DEFINE_integer("cost_rounds", 3, "Timed rounds per variant with --cost.")
flags.DEFINE_bool("small", False, "Smoke-test size: 16 clients × 30 samples, 3 rounds each.")
FLAGS = flags.FLAGS
OUT_DIR = _grid.results_dir("ntk_fl")


SMALL = dict(clients=16, samples_per_client=30, rounds=3)  # --small; FedAvg's rounds too


def _size() -> tuple[int, int]:
    """(clients, samples per client) of this invocation (--small overrides the flags)."""
    if FLAGS.small:
        return SMALL["clients"], SMALL["samples_per_client"]
    return FLAGS.clients, FLAGS.samples_per_client


def _name() -> str:
    return FLAGS.name + ("_small" if FLAGS.small else "")


def base_config(devices: int):
    from spark_tpu import simulator

    clients, samples = _size()
    return simulator.Config(
        algorithm="ntk_fl", dataset="fashion_mnist", partition="dirichlet", alpha=FLAGS.alpha,
        clients=clients, samples_per_client=samples,
        participation=FLAGS.participation, seed=FLAGS.seed, devices=devices,
        local_eval_samples=1000, target_accuracy=FLAGS.target_accuracy, eval_every=1,
    )


def configs(devices: int):
    base = base_config(devices)
    rounds = SMALL["rounds"] if FLAGS.small else FLAGS.rounds
    fedavg_rounds = SMALL["rounds"] if FLAGS.small else FLAGS.fedavg_rounds
    return {
        "ntk_fl": base.replace(rounds=rounds),
        "fedavg": base.replace(
            algorithm="fedavg", rounds=fedavg_rounds, eval_every=FLAGS.fedavg_eval_every
        ),
    }


def _timed_rounds(sim, rounds: int) -> tuple[float, list[float]]:
    t = time.perf_counter()
    sim.chunk(1)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        sim.advance(1)
        times.append(time.perf_counter() - t)
    return compile_s, times


def cost(devices: int) -> dict:
    """Seconds per round with the server step on one device (the default) and replicated."""
    import jax
    import numpy as np

    from spark_tpu import algorithms, simulator
    from spark_tpu.simulator import _build

    cfg = base_config(devices).replace(rounds=FLAGS.cost_rounds)
    out, params = {}, {}
    for label, replicate in (("one device (lax.cond)", False), ("replicated on all", True)):
        sim = simulator.Simulation(cfg)
        if replicate:
            sim.setup.algorithm = algorithms.ntk_fl(
                sim.setup.model, num_clients=cfg.clients, num_classes=sim.setup.dataset.num_classes,
                participation=cfg.participation, eta=_build.hyperparameters(cfg)["lr"],
                replicate_server=True,
            )
        compile_s, times = _timed_rounds(sim, FLAGS.cost_rounds)
        leaves = jax.tree.leaves(sim.state.params)
        params[label] = np.concatenate([np.ravel(np.asarray(v)) for v in leaves])
        out[label] = {"compile_s": compile_s, "round_s": times, "median_round_s": float(np.median(times))}
    a, b = params.values()
    out["max_abs_param_difference"] = float(np.max(np.abs(a - b)))
    out["setting"] = {
        "clients": cfg.clients, "samples": cfg.samples_per_client,
        "participation": cfg.participation, "devices": devices,
        "sampled": max(1, round(cfg.participation * cfg.clients)),
        "horizons": list(algorithms.NTK_FL_HORIZONS),
    }
    return out


def write_cost(result: dict) -> None:
    path = os.path.join(OUT_DIR, _name() + "_cost")
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(path + ".json", "w") as f:
        json.dump(result, f, indent=1)
    s = result["setting"]
    head = (
        f"NTK-FL server step, {s['clients']} clients × {s['samples']} samples, {s['sampled']} "
        f"sampled (Ñ = {s['sampled'] * s['samples']}), horizons up to {max(s['horizons'])}, "
        f"{s['devices']} devices. Same model either way (max |Δθ| = "
        f"{result['max_abs_param_difference']:.1e})."
    )
    lines = [
        head,
        "",
        "| server step | compile (s) | median s/round | rounds (s) |",
        "|---|---|---|---|",
    ]
    for label, r in result.items():
        if isinstance(r, dict) and "round_s" in r:
            lines.append(f"| {label} | {r['compile_s']:.1f} | {r['median_round_s']:.2f} | "
                         + ", ".join(f"{t:.2f}" for t in r["round_s"]) + " |")
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(_):
    import jax

    devices = FLAGS.devices or len(jax.devices())
    if FLAGS.cost:
        write_cost(cost(devices))
        return
    results = _grid.run_grid(_name(), configs(devices), out_dir=OUT_DIR)
    path = os.path.join(OUT_DIR, _name())
    clients, _ = _size()
    k = max(1, round(FLAGS.participation * clients))
    _grid.plot(results, path + ".png", f"Fashion-MNIST, {clients} clients, α={FLAGS.alpha}, "
               f"{k} sampled per round")
    text = "\n\n".join([describe(k, results), _grid.table(results, FLAGS.target_accuracy)])
    with open(path + ".md", "w") as f:
        f.write(text + "\n")
    print(text)


def describe(sampled: int, results: dict) -> str:
    """The setting and NTK-FL's chosen horizons (the histogram counts client-rounds: / Q)."""
    clients, samples = _size()
    setting = (
        f"Fashion-MNIST, {clients} clients × {samples} samples, per-client Dirichlet "
        f"α = {FLAGS.alpha}, {sampled} clients sampled per round ({FLAGS.participation:.0%}), "
        f"MLP 784-100-10, seed {FLAGS.seed}. NTK-FL: η = 0.01 constant, horizons "
        "{100, …, 1000, 1500, 2000}. FedAvg: lr 0.1, batch 25, 20 local epochs."
    )
    lines = [setting]
    if "ntk_fl" in results:
        hist = results["ntk_fl"]["summary"]["horizon_histogram"]
        rounds = {t: round(c / clients) for t, c in hist.items()}
        lines.append(f"NTK-FL chosen τ* (rounds): {rounds}.")
    for label, res in results.items():
        reached = []
        for target in (0.7, 0.75, 0.8):
            rnd, sent = _grid.rounds_to(res["curve"], target)
            reached.append(f"{target:.0%} in {rnd} rounds, {sent / 1e6:,.0f} MB" if rnd else
                           f"{target:.0%} not reached")
        every = res["config"]["eval_every"]
        lines.append(f"{label} (evaluated every {every} round(s)): " + "; ".join(reached) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    from spark_tpu import platform

    platform.emulate_cpu_devices(8)  # used only where there is no accelerator
    app.run(main)
