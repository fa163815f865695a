"""Structured trace kernel and Jᵀr against the materialized Jacobian (docs/ntk_step.md §2, §4)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_tpu.models import CNN, MLP, NTKMLP
from spark_tpu.ntk import (
    jacobian_transpose_product,
    materialized_jacobian,
    trace_kernel,
    trace_kernel_materialized,
)

BUILDERS = {
    "linear": lambda k, dt: MLP((3, 4), hidden=(), num_classes=5, key=k, dtype=dt),
    "mlp1": lambda k, dt: MLP((3, 4), hidden=(9,), num_classes=4, key=k, dtype=dt),
    "mlp3": lambda k, dt: MLP((12,), hidden=(7, 11, 6), num_classes=3, key=k, dtype=dt),
    "ntk_sigmoid": lambda k, dt: NTKMLP(
        (12,), (16, 8), 3, key=k, s_w=1.2, s_b=0.1, activation="sigmoid", dtype=dt
    ),
    "ntk_tanh": lambda k, dt: NTKMLP((12,), 10, 2, key=k, activation="tanh", dtype=dt),
    "cnn": lambda k, dt: CNN((8, 8, 2), 3, key=k, channels=(3, 4), dtype=dt),
}


def _data(model, n, dtype, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, *model.input_shape), dtype)
    mask = jnp.arange(n) < n - 2
    return x, mask


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-10)])
def test_structured_kernel_equals_materialized(name, dtype, tol):
    model = BUILDERS[name](jax.random.key(1), dtype)
    x, mask = _data(model, 7, dtype)
    kernel = jax.jit(trace_kernel)(model, x, mask)
    assert kernel.shape == (7, 7) and kernel.dtype == dtype
    np.testing.assert_allclose(kernel, kernel.T, rtol=0, atol=10 * tol * float(kernel.max()))
    jac = np.asarray(jax.jit(materialized_jacobian)(model, x), np.float64)
    m = np.asarray(mask, np.float64)
    truth = np.einsum("ncp,mcp->nm", jac, jac) / jac.shape[1] * np.outer(m, m)
    assert _rel(kernel, truth) <= tol
    np.testing.assert_array_equal(np.asarray(kernel)[~np.asarray(mask)], 0.0)
    np.testing.assert_array_equal(np.asarray(kernel)[:, ~np.asarray(mask)], 0.0)


@pytest.mark.parametrize("name", ["mlp3", "ntk_sigmoid", "cnn"])
def test_structured_kernel_equals_materialized_where_grams_are_blocked(name):
    """From 384 rows every Gram matrix u uᵀ is computed as its 6 upper 3 × 3 blocks
    (`_self_gram`); 401 rows (uneven blocks), float64, against the materialized Jacobian."""
    model = BUILDERS[name](jax.random.key(2), jnp.float64)
    x, mask = _data(model, 401, jnp.float64, seed=3)
    kernel = jax.jit(trace_kernel)(model, x, mask)
    np.testing.assert_allclose(kernel, kernel.T, rtol=0, atol=1e-12 * float(np.abs(kernel).max()))
    jac = np.asarray(jax.jit(materialized_jacobian)(model, x), np.float64)
    m = np.asarray(mask, np.float64)
    truth = np.einsum("ncp,mcp->nm", jac, jac) / jac.shape[1] * np.outer(m, m)
    assert _rel(kernel, truth) <= 1e-10


def test_kernel_is_nonzero_for_relu_inputs_not_just_last_layer():
    # Guards the layer sum: the last layer alone (a·a + 1) must not already match.
    model = BUILDERS["mlp3"](jax.random.key(2), jnp.float64)
    x, _ = _data(model, 6, jnp.float64)
    full = jax.jit(trace_kernel_materialized)(model, x)
    _, inputs, _ = jax.vmap(model.record)(x)
    last_only = inputs[-1] @ inputs[-1].T + 1.0
    assert _rel(last_only, full) > 1e-2


def test_kernel_vmaps_over_stacked_clients():
    keys = jax.random.split(jax.random.key(3), 3)
    stacked = eqx.filter_vmap(lambda k: BUILDERS["mlp1"](k, jnp.float64))(keys)
    x = jax.random.normal(jax.random.key(4), (3, 5, 3, 4), jnp.float64)
    mask = jnp.arange(15).reshape(3, 5) % 4 != 0
    batched = eqx.filter_jit(eqx.filter_vmap(trace_kernel))(stacked, x, mask)
    reference = jax.jit(trace_kernel_materialized)
    for q in range(3):
        one = BUILDERS["mlp1"](keys[q], jnp.float64)
        np.testing.assert_allclose(
            batched[q], reference(one, x[q], mask[q]), rtol=1e-10, atol=1e-12
        )


def test_trace_kernel_rejects_unstructured_models():
    linear = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    with pytest.raises(TypeError, match="trace_kernel_materialized"):
        trace_kernel(linear, jnp.ones((2, 3), jnp.float32))


def _float64(tree):
    """The same values in float64 (an exact cast), for a float64 truth of a float32 computation."""
    return jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree
    )


# float32, the production dtype: every entry of Jᵀr is a sum of N·C = 18 products of activations
# and backpropagated terms, each rounded to eps32 ≈ 1.2e-7, so its error is bounded by about
# 18 · eps32 ≈ 2e-6 times the largest term; 1e-5 of the largest entry leaves a margin of 5 (the
# truth is float64 on the same float32 values, so only the float32 arithmetic is measured;
# measured: ≤ 1.7e-7).
@pytest.mark.parametrize("dtype,rtol,atol", [(jnp.float64, 1e-10, 0.0), (jnp.float32, 0.0, 1e-5)])
@pytest.mark.parametrize("name", ["mlp3", "ntk_sigmoid", "cnn"])
def test_jacobian_transpose_product_equals_explicit(name, dtype, rtol, atol):
    model = BUILDERS[name](jax.random.key(5), dtype)
    x, _ = _data(model, 6, dtype, seed=1)
    r = jax.random.normal(jax.random.key(6), (6, 3), dtype)
    jtr = jax.jit(jacobian_transpose_product)(model, x, r)
    flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(jtr)])
    assert flat.dtype == dtype
    jac = np.asarray(jax.jit(materialized_jacobian)(_float64(model), _float64(x)))
    want = np.einsum("ncp,nc->p", jac, np.asarray(r, np.float64))
    np.testing.assert_allclose(flat, want, rtol=rtol, atol=atol * np.abs(want).max())
    # Same structure as the model's array part, so it applies as an update.
    assert jax.tree.structure(jtr) == jax.tree.structure(eqx.filter(model, eqx.is_array))
