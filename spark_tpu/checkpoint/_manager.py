"""Orbax checkpoints of whole runs, and ``--resume`` (docs/style.md §13, issue 7).

A checkpoint at round k holds everything needed to continue bit-identically:

- ``state`` (Orbax ``StandardSave``): every client's algorithm state as one sharded pytree (models,
  SPARK's momentum buffers, any optimizer state), the round counter, and the root key's data;
- ``meta`` (JSON): the run's flags, the metric history (one row per round so far) and the
  horizon histogram.

Per-round keys are ``fold_in(root_key, round)`` and SPARK's stage position is a function of the
round, so nothing else is needed. Checkpoints are taken at the end of a compiled chunk of
``--eval_every`` rounds: ``--checkpoint_every`` must be a multiple of ``--eval_every`` (or 0: only
at the end), else the run is rejected before it starts (`check_flags`). The last round is always
saved. Saves are asynchronous; ``close`` waits for the last one.

A resume restores the latest readable checkpoint against an abstract target built from the
freshly configured simulation. A corrupt or truncated one is reported, moved to ``ckpt_corrupt/``
and the previous one is used; flags that change what the saved state means stop the run.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from spark_tpu.simulator import Config, DivergenceError, _outputs, run

FORMAT = 1
# Flags that change what the saved state means (its structure, shapes, or whose data a client
# holds): a resume must not change them.
STATE_FLAGS = (
    "algorithm", "clients", "model", "dataset", "partition", "alpha", "shards_per_client",
    "samples_per_client", "seed", "devices", "spark_stages", "spark_options",
    # which client sits where on the mesh (a torus may tile a 2-D mesh): the state's row order
    "mesh", "topology", "torus_shape",
)
# Flags that change neither the state nor the training trajectory.
FREE_FLAGS = (
    "data_dir", "idx_dir", "rounds", "eval_every", "local_eval_samples", "target_accuracy",
    "checkpoint_every", "keep_checkpoints",
)

MISMATCH = (
    "--resume: the checkpoint at round {step} in {dir} was written with different flags that "
    "change what the saved state means: {diffs}. Resume with the original values, or start a "
    "fresh run in another --output_dir."
)
TRAJECTORY = (
    "--resume: flags differ from the checkpoint's ({diffs}); the saved state is compatible, so "
    "the run continues, but it will not reproduce an uninterrupted run."
)
NOT_MULTIPLE = (
    "--checkpoint_every={every} with --eval_every={chunk}: checkpoints are taken at the end of a "
    "compiled chunk of --eval_every rounds, so --checkpoint_every must be a multiple of "
    "--eval_every (e.g. {suggest}), or 0 to save only at the end."
)
EXISTING = (
    "--output_dir={dir} already holds checkpoints (rounds {steps}); pass --resume to continue "
    "from round {latest}, or choose another --output_dir."
)
FRESH = "--resume: no checkpoint in {dir}; starting a fresh run."
CORRUPT = (
    "--resume: the checkpoint at round {step} in {dir} is corrupt or truncated ({error}); moved "
    "it to {moved}; trying the previous one."
)
NONE_READABLE = (
    "--resume: no readable checkpoint in {dir}: every one (rounds {steps}) was corrupt and was "
    "moved to {moved}. Start a fresh run in another --output_dir."
)
PAST_END = (
    "--rounds={rounds}: the checkpoint in {dir} is already at round {step}; pass --rounds ≥ "
    "{step} to continue it."
)
DIVERGED_CHECKPOINT = " Last good checkpoint: round {step} in {dir}; --resume continues from it."


class ResumeError(ValueError):
    """A resume that cannot continue the checkpointed run (not a corrupt checkpoint)."""


def check_flags(cfg: Config) -> None:
    """Validates the checkpoint flags (raises ``ValueError`` naming the flag)."""
    every, chunk = cfg.checkpoint_every, cfg.eval_every
    if every < 0:
        raise ValueError(f"--checkpoint_every={every}: must be ≥ 0 (0 saves only at the end).")
    if cfg.keep_checkpoints < 1:
        raise ValueError(f"--keep_checkpoints={cfg.keep_checkpoints}: must be ≥ 1.")
    if every % chunk:
        suggest = f"--checkpoint_every={max(chunk, every - every % chunk)}"
        raise ValueError(NOT_MULTIPLE.format(every=every, chunk=chunk, suggest=suggest))


def _canonical(value):
    """JSON round trip, so tuples and lists compare equal."""
    return json.loads(json.dumps(value))


def flag_differences(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """(state-changing, trajectory-changing) differences between two configs, as text."""
    state, trajectory = [], []
    for key in sorted(set(saved) | set(now)):
        if key in FREE_FLAGS and not (key == "rounds" and now.get("algorithm") == "spark"):
            continue  # SPARK's last stage is annealed up to --rounds.
        a, b = _canonical(saved.get(key)), _canonical(now.get(key))
        if a != b:
            (state if key in STATE_FLAGS else trajectory).append(f"--{key}: saved {a!r}, now {b!r}")
    return state, trajectory


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointHooks:
    """``simulator.run`` hooks: restore at start (``--resume``), save every K rounds.

    Args:
      cfg: the run.
      workdir: the output directory; checkpoints go to ``workdir/ckpt``.
      resume: continue from the latest readable checkpoint (a fresh start if there is none).
    """

    def __init__(self, cfg: Config, workdir: str, resume: bool):
        check_flags(cfg)
        self.cfg, self.resume = cfg, resume
        self.workdir = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))
        self.directory = self.workdir / "ckpt"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_checkpoints, enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.restored_from: int | None = None

    def _payload(self, sim) -> dict:
        return {
            "state": sim.state, "round": sim.round,
            "root_key": jax.random.key_data(sim.inputs.root_key),
        }

    def start(self, sim, rows: list[dict]) -> list[dict]:
        """Restores the latest readable checkpoint into ``sim``; returns the metric history."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not self.resume:
            if steps:
                raise ValueError(EXISTING.format(
                    dir=self.workdir, steps=sorted(steps), latest=steps[0]))
            return rows
        if not steps:
            logging.warning(FRESH.format(dir=self.workdir))
            return rows
        moved = self.workdir / "ckpt_corrupt"
        for step in steps:
            try:
                restored, meta = self._restore(sim, step)
            except ResumeError:
                raise
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                self._move_aside(step, moved)
                logging.warning(CORRUPT.format(
                    step=step, dir=self.directory, error=error, moved=moved / str(step)))
                continue
            return self._install(sim, step, restored, meta)
        raise ResumeError(NONE_READABLE.format(dir=self.directory, steps=sorted(steps), moved=moved))

    def _restore(self, sim, step: int):
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
        state_diffs, trajectory_diffs = flag_differences(meta["config"], self.cfg.to_dict())
        if state_diffs:
            raise ResumeError(MISMATCH.format(
                step=step, dir=self.directory, diffs="; ".join(state_diffs)))
        if trajectory_diffs:
            logging.warning(TRAJECTORY.format(diffs="; ".join(trajectory_diffs)))
        if step > self.cfg.rounds:
            raise ResumeError(PAST_END.format(rounds=self.cfg.rounds, dir=self.workdir, step=step))
        target = _abstract(self._payload(sim))
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )["state"]
        if int(restored["round"]) != step or len(meta["rows"]) != step:
            raise ValueError(
                f"round counter {int(restored['round'])} and {len(meta['rows'])} metric rows "
                f"do not match the step {step}"
            )
        return restored, meta

    def _install(self, sim, step: int, restored: dict, meta: dict) -> list[dict]:
        saved_key = np.asarray(restored["root_key"])
        if not np.array_equal(saved_key, np.asarray(jax.random.key_data(sim.inputs.root_key))):
            raise ResumeError(f"--resume: the checkpoint at round {step} has another root key.")
        sim.state, sim.round = restored["state"], restored["round"]
        sim.taus.clear()
        sim.taus.update({k: v for k, v in meta["taus"]})
        self.restored_from = step
        rows = meta["rows"]
        self._write_metrics(rows)
        logging.warning("--resume: continuing from the checkpoint at round %d in %s.", step,
                        self.directory)
        return rows

    def _move_aside(self, step: int, moved: epath.Path) -> None:
        if jax.process_index() == 0:
            moved.mkdir(parents=True, exist_ok=True)
            target = moved / str(step)
            if target.exists():
                target.rmtree()
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"spark_tpu_ckpt_move_{step}")
        self.manager.reload()

    def _write_metrics(self, rows: list[dict]) -> None:
        if jax.process_index() == 0 and rows:
            extra = tuple(k for k in rows[-1] if k not in _outputs.COLUMNS)
            _outputs.write_metrics(os.fspath(self.workdir / "metrics.csv"), rows, extra)

    def after_chunk(self, sim, rows: list[dict]) -> None:
        """Writes metrics.csv; saves at multiples of ``checkpoint_every`` and at the last round."""
        done = int(rows[-1]["round"])
        self._write_metrics(rows)
        every = self.cfg.checkpoint_every
        if (every and done % every == 0) or done == self.cfg.rounds:
            taus = sorted(sim.taus.items())
            meta = {"format": FORMAT, "config": self.cfg.to_dict(), "rows": rows, "taus": taus}
            self.manager.save(done, args=ocp.args.Composite(
                state=ocp.args.StandardSave(self._payload(sim)), meta=ocp.args.JsonSave(meta)))

    def latest_step(self) -> int | None:
        """The newest committed checkpoint's round (after pending saves finish)."""
        self.manager.wait_until_finished()
        return self.manager.latest_step()

    def close(self) -> None:
        """Waits for the pending save and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def run_with_checkpoints(
    cfg: Config, workdir: str, *, resume: bool = False, progress: bool = True
) -> dict:
    """``simulator.run`` with Orbax checkpoints every ``cfg.checkpoint_every`` rounds.

    Args:
      cfg: the run.
      workdir: output directory (metrics.csv, summary.json, plots, ``ckpt/``).
      resume: continue from the latest readable checkpoint in ``workdir``.
      progress: show a progress bar.

    Returns:
      The run's summary (as ``simulator.run``).

    Raises:
      ValueError: a bad checkpoint flag, an output directory that already holds checkpoints
        without ``resume``, or a resume that cannot continue (`ResumeError`).
      DivergenceError: a client's state became non-finite; the message names the round, the
        client and the last good checkpoint.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    hooks = CheckpointHooks(cfg, workdir, resume)
    try:
        return run(cfg, workdir, progress=progress, hooks=hooks)
    except DivergenceError as e:
        step = hooks.latest_step()
        if step is None:
            raise
        raise DivergenceError(
            str(e) + DIVERGED_CHECKPOINT.format(step=step, dir=hooks.directory)
        ) from None
    finally:
        hooks.close()
