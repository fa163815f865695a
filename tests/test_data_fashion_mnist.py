"""Real Fashion-MNIST, prepared offline from Debian's dataset-fashion-mnist (docs/data.md §1–2).

Skipped where the package is not installed; CI installs it.
"""

import os

import numpy as np
import pytest

from spark_tpu.data import load_dataset, normalize, read_idx

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

pytestmark = [
    pytest.mark.skipif(
        not os.path.isdir(DEBIAN_DIR),
        reason=f"{DEBIAN_DIR} absent: `apt-get install dataset-fashion-mnist` provides it",
    ),
    # Preparing (70k PNG encodes) and loading (70k decodes) cost about 19 s of CPU together.
    pytest.mark.slow,
]


@pytest.fixture(scope="session")
def fashion(tmp_path_factory):
    """One prepared cache per test session (prepare takes seconds, not minutes)."""
    return load_dataset("fashion_mnist", data_dir=tmp_path_factory.mktemp("tfds"))


def test_sizes_and_classes(fashion):
    assert fashion.train_x.shape == (60_000, 28, 28, 1) and fashion.train_x.dtype == np.uint8
    assert fashion.test_x.shape == (10_000, 28, 28, 1)
    assert np.bincount(fashion.train_y, minlength=10).tolist() == [6_000] * 10
    assert np.bincount(fashion.test_y, minlength=10).tolist() == [1_000] * 10


def test_pixel_statistics_match_spec_constants(fashion):
    counts = np.bincount(fashion.train_x.ravel(), minlength=256)  # exact, no float copy
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert abs(mean - 0.2860) < 5e-4 and abs(std - 0.3530) < 5e-4
    z = normalize(fashion.train_x[:1000], fashion)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, (fashion.train_x[:1000] / 255.0 - 0.2860) / 0.3530, atol=1e-5)


def test_same_images_as_the_idx_files(fashion):
    images = read_idx(os.path.join(DEBIAN_DIR, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz"))
    raw = images.reshape(len(images), -1)
    loaded = fashion.test_x.reshape(len(fashion.test_x), -1)
    order = np.lexsort(raw.T[::-1])
    loaded_order = np.lexsort(loaded.T[::-1])
    np.testing.assert_array_equal(loaded[loaded_order], raw[order])
    np.testing.assert_array_equal(fashion.test_y[loaded_order], labels[order])
