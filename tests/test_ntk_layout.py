"""The class-major residuals and the transposed kernel product the solvers use for speed on CPU
(spark_tpu/ntk/_objective.py `RowResidual`, _adaptive.py `transposed_product`), checked against
formulas written out here in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_tpu import ntk

N, C = 7, 4


def _softmax(f, t=1.0):
    e = np.exp(f / t - (f / t).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def data():
    r = np.random.default_rng(0)
    f = r.standard_normal((N, C))
    y = np.eye(C)[r.integers(0, C, N)]
    teacher = r.standard_normal((N, C))
    mask = np.array([True] * (N - 2) + [False] * 2)
    return f, y, teacher, mask


def _expected(name, f, y, teacher, mask):
    if name == "cross_entropy":
        out = _softmax(f) - y
    elif name == "mse":
        out = f - y
    else:  # λ = 0.3, T = 2
        out = 0.7 * (_softmax(f) - y) + 0.3 * 2.0 * (_softmax(f, 2.0) - _softmax(teacher, 2.0))
    return np.where(mask[:, None], out, 0.0)


@pytest.mark.parametrize("name", ["cross_entropy", "mse", "soft_label"])
def test_row_residual_in_both_layouts_matches_the_numpy_formula(data, name):
    f, y, teacher, mask = data
    if name == "soft_label":
        obj = ntk.soft_label_regularized(y, teacher, mask, weight=0.3, temperature=2.0)
    else:
        obj = getattr(ntk, name)(y, mask)
    expected = _expected(name, f, y, teacher, mask)
    np.testing.assert_allclose(obj.residual(jnp.asarray(f)), expected, atol=1e-6)
    classes_first = ntk.classes_first(obj.residual)
    np.testing.assert_allclose(classes_first(jnp.asarray(f.T)), expected.T, atol=1e-6)
    # Its JVP (what the exponential solver's projection uses) is the transposed JVP.
    t = np.random.default_rng(1).standard_normal((N, C))
    jvp_rows = jax.jvp(obj.residual, (jnp.asarray(f),), (jnp.asarray(t),))[1]
    jvp_cols = jax.jvp(classes_first, (jnp.asarray(f.T),), (jnp.asarray(t.T),))[1]
    np.testing.assert_allclose(jvp_cols, np.asarray(jvp_rows).T, atol=1e-6)


def test_a_plain_callable_residual_is_transposed(data):
    f = data[0]
    calls = []

    def residual(x):
        calls.append(x.shape)
        return 2.0 * x

    np.testing.assert_allclose(ntk.classes_first(residual)(jnp.asarray(f.T)), 2.0 * f.T)
    assert calls == [(N, C)]


def test_transposed_product_is_x_times_k():
    from spark_tpu.ntk._adaptive import major_dot, transposed_product

    r = np.random.default_rng(2)
    a = r.standard_normal((N, N))
    kernel = a @ a.T
    x = r.standard_normal((C, N))
    got = jax.jit(transposed_product)(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    np.testing.assert_allclose(got, x @ kernel, rtol=1e-5, atol=1e-5)
    b = r.standard_normal((N, 3))
    np.testing.assert_allclose(major_dot(jnp.asarray(x.T), jnp.asarray(b)), x @ b, rtol=1e-5)


@pytest.mark.parametrize("name", ["cross_entropy", "mse", "soft_label"])
def test_closed_form_row_jacobians_match_autodiff_of_each_row(data, name):
    """The built-in residuals' per-row Jacobians (`RowResidual.jacobian`, what the exponential
    solver linearizes with every step) against ``jax.jacfwd`` of the NumPy-checked residual,
    row by row; masked rows are zero."""
    f, y, teacher, mask = (jnp.asarray(a) for a in data)
    if name == "soft_label":
        obj = ntk.soft_label_regularized(
            y, teacher, mask, weight=jnp.asarray(0.3), temperature=jnp.asarray(2.0)
        )
    else:
        obj = getattr(ntk, name)(y, mask)
    assert obj.residual.jacobian is not None
    closed = jax.jit(obj.residual.jacobian)(f.T)  # [b, a, n]
    per_row = jax.jacfwd(obj.residual)(f)  # [n, a, m, b]: ∂r_na/∂f_mb
    want = np.stack([np.asarray(per_row[i, :, i, :]).T for i in range(N)], axis=-1)  # [b, a, n]
    np.testing.assert_allclose(closed, want, atol=1e-6)
    assert not np.any(np.asarray(closed)[..., ~np.asarray(mask)])
    # The fallback for a residual without a closed form (one JVP per class) agrees.
    plain = ntk.row_jacobian(lambda g: obj.residual(g), f.T)
    np.testing.assert_allclose(plain, want, atol=1e-6)
