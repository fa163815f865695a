"""The one simulator loop (docs/architecture.md §2, layer 8): place, compile chunks, evaluate, log, save."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import sys
import time
from typing import Any

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
    "Round {round}: client {client} has a non-finite model (NaN or Inf). The run stopped{kept}. "
    "Lower --lr or check the data."
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

    def __init__(self, cfg: Config, custom: _build.Custom = _build.Custom()):
        self.cfg = cfg
        s = self.setup = _build.build(cfg, cfg.devices, custom)
        self.mesh = make_mesh(cfg.devices, s.plan.mesh_shape)
        logging.info("mesh %s, %d halo exchanges", dict(self.mesh.shape), len(s.plan.shifts))
        if cfg.solver == "auto" and cfg.algorithm in ("ntk_dfl", "spark"):
            rows = (s.plan.max_degree + 1) * int(s.arrays.x.shape[1])
            logging.info("--solver=auto: the %s solver on pooled neighbourhoods of %d rows "
                         "(exponential from %d rows, adaptive below)",
                         ntk.resolve_solver("auto", rows), rows, ntk.AUTO_EXPONENTIAL_ROWS)
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

    def client_state(self):
        """The algorithm state on the host, every leaf [clients, ...] in client-id order."""
        order = self._client_order[: self.cfg.clients]
        return jax.tree.map(lambda v: _engine.to_host(v)[order], self.state)


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
        kept = f"; the last good checkpoint (if any) is kept in {workdir}" if workdir else ""
        raise DivergenceError(DIVERGED.format(round=start + i + 1, client=client, kept=kept))


SOLVER_FLAGGED = (
    "Round %d: the fixed-step solver (--solver=%s --solver_stride=%d) left its accuracy region "
    "for %d of %d clients (a step's local error estimate above %g: what a step outside the "
    "stability region looks like), so their weight steps are unreliable. Use --solver=auto "
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


class Callback:
    """Hooks into the simulator loop (`simulate`); override any of them.

    ``start`` may return a restored metric history (a checkpoint resume); ``after_chunk`` runs
    after every compiled chunk of ``eval_every`` rounds and its evaluation; ``finish`` once with
    the `History`; ``close`` always, also when the run fails.
    """

    def start(self, sim: Simulation, rows: list[dict]) -> list[dict]:
        return rows

    def after_chunk(self, sim: Simulation, rows: list[dict]) -> None:
        pass

    def finish(self, sim: Simulation, history: "History") -> None:
        pass

    def close(self) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar over rounds, with one line per evaluation above it."""

    def start(self, sim, rows):
        from tqdm.auto import tqdm  # noqa: PLC0415

        self._bar = tqdm(total=sim.cfg.rounds, initial=len(rows), desc=sim.cfg.algorithm,
                         unit="round")
        self._done = len(rows)
        return rows

    def after_chunk(self, sim, rows):
        last = rows[-1]
        self._bar.update(int(last["round"]) - self._done)
        self._done = int(last["round"])
        agg, local = last["aggregated_acc"], last["mean_local_acc"]
        self._bar.set_postfix(agg=f"{agg:.3f}", local=f"{local:.3f}")
        self._bar.write(_eval_line(last), file=sys.stderr)  # one line per evaluation

    def close(self):
        if getattr(self, "_bar", None) is not None:
            self._bar.close()


class WriteOutputs(Callback):
    """metrics.csv, summary.json and accuracy.png in ``workdir`` (process 0 writes)."""

    def __init__(self, workdir: str):
        self.workdir = workdir

    def finish(self, sim, history):
        if jax.process_index() != 0:
            return
        cfg, rows = sim.cfg, list(history.rows)
        extra = tuple(k for k in rows[-1] if k not in _outputs.COLUMNS)
        _outputs.write_metrics(os.path.join(self.workdir, "metrics.csv"), rows, extra)
        _outputs.write_json(os.path.join(self.workdir, "summary.json"), history.summary)
        _outputs.plot_accuracy(
            os.path.join(self.workdir, "accuracy.png"), rows,
            f"{cfg.algorithm} on {cfg.dataset}, {cfg.clients} clients, "
            + (f"partition {os.path.basename(cfg.partition_file)}" if cfg.partition == "file"
               else f"{cfg.partition} α={cfg.alpha}"),
        )


@dataclasses.dataclass(frozen=True)
class History:
    """What a simulation returns.

    Attributes:
      metrics: per-round arrays [rounds] by name (``train_loss``, ``bytes_total``,
        ``aggregated_acc``, ...); evaluation metrics are NaN in rounds without an evaluation.
      summary: final values, rounds and bytes to the target accuracy, timings, the configuration
        (what summary.json holds).
      state: the final algorithm state on the host, every leaf [clients, ...] by client id
        (``state.params`` are the client models).
      rows: the same metrics as one dict per round (what metrics.csv holds).
    """

    metrics: dict[str, np.ndarray]
    summary: dict
    state: Any
    rows: tuple[dict, ...]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    @classmethod
    def from_rows(cls, rows: list[dict], summary: dict, state) -> "History":
        names = list(dict.fromkeys(k for r in rows for k in r))
        metrics = {k: np.asarray([r.get(k, math.nan) for r in rows], np.float64) for k in names}
        metrics["round"] = metrics["round"].astype(np.int64)
        return cls(metrics=metrics, summary=summary, state=state, rows=tuple(rows))


def _eval_line(row: dict) -> str:
    return (f"round {int(row['round'])}: aggregated accuracy {row['aggregated_acc']:.4f}, "
            f"mean local {row['mean_local_acc']:.4f}")


def simulate_config(
    cfg: Config, custom: _build.Custom = _build.Custom(), callbacks=(), workdir: str | None = None,
) -> History:
    """The one simulator loop: builds ``cfg`` (with the user's objects in ``custom``), then runs
    compiled chunks of ``eval_every`` rounds, evaluates after each and calls the callbacks.

    ``workdir`` only names where checkpoints are kept in a divergence message.
    """
    try:
        t_setup = time.perf_counter()
        sim = Simulation(cfg, custom)
        setup_seconds = time.perf_counter() - t_setup
        rows: list[dict] = []
        for cb in callbacks:
            rows = cb.start(sim, rows)
        done = len(rows)
        bytes_so_far = rows[-1]["bytes_total"] if rows else 0.0
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
                active = metrics["active"][:, : cfg.clients]
                sim.taus.update(metrics["tau"][:, : cfg.clients][active].tolist())
            new, bytes_so_far = _round_rows(metrics, done, cfg.clients, seconds, bytes_so_far)
            local, agg, dist = sim.evaluate()
            new[-1].update(
                mean_local_acc=float(local.mean()), aggregated_acc=agg, consensus_distance=dist
            )
            rows += new
            done += length
            for cb in callbacks:
                cb.after_chunk(sim, rows)
            logging.info(_eval_line(rows[-1]))
        run_seconds = time.perf_counter() - t_run
        summary = _summary(cfg, sim, rows, sim.taus, setup_seconds, run_seconds)
        history = History.from_rows(rows, summary, sim.client_state())
        for cb in callbacks:
            cb.finish(sim, history)
        return history
    finally:
        for cb in callbacks:
            cb.close()


def run(cfg: Config, workdir: str, *, progress: bool = True, hooks=None) -> dict:
    """Runs ``cfg`` and writes metrics.csv, summary.json and plots to ``workdir``.

    Args:
      cfg: the run.
      workdir: output directory (created).
      progress: show a progress bar with the current accuracy.
      hooks: an optional `Callback` run first (checkpointing: it may restore the history).

    Returns:
      The summary dict also written to summary.json.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    callbacks = [cb for cb in (hooks, ProgressBar() if progress else None) if cb is not None]
    callbacks.append(WriteOutputs(workdir))
    return simulate_config(cfg, callbacks=callbacks, workdir=workdir).summary


def _first_reaching(rows, target: float):
    for r in rows:
        if r.get("aggregated_acc", 0) >= target:
            return int(r["round"]), r["bytes_total"]
    return None, None


def _summary(cfg, sim, rows, taus, setup_seconds, run_seconds) -> dict:
    r_target, b_target = _first_reaching(rows, cfg.target_accuracy)
    last = rows[-1]
    return {
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
