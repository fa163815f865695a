"""Timing whole simulator rounds (`spark_tpu.simulator.Simulation`) for benchmarks/bench.py.

Every function here runs inside a `_worker` process and returns a list of result rows
(JSON-ready dicts). Rounds are timed through ``Simulation.advance``, which returns the metrics on
the host, so each timing ends at a synchronization point, exactly as ``simulator.run`` sees it.
Compilation (``Simulation.chunk``) is timed separately, and so is the first call of every
compiled chunk (warm-up: first-touch allocations), unless a benchmark can afford only one round.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from benchmarks import _flops
from spark_tpu import simulator


def make_config(config: dict, devices: int) -> simulator.Config:
    """A Config from JSON (lists become tuples), on ``devices`` devices."""
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return simulator.Config(**{**fixed, "devices": devices})


def xla_mb(compiled) -> float | None:
    """XLA's per-device buffer estimate of a compiled program (arguments + outputs − aliased +
    temporaries), in MiB; None where the backend gives no memory analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements memory_analysis
        return None
    if m is None:
        return None
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )
    return total / 2**20


def build(config: dict, devices: int):
    """(Simulation, setup seconds): data, partition, graph pool, placement."""
    t = time.perf_counter()
    if jax.default_backend() != "cpu":  # the suites' device counts are CPU emulation; use the real ones
        devices = min(devices, jax.device_count())
    sim = simulator.Simulation(make_config(config, devices))
    return sim, time.perf_counter() - t


def compile_chunk(sim, length: int):
    """(compiled chunk, compile seconds)."""
    before = sim.compile_seconds
    fn = sim.chunk(length)
    return fn, sim.compile_seconds - before


def advance(sim, length: int) -> tuple[float, bool]:
    """Seconds for ``length`` rounds through ``sim.advance``, and whether every model is finite."""
    t = time.perf_counter()
    metrics = sim.advance(length)
    seconds = time.perf_counter() - t
    if "solver_products" in metrics:  # kernel products per client, as the solver counted them
        counts = getattr(sim, "bench_products", [])
        counts.append(np.asarray(metrics["solver_products"][:, : sim.cfg.clients]))
        sim.bench_products = counts
    return seconds, bool(np.all(metrics["finite"][:, : sim.cfg.clients]))


def products(sim) -> dict:
    """Mean and max kernel products per client over the rounds advanced so far (NTK methods)."""
    counts = getattr(sim, "bench_products", None)
    if not counts:
        return {}
    flat = np.concatenate([c.ravel() for c in counts])
    return {"solver_products_mean": float(flat.mean()), "solver_products_max": int(flat.max())}


def describe(sim) -> dict:
    """The shapes that set a round's cost."""
    s = sim.setup
    widths = _flops.mlp_widths(s.params) if hasattr(s.params, "layers") else None
    return {
        "algorithm": sim.cfg.algorithm,
        "dataset": sim.cfg.dataset,
        "clients": sim.cfg.clients,
        "client_slots": s.plan.slots * s.plan.num_devices,
        "devices": sim.cfg.devices,
        "samples_per_client": int(s.arrays.x.shape[1]),
        "max_degree": s.plan.max_degree,
        "pooled_rows": (s.plan.max_degree + 1) * int(s.arrays.x.shape[1]),
        "params": sum(int(np.size(x)) for x in jax.tree.leaves(s.params)),
        "widths": widths,
        "horizons": list(sim.cfg.horizons),
    }


def _timing_row(sim, label, times, first, compile_s, setup_s, fn) -> dict:
    spr = statistics.median(times)
    return {
        **describe(sim),
        **products(sim),
        "label": label,
        "setup_s": setup_s,
        "compile_s": compile_s,
        "first_call_s": first,
        "round_s": times,
        "seconds_per_round": spr,
        "rounds_per_s_per_device": 1.0 / (spr * sim.cfg.devices),
        "client_rounds_per_s": sim.cfg.clients / spr,
        "xla_mb_per_device": xla_mb(fn),
    }


def _add_flops(row: dict, sim, matmul: bool) -> None:
    """Analytic NTK-round FLOPs, the achieved rate, and reference matmul rates (same process)."""
    if row["widths"] is None or sim.cfg.algorithm not in ("ntk_dfl", "spark"):
        return
    n = row["pooled_rows"]
    fl = _flops.round_flops(
        n,
        row["widths"],
        sim.cfg.horizons,
        row["client_slots"],
        sim.cfg.solver,
        teacher=sim.cfg.algorithm == "spark",
        stride=sim.cfg.solver_stride,
        products=row.get("solver_products_mean"),
    )
    row.update(fl, achieved_gflops=fl["total_gflop"] / row["seconds_per_round"])
    if matmul:
        rates = _flops.matmul_rates(n, row["widths"][-1])
        row.update(rates)
        row["fraction_of_square_matmul"] = row["achieved_gflops"] / rates["square_matmul_gflops"]
        row["fraction_of_skinny_matmul"] = row["achieved_gflops"] / rates["skinny_matmul_gflops"]


def available_mb() -> float | None:
    """MemAvailable of /proc/meminfo in MiB (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_skip(fn, devices: int, fraction: float | None) -> str | None:
    """Why not to run a compiled program: XLA's estimate over all devices exceeds ``fraction`` of
    the memory available now (the machine is shared; an OOM kill could hit someone else)."""
    per_device, free = xla_mb(fn), available_mb()
    if fraction is None or per_device is None or free is None:
        return None
    if per_device * devices > fraction * free:
        return (
            f"skipped: XLA estimates {per_device * devices / 1024:.1f} GiB over {devices} "
            f"devices, more than {fraction:.0%} of the {free / 1024:.1f} GiB available now"
        )
    return None


def sim(
    config: dict,
    devices: int,
    rounds: int = 3,
    warmup: int = 1,
    chunk: int = 1,
    label: str = "",
    matmul: bool = False,
    memory_fraction: float | None = 0.6,
) -> list[dict]:
    """One configuration: setup, compile, ``warmup`` untimed-in-the-median calls, ``rounds`` timed
    calls of a ``chunk``-round program; seconds per round is the median over the timed calls.
    A program that would not fit (`memory_skip`) gives a row with ``skipped`` and no timings."""
    sim_, setup_s = build(config, devices)
    fn, compile_s = compile_chunk(sim_, chunk)
    skip = memory_skip(fn, devices, memory_fraction)
    if skip:
        return [
            {
                **describe(sim_),
                "label": label,
                "setup_s": setup_s,
                "compile_s": compile_s,
                "xla_mb_per_device": xla_mb(fn),
                "skipped": skip,
            }
        ]
    first, finite = [], True
    for _ in range(warmup):
        seconds, ok = advance(sim_, chunk)
        first.append(seconds / chunk)
        finite &= ok
    times = []
    for _ in range(rounds):
        seconds, ok = advance(sim_, chunk)
        times.append(seconds / chunk)
        finite &= ok
    row = _timing_row(sim_, label, times, first, compile_s, setup_s, fn)
    row.update(rounds_per_chunk=chunk, all_finite=finite, warm=warmup > 0)
    _add_flops(row, sim_, matmul)
    return [row]


def pair(
    configs: dict[str, dict], devices: int, rounds: int = 3, warmup: int = 1, label: str = ""
) -> list[dict]:
    """Several configurations in one process, their rounds interleaved (A, B, A, B, …), so a ratio
    of their medians sees the same machine load. Rows are labelled by the keys of ``configs``."""
    del label
    sims, setup, fns, compile_s, first = {}, {}, {}, {}, {}
    for label, config in configs.items():
        sims[label], setup[label] = build(config, devices)
        fns[label], compile_s[label] = compile_chunk(sims[label], 1)
        first[label] = [advance(sims[label], 1)[0] for _ in range(warmup)]
    times = {label: [] for label in configs}
    for _ in range(rounds):
        for label, s in sims.items():
            times[label].append(advance(s, 1)[0])
    rows = []
    for label, s in sims.items():
        row = _timing_row(
            s, label, times[label], first[label], compile_s[label], setup[label], fns[label]
        )
        _add_flops(row, s, matmul=False)
        rows.append(row)
    return rows


def fusion(config: dict, devices: int, length: int, reps: int = 3, label: str = "") -> list[dict]:
    """``advance(length)`` with one compiled ``length``-round chunk against ``length`` calls of
    ``advance(1)`` (one dispatch and one metrics transfer per round), interleaved ``reps`` times."""
    s, setup_s = build(config, devices)
    fused_fn, fused_compile = compile_chunk(s, length)
    single_fn, single_compile = compile_chunk(s, 1)
    first_fused = advance(s, length)[0] / length
    first_single = advance(s, 1)[0]
    fused, single = [], []
    for _ in range(reps):
        fused.append(advance(s, length)[0] / length)
        t = time.perf_counter()
        for _ in range(length):
            advance(s, 1)
        single.append((time.perf_counter() - t) / length)
    return [
        {
            **_timing_row(
                s,
                f"{label} fused x{length}",
                fused,
                [first_fused],
                fused_compile,
                setup_s,
                fused_fn,
            ),
            "rounds_per_chunk": length,
            "variant": "fused",
        },
        {
            **_timing_row(
                s,
                f"{label} 1 round/dispatch",
                single,
                [first_single],
                single_compile,
                setup_s,
                single_fn,
            ),
            "rounds_per_chunk": 1,
            "variant": "per_round",
        },
    ]
