"""Models: parameter counts, initialization statistics, parameterization, stacking."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spark_tpu.models import CNN, MLP, NTKMLP, make_model, num_parameters


def test_default_mlp_has_79510_parameters():
    model = MLP((28, 28), key=jax.random.key(0))
    assert num_parameters(model) == 79_510
    assert [layer.weight.shape for layer in model.layers] == [(100, 784), (10, 100)]
    assert all(layer.weight.dtype == jnp.float32 for layer in model.layers)


def test_mlp_kaiming_normal_statistics_and_zero_biases():
    model = MLP((784,), hidden=(400, 300), key=jax.random.key(1))
    for layer in model.layers:
        w = np.asarray(layer.weight, np.float64)
        expected = math.sqrt(2.0 / w.shape[1])
        # Sample std of n normals has relative standard error about 1/sqrt(2n).
        assert abs(w.std() / expected - 1) < 5 / math.sqrt(2 * w.size)
        assert abs(w.mean()) < 5 * expected / math.sqrt(w.size)
        np.testing.assert_array_equal(np.asarray(layer.bias), 0.0)


def test_mlp_forward_is_relu_network():
    model = MLP((3, 4), hidden=(5,), num_classes=2, key=jax.random.key(2), dtype=jnp.float64)
    x = np.random.default_rng(0).normal(size=(3, 4))
    w1, w2 = (np.asarray(layer.weight) for layer in model.layers)
    expected = w2 @ np.maximum(w1 @ x.reshape(-1), 0)
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-12)


def test_ntk_mlp_parameterization_matches_seed_002_eq1():
    s_w, s_b = 1.3, 0.1
    model = NTKMLP(
        (6,), (50,), 3, key=jax.random.key(3), s_w=s_w, s_b=s_b, activation="sigmoid",
        dtype=jnp.float64,
    )  # fmt: skip
    layers = model.layers
    x = np.random.default_rng(1).normal(size=6)
    (w1, b1), (w2, b2) = ((np.asarray(l.weight), np.asarray(l.bias)) for l in layers)
    h = 1 / (1 + np.exp(-(s_w / math.sqrt(6) * w1 @ x + s_b * b1)))
    expected = s_w / math.sqrt(50) * w2 @ h + s_b * b2
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-12)
    # Trainable parameters are standard normal, biases included.
    assert abs(np.asarray(w1).std() - 1) < 0.2 and np.abs(b1).max() > 0


def test_cnn_shapes_init_and_float64():
    model = CNN((28, 28), 10, key=jax.random.key(4), dtype=jnp.float64)
    out = model(jnp.zeros((28, 28), jnp.float64))  # one float64 forward pass (slow on CPU)
    assert out.shape == (10,) and out.dtype == jnp.float64
    conv = model.layers[1]
    fan_in = 3 * 3 * conv.weight.shape[2]
    assert abs(np.asarray(conv.weight).std() / math.sqrt(2 / fan_in) - 1) < 0.1
    np.testing.assert_array_equal(np.asarray(conv.bias), 0.0)
    rgb = CNN((8, 8, 3), 4, key=jax.random.key(5))
    assert rgb(jnp.ones((8, 8, 3), jnp.float32)).shape == (4,)


def test_make_model_names_and_errors():
    key = jax.random.key(6)
    assert isinstance(make_model("mlp", (28, 28), 10, key=key), MLP)
    assert isinstance(make_model("cnn", (28, 28), 10, key=key), CNN)
    ntk = make_model("ntk_mlp", (2,), 1, key=key, activation="sigmoid")
    assert isinstance(ntk, NTKMLP) and ntk.layers[0].weight.shape == (256, 2)
    with pytest.raises(ValueError, match="Unknown model 'resnet'"):
        make_model("resnet", (28, 28), 10, key=key)
    with pytest.raises(ValueError, match="Unknown activation"):
        NTKMLP((2,), 4, 1, key=key, activation="swishy")


def test_stacked_models_vmap_over_clients():
    keys = jax.random.split(jax.random.key(7), 4)
    x = jnp.ones((4, 5, 2, 3), jnp.float32)  # clients, samples, features
    for build in (
        lambda k: MLP((2, 3), hidden=(8,), num_classes=3, key=k),
        lambda k: NTKMLP((2, 3), 8, 3, key=k),
    ):
        stacked = eqx.filter_vmap(build)(keys)
        out = eqx.filter_vmap(lambda m, xs: jax.vmap(m)(xs))(stacked, x)
        assert out.shape == (4, 5, 3)
        params, static = eqx.partition(stacked, eqx.is_array)
        again = jax.vmap(lambda p, xs, s=static: jax.vmap(eqx.combine(p, s))(xs))(params, x)
        np.testing.assert_array_equal(out, again)
        one = build(keys[2])
        np.testing.assert_allclose(out[2], jax.vmap(one)(x[2]), rtol=1e-6)
