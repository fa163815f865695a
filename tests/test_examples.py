"""The examples (examples/, docs/extending.md): gradient tracking against a float64 NumPy DIGing,
every script runs (this is how CI runs them), and every script uses only the public API."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spark_tpu
from spark_tpu import data, topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python -m pytest` from the root has it; a bare `pytest` may not
    sys.path.insert(0, ROOT)

from examples import gradient_tracking  # noqa: E402

# Every example and the line count it promises (docs/extending.md: "short").
EXAMPLES = {"gradient_tracking": 85, "custom_model": 60, "custom_data": 50, "custom_graph": 50}


class Linear(eqx.Module):
    """Softmax regression in float64 (inputs arrive as float32)."""

    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return self.w @ x.astype(self.w.dtype) + self.b


class Record(spark_tpu.Callback):
    def __init__(self):
        self.states = []

    def after_chunk(self, sim, rows):
        self.states.append(sim.client_state())


def _grad(w, b, x, y):
    """Full-batch gradient of the mean cross-entropy of softmax(x wᵀ + b), by hand."""
    z = x @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = (p - np.eye(w.shape[0])[y]) / len(y)
    return dz.T @ x, dz.sum(axis=0)


def _prism() -> np.ndarray:
    """A 3-regular graph on 6 clients (two triangles joined by a matching)."""
    a = np.zeros((6, 6), int)
    for i, j in [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (0, 3), (1, 4), (2, 5)]:
        a[i, j] = a[j, i] = 1
    return a


@pytest.mark.parametrize("devices,graph", [
    (1, "ring"), pytest.param(2, "ring", marks=pytest.mark.slow),
    pytest.param(2, "prism", marks=pytest.mark.slow)])
def test_gradient_tracking_is_diging_in_float64(devices, graph):
    adjacency = topology.ring(4) if graph == "ring" else _prism()
    q, d, c, lr, rounds = len(adjacency), 3, 3, 0.5, 3
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(40, d)), rng.normal(size=(10, d))
    train_y, test_y = rng.integers(0, c, 40), rng.integers(0, c, 10)
    ds = spark_tpu.from_arrays(train_x, train_y, test_x, test_y)
    sizes = (5, 6, 7, 8, 4, 3)[:q]  # uneven: padded rows are masked out
    parts = np.split(rng.permutation(40)[: sum(sizes)], np.cumsum(sizes)[:-1])
    model = Linear(jnp.asarray(rng.normal(size=(c, d))), jnp.asarray(rng.normal(size=c)))
    record = Record()
    spark_tpu.simulate(
        gradient_tracking.SPEC, model, ds, adjacency, partition=parts, rounds=rounds,
        lr=lr, batch_size=max(sizes), devices=devices, local_eval_samples=10, callbacks=[record],
    )
    xs = [np.asarray(data.normalize(ds.train_x[ix], ds), np.float64) for ix in parts]
    ys = [ds.train_y[ix] for ix in parts]
    mix = topology.mixing_matrix(adjacency.astype(bool), "uniform")
    mix = mix.astype(np.float32).astype(np.float64)  # the simulator's weights are float32
    w = np.stack([np.asarray(model.w)] * q)
    b = np.stack([np.asarray(model.b)] * q)
    grads = [_grad(w[i], b[i], xs[i], ys[i]) for i in range(q)]
    yw, yb = np.stack([g[0] for g in grads]), np.stack([g[1] for g in grads])  # y_0 = ∇f(x_0)
    for k in range(rounds):
        w = np.einsum("qr,rij->qij", mix, w) - lr * yw
        b = mix @ b - lr * yb
        new = [_grad(w[i], b[i], xs[i], ys[i]) for i in range(q)]
        yw = np.einsum("qr,rij->qij", mix, yw) + np.stack([n[0] - o[0] for n, o in zip(new, grads)])
        yb = mix @ yb + np.stack([n[1] - o[1] for n, o in zip(new, grads)])
        grads = new
        got = record.states[k]
        np.testing.assert_allclose(got.params.w, w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got.params.b, b, rtol=1e-10, atol=1e-12)
    assert np.abs(w - np.asarray(model.w)[None]).max() > 1e-2  # the rounds moved the models


@pytest.mark.slow  # whole simulations; the float64 DIGing check stays fast
def test_gradient_tracking_tracks_the_average_gradient():
    """Σ_q y_q = Σ_q g_q after every round (the tracking invariant), with minibatches."""
    h = spark_tpu.simulate(gradient_tracking.SPEC, "linear", "two_moons", "ring", rounds=3,
                           clients=4, samples_per_client=20, local_eval_samples=20, devices=1,
                           batch_size=5)
    for y, g in zip(jax.tree.leaves(h.state.tracker), jax.tree.leaves(h.state.grad)):
        np.testing.assert_allclose(y.sum(axis=0), g.sum(axis=0), atol=1e-5)
    assert (h["bytes_per_client"] > 0).all()


# Small arguments per example: every script runs end to end in CI (make test; subprocesses, so slow).
RUNS = {
    "custom_data": ["--rounds=2", "--clients=4"],
    "gradient_tracking": ["--small", "--rounds=3", "--eval_every=3", "--samples_per_client=20"],
    "custom_model": ["--rounds=2", "--clients=4"],
    "custom_graph": ["--rounds=2", "--clients=8"],
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow]) for n in RUNS]  # subprocesses
)
def test_example_runs(name, tmp_path):
    args = RUNS[name] + (["--out", str(tmp_path / "out.json")] if name == "gradient_tracking" else [])
    run = subprocess.run([sys.executable, "-m", f"examples.{name}", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "aggregated" in run.stdout, run.stdout
    if name == "gradient_tracking":
        result = json.loads((tmp_path / "out.json").read_text())
        assert result["gradient_tracking"]["round"] == [3] == result["dgd"]["round"]


def _public(module: str) -> set[str]:
    """The names a public module's __init__ re-exports (plus its public subpackages at the top)."""
    path = os.path.join(ROOT, *module.split("."), "__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom)
             for a in node.names}
    names |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
              if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")} | (PUBLIC_PACKAGES if module == "spark_tpu"
                                                           else set())


PUBLIC_PACKAGES = {"gossip", "topology", "data"}
PUBLIC = {m: _public(m) for m in ["spark_tpu", *(f"spark_tpu.{p}" for p in PUBLIC_PACKAGES)]}


def _private_uses(source: str) -> list[str]:
    """Imports of private or unlisted spark_tpu modules/names, and attributes starting with _."""
    bad, bound = [], {}  # bound: local name -> the spark_tpu module it stands for
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "spark_tpu":
                    if a.name not in PUBLIC:
                        bad.append(f"import {a.name}")
                    bound[a.asname or a.name.split(".")[0]] = a.asname and a.name or "spark_tpu"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spark_tpu"):
            if node.module not in PUBLIC:
                bad.append(f"from {node.module} import ...")
                continue
            for a in node.names:
                if a.name not in PUBLIC[node.module]:
                    bad.append(f"from {node.module} import {a.name}")
                elif f"{node.module}.{a.name}" in PUBLIC:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and not node.attr.endswith("__"):
                bad.append(f"attribute {node.attr}")
            module = _module_of(node.value, bound)
            if module is not None and node.attr not in PUBLIC[module]:
                bad.append(f"{module}.{node.attr}")
    return bad


def _module_of(expr, bound: dict[str, str]) -> str | None:
    """The public spark_tpu module an expression names (``spark_tpu.gossip``), else None."""
    if isinstance(expr, ast.Name):
        return bound.get(expr.id)
    if isinstance(expr, ast.Attribute):
        inner = _module_of(expr.value, bound)
        if inner is not None and f"{inner}.{expr.attr}" in PUBLIC:
            return f"{inner}.{expr.attr}"
    return None


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_uses_only_the_public_api_and_stays_short(name):
    with open(os.path.join(ROOT, "examples", f"{name}.py"), encoding="utf-8") as f:
        source = f.read()
    assert not _private_uses(source), _private_uses(source)
    lines = source.count("\n")
    assert lines <= EXAMPLES[name], f"examples/{name}.py: {lines} lines, promised ≤ {EXAMPLES[name]}"


def test_every_example_is_listed_and_the_checker_catches_private_names():
    found = {f[:-3] for f in os.listdir(os.path.join(ROOT, "examples"))
             if f.endswith(".py") and f != "__init__.py"}
    assert found == set(EXAMPLES) == set(RUNS)
    assert _private_uses("from spark_tpu.simulator._run import History") == [
        "from spark_tpu.simulator._run import ..."]
    assert _private_uses("import spark_tpu\nspark_tpu.simulator.simulate") == [
        "spark_tpu.simulator"]
    assert _private_uses("from spark_tpu import gossip as g\ng._gossip") == [
        "attribute _gossip", "spark_tpu.gossip._gossip"]
    assert _private_uses("from spark_tpu import algorithms") == [
        "from spark_tpu import algorithms"]
    assert _private_uses("import spark_tpu\nspark_tpu.gossip.halo_plan") == [
        "spark_tpu.gossip.halo_plan"]
    assert not _private_uses("import spark_tpu\nfrom spark_tpu import data\n"
                             "spark_tpu.simulate, data.from_arrays, spark_tpu.gossip.mix")


@pytest.mark.slow  # whole simulations; the float64 DIGing check stays fast
def test_an_ntk_method_trains_a_module_that_is_not_the_packages():
    """docs/extending.md §3: any Equinox module works with the NTK methods (generic kernel)."""
    rng = np.random.default_rng(1)
    model = Linear(jnp.asarray(rng.normal(size=(2, 2)) * 0.1), jnp.zeros(2, jnp.float64))
    h = spark_tpu.simulate("ntk_dfl", model, "two_moons", "ring", rounds=2, clients=4,
                           samples_per_client=20, local_eval_samples=50, devices=1,
                           horizons=(2, 4), lr=0.5)
    assert np.isfinite(h["train_loss"]).all() and h["train_loss"][-1] < h["train_loss"][0]
