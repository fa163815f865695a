"""spark_tpu: python -m launch_tpu.main --flagfile=experiments/presets/X.flags [--small] [--help]
"""

# Parses flags once into a Config, configures JAX (emulated CPU devices, multi-host), and calls
# ``simulator.run``. ``--help`` lists the project's flags by group and the presets; ``--helpfull``
# adds absl's own. The terminal shows the progress bar, one line per evaluation, warnings and the
# summary; the libraries' INFO logging (Orbax, JAX, the run's own details) goes to ``log.txt`` in
# ``--output_dir`` (``--alsologtostderr`` shows it on the terminal too). This module's docstring
# is the usage line absl prints above an error, so it stays short.

from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, logging

from launch_tpu import _flags
from spark_tpu import logs, platform

FLAGS = _flags.FLAGS
HELP = ("--help", "-help", "-h", "-?")
LOG_FILE = "log.txt"


def _configure_jax() -> int:
    """Emulated CPU devices before JAX starts; multi-host init when launched as several processes.

    Returns the number of devices to shard over.
    """
    jax.config.parse_flags_with_absl()
    procs = FLAGS.num_processes
    emulated = FLAGS.devices or (8 if procs > 1 else platform.default_cpu_devices())
    if emulated % procs:
        raise app.UsageError(f"--devices={FLAGS.devices} must divide over --num_processes={procs}.")
    platform.emulate_cpu_devices(emulated // procs)
    if procs > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, procs, FLAGS.process_id)
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()  # a TPU pod slice: JAX finds its peers itself
    return FLAGS.devices or len(jax.devices())


def _verbose() -> bool:
    return FLAGS.alsologtostderr or FLAGS.logtostderr


def route_logs(output_dir: str, buffer) -> str | None:
    """The log file ``output_dir/log.txt`` (``log.I.txt`` for process I > 0), which receives the
    records held in ``buffer`` since start-up and every record after.

    Returns its path (None when logs stay on the terminal: ``--alsologtostderr``,
    ``--logtostderr``, or an ``--output_dir`` that is not a local folder).
    """
    if _verbose() or "://" in output_dir:
        return None
    os.makedirs(output_dir, exist_ok=True)
    name = LOG_FILE if FLAGS.process_id == 0 else f"log.{FLAGS.process_id}.txt"
    path = os.path.join(output_dir, name)
    logs.to_file(path, buffer)
    return path


def target_line(summary: dict) -> str:
    """``rounds_to_target`` for the printed summary: the round, or which target was missed."""
    if summary["rounds_to_target"] is not None:
        return summary["rounds_to_target"]
    rounds = summary["config"]["rounds"]
    return (
        f"not reached: --target_accuracy={summary['target_accuracy']:g} in {rounds} rounds "
        f"(best aggregated accuracy {summary['best_aggregated_acc']:.4f})"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    buffer = None if _verbose() else logs.quiet_terminal()
    devices = _configure_jax()
    try:
        cfg = _flags.config_from_flags(devices)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from spark_tpu import simulator  # noqa: PLC0415 - after the device configuration
    from spark_tpu.checkpoint import CheckpointHooks, run_with_checkpoints  # noqa: PLC0415

    if FLAGS.mode == "train":
        try:  # the output directory's checks, before the log file is opened there
            CheckpointHooks.check_output_dir(cfg, FLAGS.output_dir, FLAGS.resume, FLAGS.overwrite)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    log_file = route_logs(FLAGS.output_dir, buffer)
    logging.info("config: %s", cfg)
    if log_file:
        print(f"Logs in {log_file}", file=sys.stderr)
    if FLAGS.mode == "predict":
        try:
            summary = simulator.predict(cfg, FLAGS.output_dir)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        print(json.dumps({"rank": summary["rank"], **summary["max_relative_loss_error"]}))
        print(f"Outputs in {FLAGS.output_dir}: prediction.json, prediction.png")
        return
    try:
        summary = run_with_checkpoints(
            cfg, FLAGS.output_dir, resume=FLAGS.resume, overwrite=FLAGS.overwrite
        )
    except (ValueError, FileNotFoundError, simulator.DivergenceError) as e:
        raise app.UsageError(str(e)) from None
    if jax.process_index() == 0:
        keys = ("final", "rounds_to_target", "bytes_to_target", "compile_seconds",
                "seconds_per_round")
        printed = {k: summary[k] for k in keys}
        printed["rounds_to_target"] = target_line(summary)
        print(json.dumps(printed, indent=2))
        print(f"Outputs in {FLAGS.output_dir}: metrics.csv, summary.json, accuracy.png"
              + (", log.txt" if log_file else ""))


def run():
    """``--help`` prints the grouped project flags and exits 0; everything else is absl's."""
    if any(arg in HELP for arg in sys.argv[1:]):
        print(_flags.grouped_help(__doc__))
        sys.exit(0)
    app.run(main)


if __name__ == "__main__":
    run()
