"""A torus tiled on a 2-D device mesh (issue 8 item 3): tiles, single-axis exchanges, gossip equal
to a float64 dense W @ X, and simulator metrics equal to the flat client axis."""

import csv
import functools
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spark_tpu import gossip, simulator, topology


def _mesh(shape):
    devices = jax.devices()[: int(np.prod(shape))]
    return jax.make_mesh(shape, gossip.mesh_axes(len(shape)), devices=devices)


def _torus_matrix(rows, cols):
    """Independent reference: every node averages itself and its 4 torus neighbours (1/5 each,
    which is both the uniform and the Metropolis rule on a 4-regular graph)."""
    n = rows * cols
    w = np.eye(n)
    for r in range(rows):
        for c in range(cols):
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                w[r * cols + c, ((r + dr) % rows) * cols + (c + dc) % cols] += 1.0
    return w / 5.0


def _mixer(plan, link_failure=0.0, key=0):
    """jit(shard_map(mix)) over the plan's mesh, and the mesh's client PartitionSpec."""
    mesh = _mesh(plan.mesh_shape)
    spec = P(gossip.mesh_axes(len(plan.mesh_shape)))

    @jax.jit
    @functools.partial(
        jax.shard_map, mesh=mesh, in_specs=(spec, spec, P(), P(), P()), out_specs=spec,
        check_vma=False,
    )
    def step(xs, tabs, edges, valid, act):
        g = jnp.asarray(0, jnp.int32)
        alive = gossip.sample_links(edges[g], valid[g], jax.random.key(key), link_failure, act)
        rg = gossip.round_graph(tabs, plan.static, g, edges[g], alive)
        return gossip.mix(xs, rg)

    return step, mesh, spec


def _args(plan, x, mesh, spec, active=None):
    """Client rows moved to their positions on the mesh, and the per-client-id active mask."""
    n_pos, q = plan.num_positions, plan.num_clients
    ids = plan.placement
    real = ids < q
    xp = np.zeros((n_pos,) + x.shape[1:], x.dtype)
    xp[real] = x[ids[real]]
    act = np.zeros(n_pos, bool)
    act[:q] = True if active is None else active
    shard = NamedSharding(mesh, spec)
    tables = jax.tree.map(jnp.asarray, plan.device_tables())
    return (
        jax.device_put(xp, shard), jax.device_put(tables, shard), jnp.asarray(plan.edges),
        jnp.asarray(plan.edge_valid), jnp.asarray(act),
    )


def run_mix(plan, x, *, link_failure=0.0, active=None, key=0):
    """Mixes x [Q, F] (rows by client id) on the plan's mesh; returns [Q, F] by client id."""
    step, mesh, spec = _mixer(plan, link_failure, key)
    out = np.asarray(step(*_args(plan, x, mesh, spec, active)))
    ids, q = plan.placement, plan.num_clients
    got = np.empty_like(x)
    got[ids[ids < q]] = out[ids < q]
    return got


def _tiled_plan(rows, cols, mesh_shape, rule="uniform"):
    topo = topology.Topology(
        name="torus", clients=rows * cols, torus_shape=(rows, cols), mixing=rule,
        time_varying=False,
    )
    layout = topology.DeviceLayout(mesh_shape, topology.torus_tiles(rows, cols, mesh_shape))
    d = int(np.prod(mesh_shape))
    return topo, topology.build_plan(topo.mixing_matrices(), d, topo.weight_rule, layout)


CASES = [
    (4, 4, (2, 4)), (4, 4, (4, 2)), (4, 8, (2, 4)), (4, 8, (4, 2)), (6, 8, (2, 4)),
    (6, 8, (3, 2)), (6, 8, (2, 2)), (6, 8, (1, 8)),
]


@pytest.mark.parametrize("rows,cols,mesh_shape", CASES)
def test_tiles_are_rectangles_one_per_device(rows, cols, mesh_shape):
    placement = topology.torus_tiles(rows, cols, mesh_shape)
    assert np.array_equal(np.sort(placement), np.arange(rows * cols))
    tr, tc = rows // mesh_shape[0], cols // mesh_shape[1]
    device = np.arange(rows * cols) // (tr * tc)
    r, c = np.divmod(placement, cols)
    i, j = np.divmod(device, mesh_shape[1])
    assert np.array_equal(r // tr, i) and np.array_equal(c // tc, j)


@pytest.mark.parametrize("rule", ["uniform", "metropolis"])
@pytest.mark.parametrize("rows,cols,mesh_shape", CASES)
def test_mix_on_2d_mesh_equals_dense(rows, cols, mesh_shape, rule):
    _, plan = _tiled_plan(rows, cols, mesh_shape, rule)
    x = np.random.default_rng(rows * cols).normal(size=(rows * cols, 3)).astype(np.float32)
    want = _torus_matrix(rows, cols) @ x.astype(np.float64)
    np.testing.assert_allclose(run_mix(plan, x), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("rule", ["uniform", "metropolis"])
@pytest.mark.parametrize("rows,cols,mesh_shape", [(4, 8, (2, 4)), (6, 8, (3, 2))])
def test_link_failures_and_dropout_on_2d_mesh(rows, cols, mesh_shape, rule):
    topo, plan = _tiled_plan(rows, cols, mesh_shape, rule)
    q = rows * cols
    x = np.random.default_rng(2).normal(size=(q, 2)).astype(np.float32)
    active = np.ones(q, bool)
    active[[3, q - 5]] = False
    got = run_mix(plan, x, link_failure=0.3, active=active, key=7)
    # Independent reference: redraw the same failures, rebuild W from the surviving graph.
    edges, valid = plan.edges[0], plan.edge_valid[0]
    up = np.asarray(jax.random.uniform(jax.random.key(7), valid.shape, dtype=jnp.float32)) >= 0.3
    adj = topo.adjacency()
    surv = np.zeros_like(adj)
    for (a, b), ok in zip(edges, valid & up):
        surv[a, b] = surv[b, a] = ok and active[a] and active[b]
    assert 0 < surv.sum() < adj.sum()
    w = topology.mixing_matrix(surv, rule)
    np.testing.assert_allclose(got, w @ x.astype(np.float64), atol=1e-6)
    np.testing.assert_array_equal(got[3], x[3])  # a dropped client keeps its own model


def _ppermute_axes(step, args) -> list[tuple[str, ...]]:
    """The axis names of every ppermute in the traced program (sub-jaxprs included)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "ppermute":
                name = eqn.params["axis_name"]
                found.append((name,) if isinstance(name, str) else tuple(name))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(step)(*args).jaxpr)
    return found


@pytest.mark.parametrize("rows,cols,mesh_shape", [(4, 8, (2, 4)), (6, 8, (3, 2)), (4, 4, (4, 2))])
def test_2d_plan_exchanges_along_one_axis(rows, cols, mesh_shape):
    _, plan = _tiled_plan(rows, cols, mesh_shape)
    assert plan.single_axis and plan.mesh_shape == mesh_shape
    tr, tc = rows // mesh_shape[0], cols // mesh_shape[1]
    # Offsets ±1 along each axis (one offset when that axis has 2 devices), a tile edge each.
    per_axis = [{(1, 0), (mesh_shape[0] - 1, 0)}, {(0, 1), (0, mesh_shape[1] - 1)}]
    assert set(plan.shifts) == per_axis[0] | per_axis[1]
    sizes = {s: t.shape[-1] for s, t in zip(plan.shifts, plan.send)}
    for s, m in sizes.items():
        edge = tc if s[0] else tr
        both = (s[0] and mesh_shape[0] == 2) or (s[1] and mesh_shape[1] == 2)
        assert m == (2 * edge if both else edge), (s, m)
    assert plan.halo_size == tr * tc + 2 * tr + 2 * tc
    step, mesh, spec = _mixer(plan)
    x = np.zeros((rows * cols, 1), np.float32)
    axes = _ppermute_axes(step, _args(plan, x, mesh, spec))
    assert len(axes) == len(plan.shifts) and set(axes) <= {("rows",), ("cols",)}


def test_general_graph_on_2d_mesh_permutes_the_flattened_axis():
    """A graph that does not embed still mixes exactly on a 2-D mesh (diagonal offsets become a
    ppermute over both axes); the simulator keeps such graphs on the flat axis."""
    topo = topology.Topology(name="regular", clients=30, degree=4, time_varying=False, seed=1)
    w = topo.mixing_matrices()[0]
    layout = topology.DeviceLayout((2, 4), np.arange(32, dtype=np.int32))
    plan = topology.build_plan([w], 8, topo.weight_rule, layout)
    assert not plan.single_axis
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    np.testing.assert_allclose(run_mix(plan, x), w @ x.astype(np.float64), atol=1e-6)
    step, mesh, spec = _mixer(plan)
    assert ("rows", "cols") in _ppermute_axes(step, _args(plan, x, mesh, spec))


def test_client_sum_over_2d_mesh():
    mesh = _mesh((2, 4))
    spec = P(gossip.GRID_AXES)
    x = np.random.default_rng(3).normal(size=(16, 3))
    total = jax.jit(jax.shard_map(
        lambda v: gossip.client_sum(v)[None], mesh=mesh, in_specs=spec, out_specs=spec,
        check_vma=False,
    ))(jax.device_put(x, NamedSharding(mesh, spec)))
    np.testing.assert_allclose(np.asarray(total), np.broadcast_to(x.sum(0), (8, 3)), rtol=1e-12)


def test_layout_choice():
    auto = topology.device_layout("torus", 32, 8, "auto", (4, 8))
    assert auto.mesh_shape == (2, 4)  # squarest tiles (2 x 2)
    assert topology.device_layout("torus", 48, 8, "auto", (6, 8)).mesh_shape == (2, 4)
    assert topology.device_layout("torus", 32, 8, "flat", (4, 8)).mesh_shape == (8,)
    assert topology.device_layout("ring", 32, 8, "auto").mesh_shape == (8,)
    assert topology.device_layout("regular", 30, 8, "auto").mesh_shape == (8,)
    assert topology.device_layout("torus", 25, 8, "auto", (5, 5)).mesh_shape == (8,)
    assert topology.device_layout("torus", 32, 2, "auto", (4, 8)).mesh_shape == (2,)  # no 2 x 2+
    assert topology.device_layout("torus", 32, 2, "2d", (4, 8)).mesh_shape == (1, 2)
    assert topology.device_layout("torus", 36, 4, "auto").mesh_shape == (2, 2)  # default 6 x 6


def test_layout_errors_name_the_flags():
    with pytest.raises(ValueError, match=r"--mesh=2d with --torus_shape=5x5 and --devices=8.*"
                                         r"--mesh=auto"):
        topology.device_layout("torus", 25, 8, "2d", (5, 5))
    with pytest.raises(ValueError, match=r"--mesh=2d with --topology=regular"):
        topology.device_layout("regular", 30, 8, "2d")
    with pytest.raises(ValueError, match=r"--mesh=3d: choose one of auto, flat, 2d"):
        topology.device_layout("torus", 32, 8, "3d", (4, 8))
    with pytest.raises(ValueError, match=r"--torus_shape=4x4 has 16 clients but --clients=32"):
        topology.device_layout("torus", 32, 8, "2d", (4, 4))


def test_simulation_rejects_2d_that_does_not_fit():
    base = {"dataset": "digits", "clients": 30, "samples_per_client": 20, "devices": 8}
    with pytest.raises(ValueError, match="--mesh=2d with --topology=regular"):
        simulator.Simulation(simulator.Config(**base, topology="regular", mesh="2d"))
    with pytest.raises(ValueError, match="--mesh=2d with --torus_shape=5x6 and --devices=8"):
        simulator.Simulation(simulator.Config(
            **base, topology="torus", torus_shape=(5, 6), time_varying=False, mesh="2d"
        ))


SMALL = {
    "dataset": "digits", "samples_per_client": 20, "rounds": 3, "local_eval_samples": 100,
    "horizons": (4, 8, 16), "partition": "dirichlet", "alpha": 0.5, "topology": "torus",
    "devices": 8,
}


def _metrics(tmp_path, name, **kw):
    cfg = simulator.Config(**kw)
    out = os.path.join(tmp_path, name)
    simulator.run(cfg, out, progress=False)
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(v or "nan") for k, v in r.items() if k != "seconds"] for r in rows])


@pytest.mark.parametrize(
    "algorithm,clients,shape,extra",
    [("dgd", 32, (4, 8), {"link_failure": 0.2, "client_dropout": 0.1}), ("ntk_dfl", 16, (4, 4), {})],
)
def test_simulator_same_metrics_2d_and_flat(tmp_path, algorithm, clients, shape, extra):
    kw = {**SMALL, "algorithm": algorithm, "clients": clients, "torus_shape": shape, **extra}
    per_client = {}
    for mesh in ("2d", "flat"):
        sim = simulator.Simulation(simulator.Config(**kw, mesh=mesh))
        per_client[mesh] = (sim.advance(2), sim.evaluate()[0])
        if mesh == "2d":
            assert dict(sim.mesh.shape) == {"rows": 2, "cols": 4} and sim.setup.plan.single_axis
            assert not np.array_equal(sim.setup.plan.placement, np.arange(clients))
    # Per-client metrics come back by client id, whatever position the client has on the mesh.
    (m2, local2), (mf, localf) = per_client["2d"], per_client["flat"]
    assert m2.keys() == mf.keys()
    for key in mf:
        np.testing.assert_allclose(m2[key], mf[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(local2, localf, rtol=1e-5, atol=1e-6)
    two_d = _metrics(tmp_path, "2d", **kw, mesh="2d")
    flat = _metrics(tmp_path, "flat", **kw, mesh="flat")
    np.testing.assert_allclose(two_d, flat, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_on_2d_mesh_match_one(tmp_path):
    """Multi-host: a 2 x 4 mesh whose rows are two processes of 4 CPU devices each (gloo
    collectives) gives the metrics of one process with 8 devices."""
    args = [
        "--algorithm=dgd", "--dataset=digits", "--clients=32", "--samples_per_client=16",
        "--rounds=2", "--topology=torus", "--torus_shape=4x8", "--notime_varying",
        "--local_eval_samples=100", "--devices=8", "--mesh=2d", "--link_failure=0.2",
    ]
    cmd = [sys.executable, "-m", "launch_tpu.main", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run([*cmd, f"--output_dir={tmp_path / 'one'}"], check=True, env=env,
                   capture_output=True)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [*cmd, f"--output_dir={tmp_path / 'two'}", f"--coordinator_address=localhost:{port}",
             "--num_processes=2", f"--process_id={i}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]

    def read(name):
        with open(tmp_path / name / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        return np.array([[float(v or "nan") for k, v in r.items() if k != "seconds"] for r in rows])

    np.testing.assert_allclose(read("two"), read("one"), rtol=1e-5, atol=1e-6)
    with open(tmp_path / "two" / "summary.json") as f:
        assert '"rows": 2' in f.read()
