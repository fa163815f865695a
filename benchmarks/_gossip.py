"""Gossip mixing: ppermute halo exchange against a dense all-gather, for benchmarks/bench.py.

All paths run as the simulator runs them: inside one ``jax.shard_map`` over the "clients" mesh
axis, ``rounds`` mixing rounds per call in a ``lax.scan``, each round on the next graph of the pool
(a fresh random d-regular graph per round, uniform weights; or a static ring).

- ``ppermute`` (the simulator's path): `spark_tpu.gossip.round_graph` + `spark_tpu.gossip.mix` on
  the MLP 784-100-10's parameter pytree (4 leaves, P = 79,510 per client): one ``ppermute`` per
  device shift of the plan *and per leaf*, then a local gather and weighted sum.
- ``ppermute_flat``: the same `gossip.mix` on the parameters raveled into one ``[L, P]`` buffer
  (one ``ppermute`` per shift).
- ``dense``: every device ``all_gather``-s all Q raveled models and multiplies its rows of W by
  them, ``W[rows] @ X``. This baseline is the one place outside `spark_tpu.gossip` that calls a
  collective; it exists only to be compared against.

The outputs are compared (max absolute difference), so the faster path is also checked.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks._sim import xla_mb
from spark_tpu import gossip, topology

MLP_LEAVES = ((100, 784), (100,), (10, 100), (10,))  # MLP 784-100-10, P = 79,510
ROW = P(gossip.AXIS)


def _placed(mesh, x, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))


def _shard(mesh, fn, in_specs):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=ROW, check_vma=False))


def _programs(plan, mesh, rounds: int) -> dict:
    steps = jnp.arange(rounds, dtype=jnp.int32) % plan.pool_size

    def halo_fn(x, tables, edges, valid):
        def body(x, g):
            rg = gossip.round_graph(tables, plan.static, g, edges[g], valid[g])
            return gossip.mix(x, rg), None

        return jax.lax.scan(body, x, steps)[0]

    def dense_fn(x, w_rows):
        def body(x, g):
            full = jax.lax.all_gather(x, gossip.AXIS, tiled=True)
            return jnp.matmul(w_rows[g], full, precision=jax.lax.Precision.HIGHEST), None

        return jax.lax.scan(body, x, steps)[0]

    halo = _shard(mesh, halo_fn, (ROW, ROW, P(), P()))
    return {"ppermute": halo, "ppermute_flat": halo,
            "dense": _shard(mesh, dense_fn, (ROW, P(None, gossip.AXIS)))}  # fmt: skip


def _inputs(clients: int, graph: str, degree: int, pool: int, devices: int, mesh):
    topo = topology.Topology(
        name=graph, clients=clients, degree=degree, pool_size=pool, time_varying=graph == "regular"
    )
    matrices = topo.mixing_matrices()
    plan = topology.build_plan(matrices, devices, topo.weight_rule)
    q_pad = plan.num_positions
    w = np.stack([np.eye(q_pad) for _ in matrices])
    for g, m in enumerate(matrices):
        w[g, :clients, :clients] = m
    rng = np.random.default_rng(0)
    tree = [rng.standard_normal((q_pad, *s)).astype(np.float32) for s in MLP_LEAVES]
    flat = np.concatenate([leaf.reshape(q_pad, -1) for leaf in tree], axis=1)
    graph_args = (
        _placed(mesh, plan.device_tables(), ROW),
        _placed(mesh, plan.edges, P()),
        _placed(mesh, plan.edge_valid, P()),
    )
    args = {
        "ppermute": (_placed(mesh, tree, ROW), *graph_args),
        "ppermute_flat": (_placed(mesh, flat, ROW), *graph_args),
        "dense": (_placed(mesh, flat, ROW), _placed(mesh, w.astype(np.float32), P(None, ROW[0]))),
    }
    return plan, q_pad, args


def _ravel(out) -> jax.Array:
    if isinstance(out, list):
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in out], axis=1)
    return out


def _compile(fn, args):
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t


def _run(fn, args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def _case(q, graph, degree, pool, devices, mesh, rounds, reps) -> dict:
    plan, q_pad, args = _inputs(q, graph, degree, pool, devices, mesh)
    programs = _programs(plan, mesh, rounds)
    compiled, compile_s = {}, {}
    for name, fn in programs.items():
        compiled[name], compile_s[name] = _compile(fn, args[name])
    outs = {name: _ravel(fn(*args[name])) for name, fn in compiled.items()}
    diff = max(
        float(jnp.max(jnp.abs(outs[n] - outs["dense"]))) for n in ("ppermute", "ppermute_flat")
    )
    times = {name: [] for name in compiled}
    for _ in range(reps):
        for name, fn in compiled.items():
            times[name].append(_run(fn, args[name]) / rounds)
    row = {
        "label": f"Q={q}" + ("" if graph == "regular" else f" {graph}"),
        "clients": q, "topology": graph, "degree": degree if graph == "regular" else 2,
        "client_slots": q_pad, "halo_rows": plan.halo_size, "device_shifts": len(plan.shifts),
        "params": sum(int(np.prod(s)) for s in MLP_LEAVES), "devices": devices,
        "max_abs_difference": diff,
    }  # fmt: skip
    for name, fn in compiled.items():
        row[f"{name}_s_per_round"] = min(times[name])
        row[f"{name}_round_s"] = times[name]
        row[f"{name}_compile_s"] = compile_s[name]
        row[f"{name}_xla_mb_per_device"] = xla_mb(fn)
    row["dense_over_ppermute"] = row["dense_s_per_round"] / row["ppermute_s_per_round"]
    row["dense_over_ppermute_flat"] = row["dense_s_per_round"] / row["ppermute_flat_s_per_round"]
    row["ppermute_over_flat"] = row["ppermute_s_per_round"] / row["ppermute_flat_s_per_round"]
    return row


def gossip_mixing(
    clients: list[int], devices: int, degree: int = 5, pool: int = 8, rounds: int = 4,
    reps: int = 3, ring_clients: tuple[int, ...] = (), label: str = "",
) -> list[dict]:  # fmt: skip
    """One row per case: seconds per mixing round of each path (best of ``reps`` interleaved calls
    of ``rounds`` rounds), compile seconds, XLA MiB per device and the ratios.

    ``clients`` use a fresh random ``degree``-regular graph per round (the NTK-DFL setting);
    ``ring_clients`` a static ring, where each device exchanges one row with each of its two
    neighbouring devices (the halo exchange's best case)."""
    del label
    mesh = jax.make_mesh((devices,), (gossip.AXIS,), devices=jax.devices()[:devices])
    cases = [(q, "regular") for q in clients] + [(q, "ring") for q in ring_clients]
    return [_case(q, g, degree, pool, devices, mesh, rounds, reps) for q, g in cases]
