"""load_dataset on tfds datasets that cannot be prepared offline, via tfds.testing.mock_data.

`mock_data` replaces `tfds.data_source`'s storage with a deterministic random-example generator
built from the dataset's tfds features (policy USE_CODE: no files at all), so these tests exercise
the tfds read path (features, supervised keys, class count, splits) for any tfds name.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from spark_tpu.data import load_dataset, normalize

NUM_EXAMPLES = 9


@pytest.fixture
def mocked(monkeypatch):
    # tfds 4.9.10's mock installs `__getitems__` on the mocked ArrayRecordDataSource as a plain
    # instance attribute holding `partial(_getitems, generator=...)`, so the data source's `self`
    # is never passed and every batched read fails with a TypeError. Patch the module function the
    # partial is built from (looked up at mock time) to one that takes no `self`.
    def getitems(record_keys, generator, serialized=False):
        del serialized
        return [generator[k] for k in record_keys]

    monkeypatch.setattr(mocking, "_getitems", getitems)
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def direct_read(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One example at a time through tfds' own `__getitem__`, independent of the batched loader."""
    source = tfds.data_source(name, split=split)
    examples = [source[i] for i in range(len(source))]
    return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])


def test_cifar10(mocked, tmp_path):
    ds = load_dataset("cifar10", data_dir=tmp_path, prepare=False)
    assert ds.train_x.shape == (NUM_EXAMPLES, 32, 32, 3) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int32 and ds.num_classes == 10
    assert ds.input_shape == (32, 32, 3)
    assert ds.mean == (0.4914, 0.4822, 0.4465)  # the NTK-DFL reference's CIFAR constants
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        images, labels = direct_read("cifar10", split)
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, labels)
    z = normalize(ds.train_x, ds)
    expected = (ds.train_x[..., 2] / np.float32(255) - np.float32(0.4465)) / np.float32(0.261)
    np.testing.assert_allclose(z[..., 2], expected, rtol=1e-6)


def test_emnist_alias_gets_its_own_statistics(mocked, tmp_path):
    ds = load_dataset("emnist", data_dir=tmp_path, prepare=False)
    assert ds.name == "emnist" and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    pixels = ds.train_x.astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean, [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(ds.std, [pixels.std()], rtol=1e-12)
    images, _ = direct_read("emnist/digits", "train")
    np.testing.assert_array_equal(ds.train_x, images)
