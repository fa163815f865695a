"""Random projections of Jacobians against explicit projection matrices (docs/spark.md §5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_tpu.models import CNN, MLP
from spark_tpu.ntk import (
    back_project,
    jacobian_transpose_product,
    layer_projections,
    materialized_jacobian,
    project_jacobian,
    projected_trace_kernel,
    trace_kernel,
)

F64 = jnp.float64


def _models():
    return {
        "mlp": MLP((5,), hidden=(6,), num_classes=3, key=jax.random.key(0), dtype=F64),
        "cnn": CNN((4, 4, 1), 3, key=jax.random.key(1), channels=(2, 2), dtype=F64),
    }


def _layer_matrices(model, x):
    """Per layer, explicit Jacobian matrices J̃ [N, C, rows·cols] from the materialized J."""
    jac = np.asarray(jax.jit(materialized_jacobian)(model, x))
    out, offset = [], 0
    for layer in model.layers:
        w_size, b_size = layer.weight.size, layer.bias.size
        w = jac[..., offset : offset + w_size]
        b = jac[..., offset + w_size : offset + w_size + b_size]
        offset += w_size + b_size
        n, c = jac.shape[:2]
        if layer.weight.ndim == 2:
            w = w.reshape(n, c, *layer.weight.shape)
        else:
            w = np.swapaxes(w.reshape(n, c, -1, layer.weight.shape[-1]), 2, 3)
        out.append(np.concatenate([w, b[..., None]], axis=-1).reshape(n, c, -1))
    return out


def _dense_matrix(factors):
    if len(factors) == 1:
        return np.asarray(factors[0], np.float64)
    return np.kron(np.asarray(factors[0], np.float64), np.asarray(factors[1], np.float64))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["gaussian", "kronecker"])
def test_projection_equals_explicit_j_times_p(name, kind):
    model = _models()[name]
    x = jax.random.normal(jax.random.key(2), (5, *model.input_shape), F64)
    projected = jax.jit(lambda m, xx: project_jacobian(m, xx, k=12, seed=7, kind=kind))(model, x)
    mats = layer_projections(model, k=12, seed=7, kind=kind)
    for jp, jac, factors in zip(projected, _layer_matrices(model, x), mats):
        p = _dense_matrix(factors)
        assert p.shape[1] <= 12 or p.shape[0] == p.shape[1]  # never more than J
        np.testing.assert_allclose(jp, jac @ p, rtol=1e-10, atol=1e-12)
    r = jax.random.normal(jax.random.key(3), (5, 3), F64)
    back = back_project(model, projected, r, k=12, seed=7, kind=kind)
    for layer, jp, jac, factors in zip(back.layers, projected, _layer_matrices(model, x), mats):
        p = _dense_matrix(factors)
        expected = p @ np.einsum("nck,nc->k", np.asarray(jp), np.asarray(r))
        got = np.concatenate(
            [
                np.asarray(layer.weight).reshape(-1, layer.weight.shape[-1]).T
                if layer.weight.ndim == 4
                else np.asarray(layer.weight),
                np.asarray(layer.bias)[:, None],
            ],
            axis=-1,
        ).ravel()
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


# Float32, the production dtype: the projected Jacobian and the back-projection of the float32
# MLP against float64 products of the same values (model, data and projection matrices upcast).
# An entry of J·P is a sum of ≤ 7 (k_l-sized) products of float32 Jacobian entries, themselves a
# few roundings each; an entry of P(JP)ᵀr adds N·C·k = 180 more: round-off ≲ 200 · eps32 ≈ 2.4e-5
# of the terms' size, norm-wise far less (errors of random sign); 1e-5 relative in norm
# (measured: ≤ 1.3e-7 for both). Slow, as the float64 test above (compilation).
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gaussian", "kronecker"])
def test_projection_in_float32_matches_float64(kind):
    f32, f64 = jnp.float32, jnp.float64
    model = MLP((5,), hidden=(6,), num_classes=3, key=jax.random.key(0), dtype=f32)
    x = jax.random.normal(jax.random.key(2), (5, 5), f32)
    r = jax.random.normal(jax.random.key(3), (5, 3), f32)
    projected = jax.jit(lambda m, xx: project_jacobian(m, xx, k=12, seed=7, kind=kind))(model, x)
    back = back_project(model, projected, r, k=12, seed=7, kind=kind)
    model64 = jax.tree.map(lambda a: a.astype(f64) if jnp.issubdtype(a.dtype, jnp.floating)
                           else a, model)  # fmt: skip
    mats = layer_projections(model, k=12, seed=7, kind=kind)
    jacs = _layer_matrices(model64, x.astype(f64))
    r64 = np.asarray(r, np.float64)
    for layer, jp, jac, factors in zip(back.layers, projected, jacs, mats):
        assert jp.dtype == f32 and layer.weight.dtype == f32
        p = _dense_matrix(factors)
        want = jac @ p
        assert _rel(jp, want) <= 1e-5
        expected = p @ np.einsum("nck,nc->k", want, r64)
        got = np.concatenate(
            [np.asarray(layer.weight), np.asarray(layer.bias)[:, None]], axis=-1
        ).ravel()
        assert _rel(got, expected) <= 1e-5


@pytest.mark.parametrize("kind", ["gaussian", "kronecker"])
def test_projected_kernel_and_back_projection_are_unbiased(kind):
    model = _models()["mlp"]
    x = jax.random.normal(jax.random.key(4), (6, 5), F64)
    mask = jnp.arange(6) < 5
    exact = trace_kernel(model, x, mask)
    r = jnp.where(mask[:, None], jax.random.normal(jax.random.key(5), (6, 3), F64), 0.0)
    exact_jtr = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(
        jacobian_transpose_product(model, x, r))])  # fmt: skip

    @jax.jit
    def draw(key):
        jp = project_jacobian(model, x, k=8, seed=key, kind=kind)
        back = back_project(model, jp, r, k=8, seed=key, kind=kind)
        flat = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(back)])
        return projected_trace_kernel(model, x, mask, k=8, seed=key, kind=kind), flat

    kernels, backs = jax.vmap(draw)(jax.random.split(jax.random.key(6), 4000))
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    single, mean = rel(kernels[0], exact), rel(kernels.mean(0), exact)
    assert mean < 0.05 and mean < single / 5  # error shrinks like 1/sqrt(draws)
    assert rel(backs.mean(0), exact_jtr) < 0.1 < rel(backs[0], exact_jtr)
    np.testing.assert_array_equal(np.asarray(kernels[:, 5]), 0.0)


def test_full_size_projection_is_exact_and_errors():
    model = _models()["mlp"]
    x = jax.random.normal(jax.random.key(7), (4, 5), F64)
    full = projected_trace_kernel(model, x, k=10_000, seed=0)
    np.testing.assert_allclose(full, trace_kernel(model, x), rtol=1e-12)
    with pytest.raises(ValueError, match="Unknown projection kind"):
        projected_trace_kernel(model, x, k=4, seed=0, kind="sparse")
