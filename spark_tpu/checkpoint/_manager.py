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
saved. Saves are asynchronous; ``close`` waits for the last one. Everything handed to a save is a
snapshot taken when the save is requested: the metadata is a deep copy (the run keeps appending
metric rows while the write is pending) and the arrays are immutable ``jax.Array``s that Orbax
copies to the host before ``save`` returns (a buffer the copy still references is not donated).

``ckpt/`` is created by the first save, not before: a run stopped by a bad flag leaves nothing.

A resume restores the latest readable checkpoint against an abstract target built from the
freshly configured simulation. A corrupt or truncated one is reported, moved to ``ckpt_corrupt/``
and the previous one is used; a checkpoint counts as corrupt only when it cannot be read or its
parts disagree with each other (the step, the round counter and the metric rows). Flags that
change what the saved state means stop the run.
"""

from __future__ import annotations

import copy
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from spark_tpu import algorithms
from spark_tpu.simulator import Callback, Config, DivergenceError, _outputs, run

FORMAT = 1
# Flags that change what the saved state means (its structure, shapes, or whose data a client
# holds): a resume must not change them.
STATE_FLAGS = (
    "algorithm", "clients", "model", "dataset", "partition", "partition_file", "alpha",
    "shards_per_client", "samples_per_client", "seed", "devices", "spark_stages", "spark_options",
    "algorithm_options",
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
    "from round {latest}, --overwrite to start afresh, or choose another --output_dir."
)
FINISHED = (
    "--output_dir={dir} holds a finished run ({rounds} rounds, checkpoint at round {latest}); "
    "pass --overwrite to replace it, --resume with --rounds > {latest} to extend it, or choose "
    "another --output_dir."
)
BOTH = "--resume and --overwrite: choose one (--overwrite deletes the checkpoints --resume needs)."
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


class InconsistentCheckpoint(ValueError):
    """A checkpoint whose parts, read back after the write completed, disagree."""


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
    state_keys, trajectory_keys = set(STATE_FLAGS), set()
    if now.get("algorithm") in algorithms.ALGORITHMS:  # and what its spec says about its options
        spec = algorithms.get(now["algorithm"])
        state_keys |= set(spec.state_options)
        trajectory_keys |= set(spec.trajectory_options)  # e.g. SPARK: anneals up to --rounds
    for key in sorted(set(saved) | set(now)):
        if key in FREE_FLAGS and key not in trajectory_keys:
            continue
        a, b = _canonical(saved.get(key)), _canonical(now.get(key))
        if a != b:
            (state if key in state_keys else trajectory).append(f"--{key}: saved {a!r}, now {b!r}")
    return state, trajectory


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def snapshot_meta(cfg: Config, rows: list[dict], taus) -> dict:
    """The checkpoint's JSON metadata as a deep copy: nothing in it is shared with the live run,
    so rows appended while an asynchronous write is pending cannot reach the file."""
    meta = {"format": FORMAT, "config": cfg.to_dict(), "rows": rows, "taus": sorted(taus.items())}
    return copy.deepcopy(meta)


def check_consistent(step: int, round_counter: int, meta: dict) -> None:
    """Raises `InconsistentCheckpoint` naming what disagrees with ``step``."""
    problems = []
    if round_counter != step:
        problems.append(f"the saved round counter is {round_counter}")
    rounds = [int(r.get("round", -1)) for r in meta.get("rows", [])]
    if rounds != list(range(1, step + 1)):
        held = f"rounds {rounds[0]}–{rounds[-1]}" if rounds else "none"
        problems.append(f"the metadata holds {len(rounds)} metric rows ({held}), expected rounds "
                        f"1–{step}")
    if problems:
        raise InconsistentCheckpoint(f"inconsistent with its step {step}: " + "; ".join(problems))


def _path(workdir: str) -> epath.Path:
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def _steps_on_disk(directory: epath.Path) -> list[int]:
    """Committed steps (Orbax renames a checkpoint to its bare step number on commit)."""
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _refuse_existing(workdir: epath.Path) -> None:
    """Raises if ``workdir/ckpt`` holds checkpoints, saying whether their run finished."""
    directory = workdir / "ckpt"
    steps = _steps_on_disk(directory)
    if not steps:
        return
    latest = steps[-1]
    try:
        saved = json.loads((directory / str(latest) / "meta" / "metadata").read_text())
        rounds = int(saved["config"]["rounds"])
    except Exception:  # noqa: BLE001 - an unreadable one is reported as unfinished
        rounds = None
    if rounds is not None and latest >= rounds:
        raise ValueError(FINISHED.format(dir=workdir, rounds=rounds, latest=latest))
    raise ValueError(EXISTING.format(dir=workdir, steps=steps, latest=latest))


class CheckpointHooks(Callback):
    """``simulator.run`` hooks: restore at start (``--resume``), save every K rounds.

    Constructing it checks everything the flags and the output directory alone decide (bad
    checkpoint flags, an output directory that already holds checkpoints), so a run fails before
    its data loads.

    Args:
      cfg: the run.
      workdir: the output directory; checkpoints go to ``workdir/ckpt``.
      resume: continue from the latest readable checkpoint (a fresh start if there is none).
      overwrite: delete the checkpoints of an earlier run in ``workdir`` and start afresh.
    """

    def __init__(self, cfg: Config, workdir: str, resume: bool, overwrite: bool = False):
        self.check_output_dir(cfg, workdir, resume, overwrite)
        self.cfg, self.resume = cfg, resume
        self.workdir = _path(workdir)
        self.directory = self.workdir / "ckpt"
        self._manager: ocp.CheckpointManager | None = None
        self.restored_from: int | None = None
        if overwrite:
            self._delete_previous()

    @staticmethod
    def check_output_dir(cfg: Config, workdir: str, resume: bool, overwrite: bool) -> None:
        """The checks the flags and the output directory decide (writes nothing).

        Raises:
          ValueError: a bad checkpoint flag, --resume with --overwrite, or a fresh run into a
            directory that holds checkpoints (saying whether that run finished).
        """
        check_flags(cfg)
        if resume and overwrite:
            raise ValueError(BOTH)
        if not (resume or overwrite):
            _refuse_existing(_path(workdir))

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The Orbax manager, created (with ``ckpt/``) on first use."""
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.cfg.keep_checkpoints, enable_async_checkpointing=True,
                cleanup_tmp_directories=True,
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def _steps_on_disk(self) -> list[int]:
        return _steps_on_disk(self.directory)

    def _delete_previous(self) -> None:
        if jax.process_index() == 0:
            for name in ("ckpt", "ckpt_corrupt"):
                if (self.workdir / name).exists():
                    (self.workdir / name).rmtree()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("spark_tpu_ckpt_overwrite")

    def _payload(self, sim) -> dict:
        return {
            "state": sim.state, "round": sim.round,
            "root_key": jax.random.key_data(sim.inputs.root_key),
        }

    def start(self, sim, rows: list[dict]) -> list[dict]:
        """Restores the latest readable checkpoint into ``sim``; returns the metric history."""
        if not self.resume:
            return rows
        if not self._steps_on_disk():
            logging.warning(FRESH.format(dir=self.workdir))
            return rows
        steps = sorted(self.manager.all_steps(), reverse=True)
        moved = self.workdir / "ckpt_corrupt"
        for step in steps:
            try:
                restored, meta = self._restore(sim, step)
            except ResumeError:
                raise
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
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
        check_consistent(step, int(restored["round"]), meta)
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
        """Writes metrics.csv; saves at multiples of ``checkpoint_every`` and at the last round.

        The save is asynchronous and ``rows`` keeps growing after this returns, so the metadata
        handed to Orbax is a snapshot (`snapshot_meta`), never the live list.
        """
        done = int(rows[-1]["round"])
        self._write_metrics(rows)
        every = self.cfg.checkpoint_every
        if (every and done % every == 0) or done == self.cfg.rounds:
            meta = snapshot_meta(self.cfg, rows, sim.taus)
            self.manager.save(done, args=ocp.args.Composite(
                state=ocp.args.StandardSave(self._payload(sim)), meta=ocp.args.JsonSave(meta)))

    def latest_step(self) -> int | None:
        """The newest committed checkpoint's round (after pending saves finish)."""
        if self._manager is None:
            return None
        self.manager.wait_until_finished()
        return self.manager.latest_step()

    def close(self) -> None:
        """Waits for the pending save and releases the manager."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()


def run_with_checkpoints(
    cfg: Config, workdir: str, *, resume: bool = False, overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """``simulator.run`` with Orbax checkpoints every ``cfg.checkpoint_every`` rounds.

    Args:
      cfg: the run.
      workdir: output directory (metrics.csv, summary.json, plots, ``ckpt/``).
      resume: continue from the latest readable checkpoint in ``workdir``.
      overwrite: delete an earlier run's checkpoints in ``workdir`` first.
      progress: show a progress bar.

    Returns:
      The run's summary (as ``simulator.run``).

    Raises:
      ValueError: a bad checkpoint flag, an output directory that already holds checkpoints
        without ``resume`` or ``overwrite`` (raised before any data loads), or a resume that cannot continue (`ResumeError`).
      DivergenceError: a client's state became non-finite; the message names the round, the
        client and the last good checkpoint.
    """
    hooks = CheckpointHooks(cfg, workdir, resume, overwrite)
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
