"""Per-client stacked arrays, client padding, normalization and the scikit-learn datasets."""

import numpy as np
import pytest

from spark_tpu.data import (
    ClientArrays,
    Dataset,
    federated_arrays,
    load_dataset,
    normalize,
    pad_clients,
    partition,
    sklearn_digits,
    two_moons,
)


@pytest.fixture(scope="module")
def toy() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 3, 2), dtype=np.uint8)
    y = (np.arange(50) % 5).astype(np.int32)
    return Dataset("toy", x, y, x[:10], y[:10], 5, (3, 3, 2), (0.5, 0.25), (0.2, 0.4), 255.0)


def test_normalize_per_channel(toy):
    z = normalize(toy.train_x, toy)
    assert z.dtype == np.float32 and z.shape == toy.train_x.shape
    for c, (m, s) in enumerate(zip(toy.mean, toy.std, strict=True)):
        np.testing.assert_allclose(
            z[..., c], (toy.train_x[..., c] / 255.0 - m) / s, rtol=1e-5, atol=1e-6
        )


def test_federated_arrays_gather_the_partition(toy):
    p = partition(toy.train_y, 7, method="dirichlet_disjoint", alpha=0.2, seed=0)
    arrays = federated_arrays(toy, p)
    q, n_max = p.indices.shape
    assert arrays.x.shape == (q, n_max, 3, 3, 2) and arrays.x.dtype == np.float32
    assert arrays.y.dtype == np.int32 and arrays.mask.dtype == np.bool_
    np.testing.assert_array_equal(arrays.mask, p.mask)
    for client in range(q):
        for slot in range(n_max):
            if p.mask[client, slot]:
                i = p.indices[client, slot]
                np.testing.assert_array_equal(
                    arrays.x[client, slot], normalize(toy.train_x[i], toy)
                )
                assert arrays.y[client, slot] == toy.train_y[i]
            else:
                assert not arrays.x[client, slot].any() and arrays.y[client, slot] == 0


def test_pad_clients(toy):
    arrays = federated_arrays(toy, partition(toy.train_y, 5, method="iid", seed=0))
    padded = pad_clients(arrays, 8)
    assert isinstance(padded, ClientArrays) and padded.x.shape[0] == 8
    for field in ClientArrays._fields:
        np.testing.assert_array_equal(getattr(padded, field)[:5], getattr(arrays, field))
        assert getattr(padded, field).dtype == getattr(arrays, field).dtype
    assert not padded.mask[5:].any() and not padded.x[5:].any()
    assert pad_clients(arrays, 5) is arrays and pad_clients(arrays, 1) is arrays
    assert pad_clients(arrays, 3).x.shape[0] == 6
    with pytest.raises(ValueError, match="multiple"):
        pad_clients(arrays, 0)


def test_two_moons():
    ds = load_dataset("two_moons", seed=3)
    assert ds.train_x.shape == (1600, 2) and ds.test_x.shape == (400, 2)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32 and ds.num_classes == 2
    np.testing.assert_array_equal(normalize(ds.train_x, ds), ds.train_x)  # raw coordinates
    again = two_moons(seed=3)
    np.testing.assert_array_equal(again.train_x, ds.train_x)
    assert not np.array_equal(two_moons(seed=4).train_x, ds.train_x)
    # The two classes are the two half circles: their label means separate in x and y.
    upper, lower = ds.train_x[ds.train_y == 0], ds.train_x[ds.train_y == 1]
    assert upper[:, 1].mean() > lower[:, 1].mean()
    # Without noise, class 0 lies on the unit circle at the origin, class 1 on the one at (1, 0.5).
    clean = two_moons(noise=0.0, seed=3)
    x0, x1 = clean.train_x[clean.train_y == 0], clean.train_x[clean.train_y == 1]
    np.testing.assert_allclose(np.linalg.norm(x0, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        np.linalg.norm(x1 - np.array([1.0, 0.5], np.float32), axis=1), 1.0, atol=1e-6
    )


def test_digits():
    ds = load_dataset("digits")
    assert ds.train_x.shape[1:] == (8, 8, 1) and ds.train_x.dtype == np.uint8
    assert len(ds.train_y) + len(ds.test_y) == 1797 and ds.num_classes == 10
    assert len(ds.test_y) == 360  # 20 % held out
    assert ds.train_x.max() == 16 and ds.scale == 16.0
    z = normalize(ds.train_x, ds).astype(np.float64)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1.0) < 1e-5  # train statistics
    # Stratified: every class keeps its share within one example.
    share = np.bincount(ds.test_y) / np.bincount(np.concatenate([ds.train_y, ds.test_y]))
    assert np.all(np.abs(share - 0.2) < 0.02)
    np.testing.assert_array_equal(sklearn_digits(seed=0).test_y, ds.test_y)
    assert not np.array_equal(sklearn_digits(seed=1).test_y, ds.test_y)
