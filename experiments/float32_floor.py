"""Where the solver audit's float32 floor comes from, on one client's neighbourhood.

    python -m experiments.float32_floor --alpha=0.1 --round=1 --client=2   # the audit's worst
    python -m experiments.float32_floor --alpha=0.1 --round=0 --client=0

The audit (experiments/solver_audit.py) runs its float64 reference's method in float32 too: that
"floor" is the round-off every solver shares. On a few neighbourhoods it is 1e-3 and above. This
script rebuilds one audited neighbourhood as the audit does (the 300-client NTK-DFL run trained
for `--round` rounds, client `--client`'s uniform average w̄_q and pooled data, padded to
6·samples rows) and takes the weight step Δw_τ with one part at a time in float32, the rest in
float64 (the kernel, the initial logits, the flow, the VJP Jᵀ r_τ), plus all in float32; per
horizon, the relative error against all float64, per layer for the VJP; and the first layer's
pre-activations whose sign differs between float32 and float64 (a ReLU derivative that flips).
Writes experiments/results/float32_floor/float32_floor_<α>_r<round>_q<client>.json (`--output_dir`).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

flags.DEFINE_string("alpha", "0.1", "Dirichlet α of the run, or 'iid'.")
flags.DEFINE_integer("round", 1, "Training rounds before the audited step.")
flags.DEFINE_integer("client", 2, "The client whose neighbourhood is examined.")
flags.DEFINE_integer("clients", 300, "Clients of the run.")
flags.DEFINE_integer("samples_per_client", 200, "Samples per client.")
flags.DEFINE_integer("seed", 0, "Seed of the run.")
flags.DEFINE_string("output_dir", "experiments/results/float32_floor", "Where the result goes.")
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    from spark_tpu import platform

    platform.emulate_cpu_devices(2)
    import equinox as eqx
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from experiments import solver_audit as audit
    from spark_tpu import ntk, simulator

    iid = FLAGS.alpha == "iid"
    cfg = simulator.Config(
        algorithm="ntk_dfl", clients=FLAGS.clients, samples_per_client=FLAGS.samples_per_client,
        partition="iid" if iid else "dirichlet", alpha=1.0 if iid else float(FLAGS.alpha),
        topology="regular", degree=5, rounds=max(1, FLAGS.round), devices=2, seed=FLAGS.seed,
        eval_every=1, solver="exponential",
    )  # fmt: skip
    sim = simulator.Simulation(cfg)
    if FLAGS.round:
        sim.advance(FLAGS.round)
    avg, x, y = audit._neighbourhoods(sim, cfg)[FLAGS.client]
    eta = float(ntk.lr_schedule(audit.ETA0, audit.DECAY)(FLAGS.round))
    n = len(y)
    x, y, mask = audit.pad_rows(x, y, (cfg.degree + 1) * FLAGS.samples_per_client)
    onehot = np.eye(sim.setup.dataset.num_classes)[y]

    def parts(dtype):
        net = eqx.combine(jax.tree.map(lambda a: jnp.asarray(a, dtype), avg), sim.setup.model.static)
        params, apply = ntk.batched_forward(net)
        logits, vjp_fn = jax.vjp(lambda p: apply(p, jnp.asarray(x, dtype)), params)
        return {"kernel": ntk.trace_kernel(net, jnp.asarray(x, dtype), jnp.asarray(mask)),
                "logits": logits, "vjp": vjp_fn}  # fmt: skip

    f64, f32 = parts(jnp.float64), parts(jnp.float32)

    def step(kernel="float64", logits="float64", flow="float64", vjp="float64"):
        pick = {"float64": f64, "float32": f32}
        dt = jnp.dtype(flow)
        sums = audit.rk4_reference(
            pick[kernel]["kernel"].astype(dt), pick[logits]["logits"].astype(dt),
            jnp.asarray(onehot, dt), jnp.asarray(mask), eta=jnp.asarray(eta, dt),
            num_samples=jnp.asarray(n, dt), horizons=audit.HORIZONS,
        )  # fmt: skip
        dv = jnp.dtype(vjp)
        dw = ntk.weight_steps(pick[vjp]["vjp"], sums.astype(dv), eta=jnp.asarray(eta, dv),
                              num_samples=jnp.asarray(n, dv))  # fmt: skip
        return [np.reshape(np.asarray(v, np.float64), (len(audit.HORIZONS), -1))
                for v in jax.tree.leaves(dw)]  # fmt: skip

    ref = step()

    def errors(leaves):
        a, b = np.concatenate(leaves, 1), np.concatenate(ref, 1)
        return (np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).tolist()

    everything = dict(kernel="float32", logits="float32", flow="float32", vjp="float32")
    out = {"all_float32": errors(step(**everything))}
    for part in ("kernel", "logits", "flow", "vjp"):
        out[f"{part}_only_float32"] = errors(step(**{part: "float32"}))
    vjp32 = step(vjp="float32")
    out["vjp_only_float32_per_layer_last_horizon"] = [
        float(np.linalg.norm(a[-1] - b[-1]) / np.linalg.norm(b[-1])) for a, b in zip(vjp32, ref)
    ]
    w, b = (np.asarray(avg.layers[0].weight, np.float64), np.asarray(avg.layers[0].bias, np.float64))
    z64 = x[:n].astype(np.float64) @ w.T + b
    z32 = np.asarray(jax.jit(lambda v: v @ jnp.asarray(w.T, jnp.float32) + jnp.asarray(b, jnp.float32))(
        jnp.asarray(x, jnp.float32)), np.float64)[:n]  # fmt: skip
    flips = np.argwhere((z64 > 0) != (z32 > 0))
    out["first_layer_sign_flips"] = [
        {"sample": int(i), "unit": int(j), "z_float64": float(z64[i, j])} for i, j in flips
    ]
    out["smallest_abs_preactivation"] = float(np.abs(z64).min())
    result = {
        "command": f"python -m experiments.float32_floor --alpha={FLAGS.alpha} "
        f"--round={FLAGS.round} --client={FLAGS.client} --clients={FLAGS.clients} "
        f"--samples_per_client={FLAGS.samples_per_client} --seed={FLAGS.seed}",
        "horizons": audit.HORIZONS, "pooled_rows": n, "eta": eta, **out,
    }  # fmt: skip
    name = f"float32_floor_{FLAGS.alpha}_r{FLAGS.round}_q{FLAGS.client}.json"
    path = os.path.join(FLAGS.output_dir, name)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
