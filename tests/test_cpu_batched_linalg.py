"""Batched decompositions inside ``shard_map`` on CPU devices do not deadlock (spark_tpu/ntk/_batching.py).

jaxlib splits a batched ``eigh``/``qr`` over XLA:CPU's intra-op thread pool and blocks the calling
pool thread; with two emulated devices each blocked in one, a 2-thread pool has no thread left to
run the pieces and the program hangs with the CPU idle. The exponential solver vmapped over two
clients per device on two devices did exactly that. The child process is pinned to two CPUs so
the pool has two threads on any machine, which made the plain ``jnp.linalg`` version hang every
time (N = 96, horizons 5 and 10, 3 of 3 tries at 2026-12-04); a hang fails the test by timeout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, sys
os.sched_setaffinity(0, [int(c) for c in os.environ["PIN_CPUS"].split(",")])  # before JAX starts
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from spark_tpu import ntk

n, c, per = 96, 10, 2
rng = np.random.default_rng(0)
x = rng.normal(size=(2 * per, n, 32))
kernel = np.einsum("bnd,bmd->bnm", x, x) / 8 + 0.5
f0 = rng.normal(size=(2 * per, n, c)) * 0.1
y = np.eye(c)[rng.integers(0, c, size=(2 * per, n))]

def solve(k, f, yy):
    out = ntk.solve_function_space(k, f, lambda g: jax.nn.softmax(g, -1) - yy, eta=0.05,
                                   horizons=(5, 10), num_samples=n, solver="exponential")
    return out.residual_sums

mesh = Mesh(np.array(jax.devices()), ("d",))
batched = jax.jit(jax.shard_map(jax.vmap(solve), mesh=mesh, in_specs=P("d"), out_specs=P("d"),
                                check_vma=False))
got = np.asarray(batched(kernel, f0, y))
one = jax.jit(solve)
want = np.stack([np.asarray(one(kernel[i], f0[i], y[i])) for i in range(2 * per)])
print(json.dumps({"error": float(np.abs(got - want).max() / np.abs(want).max())}))
"""


@pytest.mark.slow  # a child process with its own compiles (~15 s)
def test_exponential_solver_vmapped_on_two_cpu_devices_returns():
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:2])
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", PIN_CPUS=cpus)
    try:  # (the child pins itself: a preexec_fn would fork this JAX process)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("vmapped exponential solve on 2 CPU devices did not return in 300 s (deadlock)")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The batched and one-at-a-time solves run the same float64 arithmetic.
    assert result["error"] < 1e-10, result


def test_batch_max_and_any_are_plain_values_unbatched_and_batch_reductions_under_vmap():
    """`batch_max` / `batch_any` (the exponential solver's dense-output bucket and snapshot
    branch): the value itself on one client; under vmap (nested too) the batch's max / any,
    unbatched, so a ``lax.switch`` on it stays one branch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from spark_tpu.ntk._batching import batch_any, batch_max

    x = jnp.asarray([3, 7, 1, 5], jnp.int32)
    assert int(batch_max(x[0])) == 3 and bool(batch_any(x[0] > 4)) is False
    np.testing.assert_array_equal(jax.vmap(batch_max)(x), [7, 7, 7, 7])
    np.testing.assert_array_equal(jax.vmap(lambda v: batch_any(v > 6))(x), [True] * 4)
    np.testing.assert_array_equal(jax.vmap(lambda v: batch_any(v > 9))(x), [False] * 4)
    assert jax.vmap(batch_max)(x[:0]).shape == (0,)  # an empty batch is no error
    nested = jax.vmap(jax.vmap(batch_max))(x.reshape(2, 2))
    np.testing.assert_array_equal(nested, [[7, 7], [7, 7]])
    branches = [lambda v: v * 0, lambda v: v * 10]  # the index is the batch's, not each client's
    picked = jax.vmap(lambda v: jax.lax.switch(jnp.minimum(batch_max(v), 1), branches, v))(x)
    np.testing.assert_array_equal(picked, 10 * np.asarray(x))
