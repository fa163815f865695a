"""The measuring side of benchmarks/bench.py: a fresh process that runs benchmark tasks.

    python -m benchmarks._worker '<JSON list of tasks>' [--fast_compile]

A task is ``{"kind": KIND, "label": ..., "devices": D, **arguments}`` (and optionally an "id" that
its result echoes) with KIND a key of `_kinds()`. ``--fast_compile`` sets
``jax_disable_most_optimizations`` (used by ``--small``, where compilation dominates).
The process emulates the largest ``devices`` of its tasks as CPU devices before JAX starts, runs
the tasks in order, and prints one line ``BENCH_RESULT <json>`` per task: its rows, each with the
process's peak resident set size so far (``ru_maxrss``) and whether that peak belongs to this task
alone (``rss_isolated``: the only task of its process).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback

PREFIX = "BENCH_RESULT "


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _kinds():
    from benchmarks import _gossip, _kernel, _sim

    return {
        "sim": _sim.sim,
        "pair": _sim.pair,
        "fusion": _sim.fusion,
        "kernel": _kernel.kernels,
        "gossip": _gossip.gossip_mixing,
    }


def run_task(kinds, task: dict, isolated: bool) -> dict:
    """Runs one task; failures become an ``error`` entry instead of ending the process."""
    args = dict(task)
    kind = args.pop("kind")
    task_id = args.pop("id", task["label"])
    t = time.perf_counter()
    try:
        rows = kinds[kind](**args)
        error = None
    except Exception:  # noqa: BLE001 - any failure is reported to the parent, which records it
        rows, error = [], traceback.format_exc(limit=8)
    peak = peak_rss_mb()
    for row in rows:
        row.update(kind=kind, task=task["label"], peak_rss_mb=peak, rss_isolated=isolated)
    return {
        "id": task_id,
        "label": task["label"],
        "rows": rows,
        "error": error,
        "wall_s": time.perf_counter() - t,
    }


def main(argv: list[str]) -> None:
    tasks = json.loads(argv[1])
    import jax

    from spark_tpu import platform

    # An entry point may set global JAX config (docs/style.md §14).
    platform.emulate_cpu_devices(max(int(t.get("devices", 1)) for t in tasks))
    if "--fast_compile" in argv[2:]:  # --small: compile time dominates, optimized code is moot
        jax.config.update("jax_disable_most_optimizations", True)
    kinds = _kinds()
    for task in tasks:
        result = run_task(kinds, task, isolated=len(tasks) == 1)
        print(PREFIX + json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    main(sys.argv)
