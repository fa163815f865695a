"""Orbax checkpoints of the whole run (STYLE rule 13, issue 7).

A checkpoint holds every client's state (models, momenta, optimizer state), the round counter and,
as JSON, the metric history, the horizon histogram and the run's flags. Keys are derived from the
seed and the round, so nothing else is needed to continue bit-identically.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from spark_tpu.simulator import Config, run
from spark_tpu.simulator import _outputs

# Flags that change what the saved state means: a resume must not change them.
STATE_FLAGS = (
    "algorithm", "clients", "model", "dataset", "partition", "alpha", "samples_per_client",
    "seed", "devices", "spark_stages", "spark_options",
)
MISMATCH = (
    "--resume: the checkpoint in {dir} was written with different flags that change what the "
    "saved state means: {diffs}. Resume with the original values, or start a fresh run in "
    "another --output_dir."
)


def _normalize(value):
    return [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(
        value, (list, tuple)
    ) else value


class CheckpointHooks:
    """Run-loop hooks that restore at start and save every ``cfg.checkpoint_every`` rounds."""

    def __init__(self, cfg: Config, workdir: str, resume: bool):
        self.cfg, self.workdir, self.resume = cfg, workdir, resume
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(1, cfg.keep_checkpoints), enable_async_checkpointing=True,
        )
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "ckpt")), options=options
        )
        self.restored_from = None

    def _check_flags(self, saved: dict) -> None:
        now = self.cfg.to_dict()
        diffs = [
            f"--{k}: saved {saved.get(k)!r}, now {now[k]!r}"
            for k in STATE_FLAGS
            if _normalize(saved.get(k)) != _normalize(now[k])
        ]
        if diffs:
            raise ValueError(MISMATCH.format(dir=self.workdir, diffs="; ".join(diffs)))

    def start(self, sim, rows):
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not self.resume:
            if steps:
                raise ValueError(
                    f"--output_dir={self.workdir} already holds checkpoints (rounds {steps}); pass "
                    "--resume to continue, or choose another --output_dir."
                )
            return rows
        if not steps:
            logging.warning("--resume: no checkpoint in %s; starting fresh.", self.workdir)
            print(f"--resume: no checkpoint in {self.workdir}; starting a fresh run.")
            return rows
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, sim.state)
        for step in steps:
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
                self._check_flags(meta["config"])
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                if isinstance(e, ValueError) and str(e).startswith("--resume"):
                    raise
                logging.error("checkpoint at round %d is unreadable: %s", step, e)
                print(f"Checkpoint at round {step} is corrupt or truncated ({type(e).__name__}); "
                      "falling back to the previous one.")
                continue
            sim.state = restored["state"]
            sim.round = jax.device_put(
                jax.numpy.asarray(step, jax.numpy.int32), sim.round.sharding
            )
            self.restored_from = step
            print(f"Resumed from the checkpoint at round {step}.")
            return meta["rows"][:step]
        raise ValueError(f"--resume: no readable checkpoint in {self.workdir}/ckpt.")

    def after_chunk(self, sim, rows):
        done = int(rows[-1]["round"])
        _outputs.write_metrics(
            os.path.join(self.workdir, "metrics.csv"), rows,
            tuple(k for k in rows[-1] if k not in _outputs.COLUMNS),
        )
        every = self.cfg.checkpoint_every
        if (every and done % every == 0) or done == self.cfg.rounds:
            meta = {"config": self.cfg.to_dict(), "rows": rows}
            self.manager.save(done, args=ocp.args.Composite(
                state=ocp.args.StandardSave(sim.state), meta=ocp.args.JsonSave(meta)))

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def run_with_checkpoints(cfg: Config, workdir: str, *, resume: bool = False, progress=True) -> dict:
    """``simulator.run`` with Orbax checkpointing and ``--resume``."""
    os.makedirs(workdir, exist_ok=True)
    hooks = CheckpointHooks(cfg, workdir, resume)
    try:
        return run(cfg, workdir, progress=progress, hooks=hooks)
    finally:
        hooks.close()
