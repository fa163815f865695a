"""Performance benchmarks of the simulator (issue 9, and the timings asked by issues 2 and 4).

Commands (from the repo root):

    python -m benchmarks.bench all --small     # every benchmark in seconds (CI runs this)
    python -m benchmarks.bench baselines       # one benchmark, full size
    python -m benchmarks.bench all             # everything, full size (about 1 h on the 2-core box)

Benchmarks (settings in benchmarks/_suites.py):

- ``baselines``: DFedAvg and D-PSGD seconds per round, 300 clients, 5-regular, Fashion-MNIST.
- ``ntk_round``: NTK-DFL at the reference code's shipped setting (30 clients, 2-regular,
  T = (100,)) and at the paper setting (300 clients, 5-regular, T up to 800; ONE round).
- ``kernel``: structured vs materialized-Jacobian trace kernel; an NTK round's FLOP rate against a
  plain float32 matmul timed in the same process.
- ``scaling``: seconds per round vs clients (fitted log-log exponent) and vs emulated devices.
- ``gossip``: ppermute halo-exchange mixing vs dense all-gather mixing.
- ``fusion``: k rounds in one compiled chunk vs one dispatch per round.
- ``spark_overhead``: a SPARK round vs an NTK-DFL round.
- ``degree_buckets``: NTK-DFL on Erdős–Rényi, pooled data padded to the largest degree vs two widths.

Every measured configuration runs in a fresh ``benchmarks._worker`` process, so its peak
resident memory (``ru_maxrss``) is its own; with ``--small`` all configurations share one process
compiled with most XLA optimizations off (startup and compilation dominate there; the peak is then
cumulative, marked ``rss_isolated: false``). A ratio is
always measured inside one process, its variants interleaved. Compile time is reported apart from
seconds per round. The machine is shared and noisy: compare ratios, not absolute seconds.

Writes benchmarks/results/bench_NAME.json (bench_NAME_small.json with --small; another folder with
--output_dir) and a PNG beside it, and prints
a table per benchmark.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

from absl import app, flags

from benchmarks import _plots, _suites, _worker

_SMALL = flags.DEFINE_bool("small", False, "Tiny settings (digits, few clients): seconds each.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", os.path.join(os.path.dirname(__file__), "results"), "Where JSON and PNG go."
)
_ISOLATE = flags.DEFINE_bool(
    "isolate",
    None,
    "One process per configuration (own peak memory). Default: on, off with --small.",
)

_MEMORY_FRACTION = flags.DEFINE_float(
    "memory_fraction",
    0.6,
    "Skip a simulation whose XLA memory estimate exceeds this fraction of MemAvailable (the box "
    "is shared: an out-of-memory kill could hit another job).",
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE_NOTE = (
    "Shared 2-core CPU with other jobs running: absolute timings are noisy; ratios are measured "
    "in one process with interleaved variants and are the claims."
)
_UNKNOWN = "Unknown benchmark {name!r}: choose one of {choices}, or 'all'."


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": metadata.version("jax"),
        "jaxlib": metadata.version("jaxlib"),
    }


def _launch(tasks: list[dict], timeout_s: int, fast_compile: bool = False) -> dict[str, dict]:
    """Runs ``tasks`` in one worker process: results by task id; a task without a result line
    gets an error entry (crash, out of memory, timeout)."""
    cmd = [sys.executable, "-m", "benchmarks._worker", json.dumps(tasks)]
    cmd += ["--fast_compile"] if fast_compile else []
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, check=False
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr = (e.stdout or b"").decode(), (e.stderr or b"").decode()
        rc = f"timeout after {timeout_s} s"
    results = {}
    for line in stdout.splitlines():
        if line.startswith(_worker.PREFIX):
            result = json.loads(line[len(_worker.PREFIX) :])
            results[result["id"]] = result
    for task in tasks:
        if task["id"] not in results:
            results[task["id"]] = {
                "id": task["id"],
                "label": task["label"],
                "rows": [],
                "wall_s": None,
                "error": f"worker ended (rc={rc}) without a "
                "result; stderr tail:\n" + stderr[-2000:],
            }
    return results


def _run_tasks(tasks: list[dict], isolate: bool, timeout_s: int, small: bool) -> dict[str, dict]:
    """Every task in its own process (``isolate``), or all of them in one."""
    if not isolate:
        print(f"  {len(tasks)} configurations in one process ...", flush=True)
        return _launch(tasks, timeout_s, fast_compile=small)
    results = {}
    for task in tasks:
        print(f"  {task['label']} ...", flush=True)
        results.update(_launch([task], timeout_s, fast_compile=small))
    return results


def _tasks(name: str, suite, memory_fraction: float = 0.6) -> list[dict]:
    """The suite's tasks with unique ids (and the memory guard for single simulations)."""
    extra = {"sim": {"memory_fraction": memory_fraction}}
    return [
        dict(task, id=f"{name}/{i}", **extra.get(task["kind"], {}))
        for i, task in enumerate(suite.tasks)
    ]


def finish(
    name: str, suite, results: dict, small: bool, isolate: bool, out_dir: str, timing: dict,
    memory_fraction: float = 0.6,
) -> dict:  # fmt: skip
    """Rows, summary, JSON and PNG of one benchmark from its tasks' results; prints its table."""
    flags_used = (" --small" if small else "") + (
        f" --memory_fraction={memory_fraction}" if memory_fraction != 0.6 else ""
    )
    ordered = [results[task["id"]] for task in _tasks(name, suite)]
    rows = [row for r in ordered for row in r["rows"]]
    out = {
        "benchmark": name,
        "title": suite.title,
        "small": small,
        "command": f"python -m benchmarks.bench {name}{flags_used}",
        "memory_fraction": memory_fraction,
        "note": NOISE_NOTE,
        "memory": "peak_rss_mb is ru_maxrss of the measuring process; "
        + (
            "one process per configuration."
            if isolate
            else "configurations shared a process (cumulative peak)."
        ),
        "machine": {**_machine(), **timing},
        "rows": rows,
        "summary": suite.summarize(rows) if rows else {},
        "errors": {r["label"]: r["error"] for r in ordered if r.get("error")},
    }
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"bench_{name}" + ("_small" if small else ""))
    with open(stem + ".json", "w") as f:
        json.dump(out, f, indent=1, default=float)
    if rows:
        _plots.plot(name, rows, out["summary"], suite.title, stem + ".png")
    print(f"== {name}: {suite.title}")
    print(_plots.format_table(rows, suite.columns))
    for row in rows:
        if "skipped" in row:
            print(f"  {row['label']}: {row['skipped']}")
    print("summary:", json.dumps(out["summary"], indent=1, default=float))
    for label, error in out["errors"].items():
        print(f"ERROR in {label}:\n{error}", file=sys.stderr)
    return out


def run_benchmarks(
    names: list[str],
    small: bool,
    out_dir: str,
    isolate: bool | None = None,
    memory_fraction: float = 0.6,
):
    """Runs benchmarks by name; with ``isolate`` off (the ``--small`` default) all their
    configurations share one worker process. Returns {name: JSON object}."""
    isolate = (not small) if isolate is None else isolate
    suites = {name: _suites.SUITES[name](small) for name in names}
    outs = {}
    if not isolate:
        load, t = os.getloadavg(), time.perf_counter()
        tasks = [t for name, suite in suites.items() for t in _tasks(name, suite, memory_fraction)]
        results = _run_tasks(tasks, False, sum(s.timeout_s for s in suites.values()), small)
        timing = {
            "load_average_before": load,
            "load_average_after": os.getloadavg(),
            "wall_s_all_benchmarks_together": time.perf_counter() - t,
        }
        for name, suite in suites.items():
            outs[name] = finish(
                name, suite, results, small, isolate, out_dir, timing, memory_fraction
            )
        return outs
    for name, suite in suites.items():
        print(f"== {name}: running {len(suite.tasks)} configurations", flush=True)
        load, t = os.getloadavg(), time.perf_counter()
        results = _run_tasks(_tasks(name, suite, memory_fraction), True, suite.timeout_s, small)
        timing = {
            "load_average_before": load,
            "load_average_after": os.getloadavg(),
            "wall_s": time.perf_counter() - t,
        }
        outs[name] = finish(name, suite, results, small, isolate, out_dir, timing, memory_fraction)
    return outs


def main(argv: list[str]) -> None:
    names = argv[1:]
    choices = list(_suites.SUITES)
    if len(names) != 1 or (names[0] != "all" and names[0] not in choices):
        raise app.UsageError(_UNKNOWN.format(name=" ".join(names), choices=", ".join(choices)))
    todo = choices if names[0] == "all" else names
    outs = run_benchmarks(
        todo, _SMALL.value, _OUTPUT_DIR.value, _ISOLATE.value, _MEMORY_FRACTION.value
    )
    failed = [name for name, out in outs.items() if out["errors"] or not out["rows"]]
    if failed:
        sys.exit(f"Benchmarks with errors: {', '.join(failed)} (see the JSON files' 'errors').")


if __name__ == "__main__":
    app.run(main)
