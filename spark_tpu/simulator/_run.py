"""The one simulator loop (docs/architecture.md §2, layer 8): place, compile chunks, evaluate, log, save."""

from __future__ import annotations

import collections
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from spark_tpu import gossip, ntk

from . import _build, _engine, _outputs
from ._config import Config


class DivergenceError(RuntimeError):
    """A client's state became NaN or Inf."""


DIVERGED = (
    "Round {round}: client {client} has a non-finite model (NaN or Inf). The run stopped; the last "
    "good checkpoint (if any) is kept in {workdir}. Lower --lr or check the data."
)


def make_mesh(devices: int, shape: tuple[int, ...] | None = None) -> jax.sharding.Mesh:
    """The client mesh: (devices,) on axis "clients", or a 2-D (rows, cols) mesh.

    On TPU and GPU the device order comes from ``mesh_utils.create_device_mesh``, so mesh
    neighbours are interconnect neighbours; on CPU it is a plain reshape.
    """
    available = jax.devices()
    if devices > len(available):
        raise ValueError(
            f"--devices={devices}: only {len(available)} {available[0].platform} device(s) are "
            "visible. On CPU the launcher emulates --devices before JAX starts; in Python call "
            "jax.config.update('jax_num_cpu_devices', N) first."
        )
    shape = tuple(shape or (devices,))
    chosen = available[:devices]
    if chosen[0].platform in ("tpu", "gpu"):
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, chosen)
    else:
        grid = np.asarray(chosen).reshape(shape)
    names = gossip.mesh_axes(len(shape))
    axis_type = getattr(jax.sharding, "AxisType", None)  # JAX ≥ 0.5; make_mesh's default
    if axis_type is None:
        return jax.sharding.Mesh(grid, names)
    return jax.sharding.Mesh(grid, names, axis_types=(axis_type.Explicit,) * len(shape))


class Simulation:
    """A configured run: the placed state and inputs, and the compiled chunks."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        s = self.setup = _build.build(cfg, cfg.devices)
        self.mesh = make_mesh(cfg.devices, s.plan.mesh_shape)
        logging.info("mesh %s, %d halo exchanges", dict(self.mesh.shape), len(s.plan.shifts))
        c = _engine.client_spec(self.mesh)
        # Position p of the client axis holds client placement[p]; metrics come back by position.
        placement = s.plan.placement
        self._client_order = np.argsort(placement)
        q_pad = s.plan.slots * s.plan.num_devices
        a = s.arrays
        place = lambda t, spec: _engine.place(t, self.mesh, spec)  # noqa: E731
        tables = s.plan.device_tables()
        data = _engine.ClientData(a.x, a.y, a.mask)
        if not np.array_equal(placement, np.arange(q_pad)):
            data = jax.tree.map(lambda v: np.asarray(v)[placement], data)
        self.inputs = _engine.Inputs(
            data=place(data, c),
            client_ids=place(placement.astype(np.int32), c),
            tables=place(tables, c),
            edges=place(s.plan.edges, _engine.R),
            edge_valid=place(s.plan.edge_valid, _engine.R),
            real=place(np.arange(q_pad) < cfg.clients, _engine.R),
            root_key=place(jax.random.key(cfg.seed), _engine.R),
        )
        self.real = self.inputs.real
        lx, ly, fx, fy, fm = _build.test_arrays(s.dataset, cfg.local_eval_samples, cfg.devices)
        self.test = _engine.TestSet(
            place(lx, _engine.R), place(ly, _engine.R), place(fx, c), place(fy, c), place(fm, c)
        )
        stacked = _engine.stack_clients(s.params, q_pad)
        self.state = place(s.algorithm.init(stacked), c)
        self.round = place(jnp.asarray(0, jnp.int32), _engine.R)
        self.faults = _engine.Faults(cfg.link_failure, cfg.client_dropout)
        self._chunks = {}
        self._evaluate = _engine.make_evaluate(s.model, self.mesh, cfg.clients)
        self.compile_seconds = 0.0
        self.taus = collections.Counter()  # horizon histogram so far (checkpointed)

    def chunk(self, length: int):
        """The compiled program for ``length`` rounds (compiled once per distinct length)."""
        if length not in self._chunks:
            t = time.perf_counter()
            fn = _engine.make_chunk(
                self.setup.algorithm, self.setup.plan, self.mesh, self.faults, length
            )
            self._chunks[length] = fn.lower(self.state, self.round, self.inputs).compile()
            self.compile_seconds += time.perf_counter() - t
        return self._chunks[length]

    def advance(self, length: int) -> dict[str, np.ndarray]:
        """Runs ``length`` rounds; returns per-round metrics [length, Q_pad] by client id."""
        fn = self.chunk(length)
        with jax.transfer_guard_host_to_device("disallow"):
            self.state, self.round, metrics = fn(self.state, self.round, self.inputs)
        return jax.tree.map(lambda v: _engine.to_host(v)[:, self._client_order], metrics)

    def evaluate(self) -> tuple[np.ndarray, float, float]:
        local, agg, dist = self._evaluate(
            self.state.params, self.inputs.client_ids, self.real, self.test
        )
        local, agg, dist = (_engine.to_host(v) for v in (local, agg, dist))
        return local[self._client_order][: self.cfg.clients], float(agg), float(dist)


def _round_rows(metrics, start: int, clients: int, seconds: float, bytes_so_far: float):
    rows = []
    length = metrics["train_loss"].shape[0]
    for i in range(length):
        m = {k: v[i, :clients] for k, v in metrics.items()}
        sent = float(np.sum(m["bytes_sent"]))
        bytes_so_far += sent
        loss = m["train_loss"][m["active"]]
        row = {
            "round": start + i + 1,
            "train_loss": float(np.nanmean(loss)) if np.isfinite(loss).any() else math.nan,
            "bytes_per_client": sent / clients,
            "bytes_total": bytes_so_far,
            "seconds": seconds / length,
        }
        for k, v in m.items():
            if k not in ("train_loss", "bytes_sent", "active", "finite"):
                row[k] = float(np.mean(v[m["active"]])) if m["active"].any() else math.nan
        rows.append(row)
    return rows, bytes_so_far


def _check_finite(metrics, start: int, clients: int, workdir: str):
    finite = metrics["finite"][:, :clients]
    if not finite.all():
        i, client = np.argwhere(~finite)[0]
        raise DivergenceError(DIVERGED.format(round=start + i + 1, client=client, workdir=workdir))


SOLVER_FLAGGED = (
    "Round %d: the fixed-step solver (--solver=%s --solver_stride=%d) left its accuracy region "
    "for %d of %d clients (a step's local error estimate above %g: what a step outside the "
    "stability region looks like), so their weight steps are unreliable. Use --solver=adaptive "
    "(the default) or a smaller --solver_stride."
)


def _warn_solver(metrics, start: int, cfg: Config) -> None:
    """Logs a warning for every round in which a fixed-step solve was flagged on some client."""
    if "solver_flagged" not in metrics:
        return
    flagged = metrics["solver_flagged"][:, : cfg.clients] & metrics["active"][:, : cfg.clients]
    for i in np.flatnonzero(flagged.any(axis=1)):
        logging.warning(
            SOLVER_FLAGGED, start + i + 1, cfg.solver, cfg.solver_stride,
            int(flagged[i].sum()), cfg.clients, ntk.FLAG_TOLERANCE,
        )  # fmt: skip


def run(cfg: Config, workdir: str, *, progress: bool = True, hooks=None) -> dict:
    """Runs ``cfg`` and writes metrics.csv, summary.json and plots to ``workdir``.

    Args:
      cfg: the run.
      workdir: output directory (created).
      progress: show a progress bar with the current accuracy.
      hooks: optional object with ``start(sim, rows) -> (rows)`` and ``after_chunk(sim, rows)``
        (used by checkpointing).

    Returns:
      The summary dict also written to summary.json.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    t_setup = time.perf_counter()
    sim = Simulation(cfg)
    setup_seconds = time.perf_counter() - t_setup
    rows: list[dict] = []
    if hooks is not None:
        rows = hooks.start(sim, rows)
    done = len(rows)
    bytes_so_far = rows[-1]["bytes_total"] if rows else 0.0
    taus = sim.taus
    bar = _progress(cfg, done) if progress else None
    t_run = time.perf_counter()
    while done < cfg.rounds:
        length = min(cfg.eval_every, cfg.rounds - done)
        sim.chunk(length)
        t = time.perf_counter()
        metrics = sim.advance(length)
        seconds = time.perf_counter() - t
        _check_finite(metrics, done, cfg.clients, workdir)
        _warn_solver(metrics, done, cfg)
        if "tau" in metrics:
            taus.update(
                metrics["tau"][:, : cfg.clients][metrics["active"][:, : cfg.clients]].tolist()
            )
        new, bytes_so_far = _round_rows(metrics, done, cfg.clients, seconds, bytes_so_far)
        local, agg, dist = sim.evaluate()
        new[-1].update(
            mean_local_acc=float(local.mean()), aggregated_acc=agg, consensus_distance=dist
        )
        rows += new
        done += length
        if hooks is not None:
            hooks.after_chunk(sim, rows)
        line = f"round {done}: aggregated accuracy {agg:.4f}, mean local {local.mean():.4f}"
        if bar is not None:
            bar.update(length)
            bar.set_postfix(agg=f"{agg:.3f}", local=f"{local.mean():.3f}")
            bar.write(line, file=sys.stderr)  # one line per evaluation, above the bar
        logging.info(line)
    if bar is not None:
        bar.close()
    run_seconds = time.perf_counter() - t_run
    return _finish(cfg, sim, rows, workdir, taus, setup_seconds, run_seconds)


def _progress(cfg: Config, done: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.rounds, initial=done, desc=cfg.algorithm, unit="round")


def _first_reaching(rows, target: float):
    for r in rows:
        if r.get("aggregated_acc", 0) >= target:
            return int(r["round"]), r["bytes_total"]
    return None, None


def _finish(cfg, sim, rows, workdir, taus, setup_seconds, run_seconds) -> dict:
    extra = tuple(k for k in rows[-1] if k not in _outputs.COLUMNS)
    writer = jax.process_index() == 0  # process 0 writes; every process computes the summary
    if writer:
        _outputs.write_metrics(os.path.join(workdir, "metrics.csv"), rows, extra)
    r_target, b_target = _first_reaching(rows, cfg.target_accuracy)
    last = rows[-1]
    summary = {
        "config": cfg.to_dict(),
        "hyperparameters": _build.hyperparameters(cfg),
        "partition": sim.setup.partition_summary,
        "topology": sim.setup.topology_summary,
        "devices": f"{cfg.devices} x {jax.devices()[0].device_kind}",
        "mesh": {str(k): int(v) for k, v in sim.mesh.shape.items()},
        "final": {k: last.get(k) for k in _outputs.COLUMNS if k != "seconds"},
        "best_aggregated_acc": max(r.get("aggregated_acc", 0) or 0 for r in rows),
        "target_accuracy": cfg.target_accuracy,
        "rounds_to_target": r_target,
        "bytes_to_target": b_target,
        "horizon_histogram": {str(k): v for k, v in sorted(taus.items())},
        "compile_seconds": sim.compile_seconds,
        "setup_seconds": setup_seconds,
        "run_seconds": run_seconds,
        "seconds_per_round": float(np.mean([r["seconds"] for r in rows])),
    }
    if writer:
        _outputs.write_json(os.path.join(workdir, "summary.json"), summary)
        _outputs.plot_accuracy(
            os.path.join(workdir, "accuracy.png"),
            rows,
            f"{cfg.algorithm} on {cfg.dataset}, {cfg.clients} clients, "
            + (f"partition {os.path.basename(cfg.partition_file)}" if cfg.partition == "file"
               else f"{cfg.partition} α={cfg.alpha}"),
        )
    return summary
