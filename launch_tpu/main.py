"""spark_tpu's entry point: ``python -m launch_tpu.main --flagfile=experiments/presets/X.flags``.

Parses flags once into a Config, configures JAX (emulated CPU devices, multi-host), and calls
``simulator.run``. ``--helpfull`` lists every flag.
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, logging

from launch_tpu import _flags
from spark_tpu import platform

FLAGS = _flags.FLAGS


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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    devices = _configure_jax()
    try:
        cfg = _flags.config_from_flags(devices)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from spark_tpu import simulator  # noqa: PLC0415 - after the device configuration
    from spark_tpu.checkpoint import run_with_checkpoints  # noqa: PLC0415

    logging.info("config: %s", cfg)
    if FLAGS.mode == "predict":
        try:
            summary = simulator.predict(cfg, FLAGS.output_dir)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        print(json.dumps({"rank": summary["rank"], **summary["max_relative_loss_error"]}))
        print(f"Outputs in {FLAGS.output_dir}: prediction.json, prediction.png")
        return
    try:
        summary = run_with_checkpoints(cfg, FLAGS.output_dir, resume=FLAGS.resume)
    except (ValueError, FileNotFoundError, simulator.DivergenceError) as e:
        raise app.UsageError(str(e)) from None
    if jax.process_index() == 0:
        keys = ("final", "rounds_to_target", "bytes_to_target", "compile_seconds",
                "seconds_per_round")
        print(json.dumps({k: summary[k] for k in keys}, indent=2))
        print(f"Outputs in {FLAGS.output_dir}: metrics.csv, summary.json, accuracy.png")


if __name__ == "__main__":
    app.run(main)
