"""Timing of the learning-dynamics prediction (docs/dynamics.md) at the seed's size, width 256 and 4096.

Command (from the repo root):

    python -m benchmarks.bench_dynamics              # widths 256 and 4096
    python -m benchmarks.bench_dynamics --widths=256
    python -m benchmarks.bench_dynamics --small       # width 256 only

Expected wall time on the 2-core dev box: about 20 s. Target: the Q = 8, D = 200, width-256
prediction (linearize + discrete + flow for DGD, ATC and CTA, 200 iterations) under 5 s; measured
about 0.9 s cold and 0.4 s warm (width 4096: about 1.8 s cold, 1.2 s warm).

For each width it times, in one process: ``linearize`` (Jacobians at θ_0, K = J Jᵀ, eigh) cold
(including JAX compilation) and warm (min and median of 3; the 2-core box is shared), then
``predict_linearized`` per algorithm (the MH ring matrix is symmetric, so DGD takes one eigh of A
and ATC/CTA one eigh after the similarity transform), and as the baseline the real training run
(`dynamics.simulate`, cold) that the prediction replaces. It also reports the size of the
weight-space state Q·P of seed eq. 12 and of the reduced state Q·r actually exponentiated.
Writes benchmarks/results/bench_dynamics.json (bench_dynamics_small.json with --small).
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from experiments.p2p_dynamics import moons, ntk_mlp
from spark_tpu import dynamics, topology

WIDTHS = flags.DEFINE_list("widths", ["256", "4096"], "Hidden widths to time.")
SMALL = flags.DEFINE_bool("small", False, "Width 256 only (overrides --widths).")
OUTPUT_DIR = flags.DEFINE_string("output_dir", "benchmarks/results", "Where the JSON goes.")

Q, D, STEPS, ETA, REPEATS = 8, 200, 200, 1e-4, 3


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _repeat(fn, *args, **kwargs) -> tuple[object, float, float]:
    """The result, and the min and median wall time over REPEATS calls (the box is shared)."""
    times = []
    for _ in range(REPEATS):
        out, secs = _timed(fn, *args, **kwargs)
        times.append(secs)
    return out, min(times), float(np.median(times))


def bench_width(width: int) -> dict:
    x, y = moons(Q, D, seed=0, label_sorted=False)
    f, params = ntk_mlp(width, jax.random.PRNGKey(0))
    w = topology.metropolis_hastings(topology.ring(Q))
    p = sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(params))
    _, cold = _timed(dynamics.linearize, f, params, x)
    lin, best, median = _repeat(dynamics.linearize, f, params, x)
    row = {
        "params_P": p,
        "weight_space_state_QP": Q * p,
        "rank_r": lin.rank,
        "reduced_state_Qr": Q * lin.rank,
        "linearize_cold_s": cold,
        "linearize_warm_min_s": best,
        "linearize_warm_median_s": median,
    }
    total_min, total_median = best, median
    for alg in ("dgd", "atc", "cta"):
        kw = {"algorithm": alg, "eta": ETA, "steps": STEPS}
        _, best, median = _repeat(dynamics.predict_linearized, lin, y, w, **kw)
        row[f"predict_{alg}_min_s"], row[f"predict_{alg}_median_s"] = best, median
        total_min, total_median = total_min + best, total_median + median
    row["prediction_all3_warm_min_s"] = total_min
    row["prediction_all3_warm_median_s"] = total_median
    row["prediction_all3_cold_s"] = total_median - row["linearize_warm_median_s"] + cold
    _, row["baseline_simulate_dgd_s"] = _timed(
        dynamics.simulate, f, params, (x, y), w, algorithm="dgd", eta=ETA, steps=STEPS
    )
    return row


def main(argv: list[str]) -> None:
    del argv
    results = {
        "setting": {
            "clients": Q,
            "samples": D,
            "steps": STEPS,
            "eta": ETA,
            "graph": "ring",
            "mixing": "metropolis_hastings",
            "machine": f"{os.cpu_count()} CPU cores",
        },
        "widths": {},
    }
    widths = ["256"] if SMALL.value else WIDTHS.value
    for width in (int(v) for v in widths):
        row = bench_width(width)
        results["widths"][str(width)] = row
        print(
            f"width {width}: "
            + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    os.makedirs(OUTPUT_DIR.value, exist_ok=True)
    name = "bench_dynamics" + ("_small" if SMALL.value else "") + ".json"
    with open(os.path.join(OUTPUT_DIR.value, name), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # an entry point may set global config (docs/style.md §14)
    app.run(main)
