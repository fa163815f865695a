"""The projection table's bytes, recounted by hand from the protocol for the runs of
``results/projection/projection.json`` (which recorded the bytes before the choice of τ* was counted, and
before the Nesterov look-ahead's third model per edge was).

    python -m experiments.projection_bytes     # seconds; writes results/projection/projection_bytes.{json,md}

No training: the bytes of a run depend only on its setting. Every client has d = 5 live links per
round (5-regular graph, no faults), |T| = 5 horizons, P = 79,510, C = 10, and n_q samples (the
run's partition, recomputed here from its seed). Per client and round, per live link:

- NTK-DFL: 2 models (w, and w̄ for the Jacobian), the Jacobian n·C·P, labels n, logits n·C, and for
  τ* the |T| candidate steps out and |T| losses back: |T|·(P + 1);
- SPARK, in rounds with λ > 0 and μ > 0 (Nesterov, averaged teacher): w̄ beside u (P) and the
  teacher logits at w̄ (n·C);
- projected Jacobians: Σ_l k_l in place of P per sample and class; the exact weight step adds
  |T| residual blocks out (|T|·n_j·C for neighbour j) and |T| returned Jᵀr (|T|·P).

Averaged over clients on a regular graph, Σ_j n_j over a client's neighbours averages to d·n̄, so
the mean per client is the formula at n̄. The column "MB with linearized τ*" is the count under
``--tau_selection=linearized`` (no τ* traffic; refused with the exact projected weight step, whose
Δw_τ the client cannot apply to J·P alone). As a check, the same formula without the τ* traffic
and the third model (what the runs counted) must reproduce the recorded bytes.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app

from experiments import _grid

F, DEG = 4, 5
OUT_DIR = _grid.results_dir("projection")  # beside the runs it recounts


def per_round(cfg: dict, n: float, p: int, c: int, sizes: int | None, *, old: bool) -> list[float]:
    """Mean bytes per client for each round of a run (``old``: as the runs counted them)."""
    from spark_tpu import algorithms

    opts = dict(cfg["spark_options"])
    h = len(cfg["horizons"])
    j = p if sizes is None else sizes
    link = 2 * p * F + n * (c * (j + 1) * F + F)
    if not old:
        link += h * (p + 1) * F  # τ*: candidate steps out, losses back
    if sizes is not None and opts.get("weight_step", "exact") == "exact":
        link += h * (n * c + p) * F  # residual blocks out, Jᵀr back
    out = []
    schedule = algorithms.parse_stages(cfg["spark_stages"] or algorithms.DEFAULT_SPARK_STAGES,
                                       cfg["rounds"])
    for r in range(cfg["rounds"]):
        extra = 0.0
        if cfg["algorithm"] == "spark":
            hp = {k: float(v) for k, v in schedule(r).items()}
            if hp["lam"] > 0 and hp["mu"] > 0:  # Nesterov, averaged teacher (the defaults)
                extra = n * c * F + (0 if old else p * F)
        out.append(DEG * (link + extra))
    return out


def main(_):
    import jax

    from spark_tpu import data, models
    from spark_tpu.ntk._projection import projection_sizes

    runs = json.load(open(os.path.join(OUT_DIR, "projection.json")))
    cfg0 = next(iter(runs.values()))["config"]
    ds = data.load_dataset(cfg0["dataset"])
    part = data.partition(
        ds.train_y, cfg0["clients"], method=cfg0["partition"], alpha=cfg0["alpha"],
        samples_per_client=cfg0["samples_per_client"], seed=cfg0["seed"],
    )
    arrays = data.federated_arrays(ds, part)
    n = float(np.asarray(arrays.mask).sum(axis=1).mean())
    net = models.make_model(cfg0["model"], ds.input_shape, ds.num_classes, key=jax.random.key(0))
    p = sum(int(x.size) for x in jax.tree.leaves(net) if hasattr(x, "size"))
    c = ds.num_classes
    out = {"mean_samples_per_client": n, "num_params": p, "runs": {}}
    for label, res in runs.items():
        cfg = res["config"]
        opts = dict(cfg["spark_options"])
        sizes = None
        if opts.get("projection", "none") != "none":
            k, kind = int(opts["projection_dim"]), opts["projection"]
            sizes = sum(projection_sizes(net, k=k, kind=kind))
        recorded = res["curve"][-1]["bytes_total"] / (len(res["curve"]) * cfg["clients"])
        old = float(np.mean(per_round(cfg, n, p, c, sizes, old=True)))
        assert abs(old - recorded) <= 1e-5 * recorded, (label, old, recorded)  # float32 sums
        new = float(np.mean(per_round(cfg, n, p, c, sizes, old=False)))
        # --tau_selection=linearized sends nothing for τ*; refused with the exact projected step
        exact_projected = sizes is not None and opts.get("weight_step", "exact") == "exact"
        linearized = None if exact_projected else new - DEG * len(cfg["horizons"]) * (p + 1) * F
        out["runs"][label] = {
            "recorded_mb": recorded / 1e6, "mb": new / 1e6,
            "mb_linearized_tau": None if linearized is None else linearized / 1e6,
            "final_acc": res["curve"][-1]["aggregated_acc"],
        }
    base = out["runs"]["ntk_dfl"]["mb"]
    lines = ["| run | MB per client per round (recorded) | MB counted now | reduction vs NTK-DFL "
             "| MB with linearized τ* | final agg. acc |", "|---|---|---|---|---|---|"]
    for label, r in out["runs"].items():
        r["reduction"] = 1 - r["mb"] / base
        lin = "—" if r["mb_linearized_tau"] is None else f"{r['mb_linearized_tau']:.2f}"
        lines.append(f"| {label} | {r['recorded_mb']:.2f} | {r['mb']:.2f} | "
                     f"{100 * r['reduction']:.1f}% | {lin} | {r['final_acc']:.4f} |")
    text = "\n".join(lines)
    print(f"n̄ = {n:.3f} samples per client, P = {p}\n" + text)
    path = os.path.join(OUT_DIR, "projection_bytes")
    with open(path + ".json", "w") as f:
        json.dump(out, f, indent=1)
    with open(path + ".md", "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
