"""One conformance suite for every registered algorithm (issue #16; docs/extending.md §2).

Every algorithm in `spark_tpu.algorithms.ALGORITHMS`, and the gradient-tracking example of
``examples/gradient_tracking.py`` (by its import path, when the file is there), passes:

1. a repeated run is bit-identical (metrics and final state);
2. 1 and 8 devices give the same metrics and final state (to 1e-5);
3. a chunk of L rounds is traced (and compiled) once, however many chunks of L run (and, for
   dgd, a chunk of another length once more);
4. a run interrupted after its checkpoint at round K and resumed gives the uninterrupted run's
   metrics and state bit-identically (also for an algorithm named by import path);
5. ``bytes_sent`` is a per-client metric, finite and ≥ 0, positive in every round for every
   algorithm that communicates (centralized SGD, the pooled-data reference, sends nothing), and
   for the gossip algorithms larger for a client with more neighbours (a star's hub);
6. chunks run with host-to-device copies banned (the guard is verified to be live).

and every algorithm builds from its reference configuration (0). Each algorithm's runs are made
once per module and shared by the checks (`Runs`), and a module-local persistent compilation
cache compiles each distinct program once. The settings are the smallest that exercise
everything: 10 clients of two_moons (on 8 devices: 16 slots, 6 of them padding), a
time-varying 3-regular graph and a star (uneven degrees), 4 rounds in 2 chunks of 2, horizons
(2, 4) for the NTK methods. Tiers: the cheapest gradient method (dgd) runs checks 1, 2, 3, 5
and 6 in the fast tier (every algorithm check 0); the rest are marked ``slow`` here,
not in conftest.py. Run it all (about 3.5 CPU-minutes) with
``python -m pytest tests/test_conformance.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spark_tpu
from spark_tpu import algorithms, checkpoint, models, simulator
from spark_tpu.simulator import _build, _run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The example algorithms, by import path (not registered: naming them is how a user runs them):
# every AlgorithmSpec that examples/gradient_tracking.py defines, once that file exists.
EXAMPLE_MODULE = "examples.gradient_tracking"
if REPO not in sys.path:  # examples/ is a folder of the repository, not an installed package
    sys.path.append(REPO)


def _example_specs() -> list[str]:
    if not os.path.isfile(os.path.join(REPO, *EXAMPLE_MODULE.split(".")) + ".py"):
        return []
    module = importlib.import_module(EXAMPLE_MODULE)
    return [f"{EXAMPLE_MODULE}:{attribute}" for attribute, value in vars(module).items()
            if isinstance(value, algorithms.AlgorithmSpec)]


EXAMPLES = _example_specs()


def plain_build(ctx: algorithms.BuildContext) -> algorithms.Algorithm:
    """DGD as a bare build function: what ``--algorithm=package.module:build`` runs (its reference
    is ``lr=0.1, batch_size=10``; `algorithms.as_spec`)."""
    return algorithms.consensus(ctx.model, lr=ctx.hyper["lr"], batch_size=ctx.hyper["batch_size"],
                                loss=ctx.config.loss)


# A build function named by import path: loaded (not registered) when a Config names it.
PLAIN = f"{__name__}:plain_build"

# The built-ins, as registered when this module is imported.
BUILTINS = algorithms.ALGORITHMS.names()
# Algorithms that send nothing, by design: centralized SGD is the pooled-data reference, with no
# clients exchanging anything (docs/metrics.md §5 counts it 0).
SILENT = {"centralized"}
# The fast tier for checks 1, 2 and 5: the cheapest gradient method and NTK-DFL. Checks 3 and 6
# keep dgd in the fast tier; check 0 (no compilation) runs every algorithm there.
FAST = {"dgd"}  # ntk_dfl and the rest run in the full suite (make test)

SETTINGS = dict(
    dataset="two_moons", model="mlp", clients=10, samples_per_client=20, partition="dirichlet",
    alpha=0.5, rounds=4, eval_every=2, local_eval_samples=50, seed=0, devices=8,
)
GRAPH = dict(topology="regular", degree=3, graph_pool=4)
STAR = dict(topology="star")  # the hub (client 0) neighbours every client; the others only it
NTK = dict(horizons=(2, 4))


def _cases(fast=frozenset(FAST), extra=()):
    names = list(BUILTINS) + EXAMPLES + list(extra)
    return [pytest.param(n, id=_id(n), marks=() if n in fast else pytest.mark.slow)
            for n in names]


def _id(name: str) -> str:
    """A registered name as is; an import path by its module's last part (and its attribute)."""
    if name == PLAIN:
        return "build_function_by_import_path"
    if ":" not in name:
        return name
    module, attribute = name.split(":")
    return module.rsplit(".", 1)[-1] + ("" if len(EXAMPLES) == 1 else f"-{attribute}")


def fields(name: str, **changes) -> dict:
    """The suite's run of ``name`` as Config fields: graph options for the gossip algorithms
    only, horizons for the algorithms that read them (any other algorithm-specific option would
    be refused)."""
    spec = algorithms.get(name)
    out = dict(SETTINGS, algorithm=name)
    if spec.uses_graph:
        out.update(GRAPH)
    if spec.reads("horizons"):
        out.update(NTK)
    out.update(changes)
    return out


def config(name: str, **changes) -> simulator.Config:
    return simulator.Config(**fields(name, **changes))


def simulate(name: str, callbacks=(), **changes) -> simulator.History:
    """The run through the public API (`spark_tpu.simulate`, ``devices=`` and all); its Config is
    exactly ``config(name, **changes)``, the one a checkpointer is given."""
    f = fields(name, **changes)
    history = spark_tpu.simulate(f.pop("algorithm"), f.pop("model"), f.pop("dataset"),
                                 f.pop("topology", "regular"), callbacks=callbacks, **f)
    assert history.summary["config"] == config(name, **changes).to_dict()
    return history


def leaves(state) -> list[np.ndarray]:
    """The state's leaves as numpy arrays (a PRNG key as its key data)."""
    out = []
    for x in jax.tree.leaves(state):
        if jnp.issubdtype(getattr(x, "dtype", np.float64), jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(x))
    return out


def numbers(history: simulator.History) -> dict[str, np.ndarray]:
    """The per-round metrics that a rerun must reproduce (all but wall-clock seconds)."""
    return {k: v for k, v in history.metrics.items() if k != "seconds"}


def assert_identical(a: simulator.History, b: simulator.History):
    ma, mb = numbers(a), numbers(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert np.array_equal(ma[k], mb[k], equal_nan=True), (k, ma[k], mb[k])
    la, lb = leaves(a.state), leaves(b.state)
    assert len(la) == len(lb)
    for i, (x, y) in enumerate(zip(la, lb)):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), f"state leaf {i}"


class CountTraces:
    """Wraps a Simulation's algorithm so that every trace of its round function is counted (the
    wrapper is installed before any chunk is compiled)."""

    def __init__(self, sim: simulator.Simulation):
        inner = sim.setup.algorithm
        self.count = 0

        def counting_round(state, ctx):
            self.count += 1
            return inner.round(state, ctx)

        sim.setup.algorithm = algorithms.Algorithm(inner.init, counting_round)


def guard_is_live() -> bool:
    """True when an implicit host-to-device copy raises here and now."""
    try:
        jnp.asarray(np.ones(3)) + 1
    except Exception as e:  # noqa: BLE001 - the guard's error type is jaxlib-internal
        if "isallowed host-to-device transfer" in str(e):
            return True
        raise
    return False


class ProbeGuard:
    """Wraps ``sim.chunk`` so that each compiled chunk, when it is called, first records whether
    the host-to-device transfer guard is live at that moment (inside `Simulation.advance`)."""

    def __init__(self, sim: simulator.Simulation):
        self.seen: list[bool] = []
        chunk = sim.chunk

        def probed(length):
            fn = chunk(length)

            def call(*args):
                self.seen.append(guard_is_live())
                return fn(*args)

            return call

        sim.chunk = probed


class Interrupted(Exception):
    pass


class StopAfter(_run.Callback):
    """Stops a run (as a crash would) once round ``k`` is done, after the checkpointer's save."""

    def __init__(self, k: int):
        self.k = k

    def after_chunk(self, sim, rows):
        if int(rows[-1]["round"]) == self.k:
            raise Interrupted(self.k)


@dataclasses.dataclass
class Chunks:
    """A Simulation advanced chunk by chunk: its round traces after each chunk, the raw metrics
    of each chunk ([rounds, clients] by client id), and the chunk lengths it compiled."""

    sim: simulator.Simulation
    traces: CountTraces
    probe: ProbeGuard
    traces_after: list = dataclasses.field(default_factory=list)
    metrics: list = dataclasses.field(default_factory=list)
    programs: list = dataclasses.field(default_factory=list)


class Runs:
    """Each algorithm's runs, made on first use and shared by every check of the module."""

    def __init__(self):
        self._cache: dict = {}

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def baseline(self, name) -> simulator.History:
        """4 rounds in 2 chunks on 8 devices."""
        return self._get((name, "baseline"), lambda: simulate(name))

    def repeat(self, name) -> simulator.History:
        return self._get((name, "repeat"), lambda: simulate(name))

    def one_device(self, name) -> simulator.History:
        return self._get((name, "1 device"), lambda: simulate(name, devices=1))

    def chunks(self, name) -> "Chunks":
        """A Simulation on a star (degrees 9 and 1), 8 devices, with its round traces counted and
        the transfer guard probed, advanced by 3 chunks of 2 rounds."""

        def make():
            sim = simulator.Simulation(config(name, **STAR))
            c = Chunks(sim, CountTraces(sim), ProbeGuard(sim))
            for _ in range(3):
                c.metrics.append(sim.advance(2))
                c.traces_after.append(c.traces.count)
            c.programs = sorted(sim._chunks)
            return c

        return self._get((name, "chunks"), make)


@pytest.fixture(scope="module")
def runs():
    return Runs()


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """A persistent compilation cache for this module only, so that the runs of one program (the
    baseline, its repeat, the interrupted and the resumed run) compile it once: each run still
    traces and lowers its own program, and only an identical program is reused."""
    from jax.experimental.compilation_cache import compilation_cache

    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    saved = {k: getattr(jax.config, k) for k in settings}
    for k, v in settings.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


# 0. Every algorithm builds from the suite's Config, its own defaults and reference values.


@pytest.mark.parametrize("name", _cases(fast=set(BUILTINS) | set(EXAMPLES)))
def test_builds_from_its_config(name):
    """No compilation: the spec's build function, as the simulator calls it (SPARK's build
    once resolved its options twice and refused its own default projection_dim)."""
    cfg = config(name)
    params, model = algorithms.split_model(models.make_model("mlp", (2,), 2,
                                                             key=jax.random.key(0)))
    algorithm = _build.make_algorithm(cfg, model, 2)
    assert isinstance(algorithm, algorithms.Algorithm)
    state = algorithm.init(jax.tree.map(lambda p: jnp.stack([p, p]), params))
    assert all(np.shape(x)[0] == 2 for x in jax.tree.leaves(state))  # a leading client axis


# 1. A repeated run is bit-identical.


@pytest.mark.parametrize("name", _cases())
def test_repeated_run_is_bit_identical(runs, name):
    assert_identical(runs.baseline(name), runs.repeat(name))


# 2. 1 and 8 devices.


@pytest.mark.parametrize("name", _cases())
def test_same_metrics_and_state_on_1_and_8_devices(runs, name):
    """10 clients on 8 devices (padded to 16 slots, exchanges within and across devices) and on 1
    (no padding, no exchange between devices)."""
    eight, one = runs.baseline(name), runs.one_device(name)
    m8, m1 = numbers(eight), numbers(one)
    assert m8.keys() == m1.keys()
    for k in m8:
        np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for i, (x, y) in enumerate(zip(leaves(one.state), leaves(eight.state), strict=True)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=f"state leaf {i}")


# 3. One trace per chunk length.


@pytest.mark.parametrize("name", _cases(fast={"dgd"}))
def test_round_is_traced_once_per_chunk_length(runs, name):
    """3 chunks of 2 rounds: one trace and one compiled program, called 3 times (each call takes
    the state the previous one returned: its structure, dtypes and sharding must not drift)."""
    c = runs.chunks(name)
    assert c.traces_after == [1, 1, 1]
    assert c.programs == [2]


def test_a_new_chunk_length_is_traced_once_more(runs):
    """Continuing the dgd chunks above with 2 chunks of 3 rounds: one more trace and program.
    The per-length cache is the simulator's, the same for every algorithm, so one checks it."""
    c = runs.chunks("dgd")
    before, rounds = c.traces.count, int(c.sim.round)
    c.sim.advance(3)
    c.sim.advance(3)
    assert c.traces.count == before + 1
    assert sorted(c.sim._chunks) == [2, 3] and int(c.sim.round) == rounds + 6


# 4. Checkpoint round trip.


@pytest.mark.parametrize("name", _cases(fast=set(), extra=[PLAIN]))
def test_resume_from_a_checkpoint_is_bit_identical(runs, name, tmp_path):
    """Interrupted after the checkpoint at round 2 of 4, then resumed from it (``--resume``):
    the uninterrupted run's metrics, summary and state, bit for bit."""
    cfg = config(name, checkpoint_every=2)
    with pytest.raises(Interrupted):
        simulate(name, checkpoint_every=2, callbacks=[
            checkpoint.CheckpointHooks(cfg, str(tmp_path), resume=False), StopAfter(2)])
    saved = sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit())
    assert saved == [2]
    hooks = checkpoint.CheckpointHooks(cfg, str(tmp_path), resume=True)
    resumed = simulate(name, checkpoint_every=2, callbacks=[hooks])
    assert hooks.restored_from == 2
    reference = runs.baseline(name) if name != PLAIN else runs.baseline("dgd")
    assert_identical(resumed, reference)
    for key in ("final", "horizon_histogram", "best_aggregated_acc", "rounds_to_target"):
        assert resumed.summary[key] == reference.summary[key], key


def test_a_build_function_by_import_path_is_dgd():
    """The import-path case above compares against dgd's baseline: the same algorithm and
    reference hyperparameters, loaded through `algorithms.as_spec`."""
    spec, dgd = algorithms.get(PLAIN), algorithms.get("dgd")
    assert PLAIN not in algorithms.ALGORITHMS.names()  # loaded, not registered
    assert dict(spec.reference) == dict(dgd.reference) and spec.uses_graph


# 5. Bytes.


@pytest.mark.parametrize("name", _cases())
def test_bytes_sent_is_counted(runs, name):
    cfg = config(name)
    chunks = runs.chunks(name).metrics
    for m in chunks:
        assert "bytes_sent" in m
        sent = np.asarray(m["bytes_sent"], np.float64)[:, : cfg.clients]  # [rounds, clients]
        assert np.all(np.isfinite(sent)) and np.all(sent >= 0), sent
        if name in SILENT:
            assert np.all(sent == 0), sent
        else:
            assert np.all(sent.sum(axis=1) > 0), sent  # every round sends something
    # The history's byte columns add up the per-client counts (of the 3-regular graph).
    h = runs.baseline(name)
    per_client, total = h["bytes_per_client"], h["bytes_total"]
    assert np.all(np.isfinite(per_client)) and np.all(per_client >= 0)
    np.testing.assert_allclose(total, np.cumsum(per_client) * cfg.clients, rtol=1e-12)
    if algorithms.get(name).uses_graph:
        # More neighbours, more bytes: on the star, the hub sends more than every leaf.
        star = _build.make_topology(config(name, **STAR)).mixing_matrices()[0]
        degree = np.count_nonzero(star, axis=1) - 1
        assert degree.tolist() == [cfg.clients - 1] + [1] * (cfg.clients - 1)
        for m in chunks:
            sent = np.asarray(m["bytes_sent"], np.float64)[:, : cfg.clients]
            assert np.all(sent[:, :1] > sent[:, 1:]), sent


# 6. No host-to-device copy inside a chunk.


@pytest.mark.parametrize("name", _cases(fast={"dgd"}))
def test_chunks_run_with_host_to_device_copies_banned(runs, name):
    """Every chunk ran (without error) while an implicit host-to-device copy raised."""
    probe = runs.chunks(name).probe
    assert len(probe.seen) >= 3 and all(probe.seen), probe.seen
    assert not guard_is_live()  # the guard is the chunk's, not the test's
