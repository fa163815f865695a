"""The in-memory dataset, its loaders by name, and its input normalization (docs/data.md §2).

A `Dataset` is plain numpy: the whole train and test split, small enough for host memory on every
dataset the simulator uses, placed on the device mesh once by the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from spark_tpu.registry import Registry

# Reference normalization constants (mean, std of x / 255 per channel). Fashion-MNIST and MNIST are
# docs/data.md §2; CIFAR-10 is what the NTK-DFL reference code hardcodes. Every other dataset gets
# the statistics of its own train split (`channel_stats`).
REFERENCE_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
}
_STATS_CHUNK = 8192


class Dataset(NamedTuple):
    """One classification dataset, train and test, as numpy arrays (docs/data.md §1).

    Attributes:
      name: the name it was loaded by (``"fashion_mnist"``, ``"emnist"``, ``"two_moons"``, ...).
      train_x: ``uint8 [N, H, W, C]`` raw pixels for image datasets, ``float32 [N, D]`` for
        two-moons. Use `normalize` before feeding a model.
      train_y: ``int32 [N]`` labels in ``[0, num_classes)``.
      test_x: like ``train_x`` with the test examples.
      test_y: like ``train_y``.
      num_classes: C.
      input_shape: one example's shape, ``train_x.shape[1:]``.
      mean: per-channel (last axis) mean of ``x / scale``.
      std: per-channel standard deviation of ``x / scale``.
      scale: the raw value range: 255 for 8-bit images, 16 for scikit-learn's digits, 1 for
        real-valued features.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float



# A loader ``(*, seed, data_dir, idx_dir) -> Dataset`` receives the keywords it names. Data sets
# not registered here are tfds names (`load_dataset`); the built-ins register in `_sklearn.py`.
DatasetLoader = Callable[..., Dataset]
DATASETS: Registry[DatasetLoader] = Registry("data set", "dataset")


def register_dataset(name: str, loader: DatasetLoader, *, replace: bool = False) -> DatasetLoader:
    """Makes ``loader`` available as ``--dataset=name`` and to `spark_tpu.simulate`; returns it."""
    return DATASETS.register(name, loader, replace=replace)


def normalize(x: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Maps raw inputs to the model's input scale: ``(x / scale − mean) / std`` per channel.

    docs/data.md §2: Fashion-MNIST uses ``(x/255 − 0.2860)/0.3530`` and MNIST
    ``(x/255 − 0.1307)/0.3081``, as the NTK-DFL reference does.

    Args:
      x: raw inputs of ``dataset``, any leading shape, channels last.
      dataset: the dataset ``x`` comes from (supplies scale, mean, std).

    Returns:
      ``float32`` array of ``x``'s shape.

    Examples:
      >>> ds = Dataset("toy", np.zeros((1, 1, 1, 1), np.uint8), np.zeros(1, np.int32),
      ...              np.zeros((1, 1, 1, 1), np.uint8), np.zeros(1, np.int32), 2, (1, 1, 1),
      ...              (0.5,), (0.25,), 255.0)
      >>> normalize(np.array([[[[255]]]], np.uint8), ds).ravel().tolist()
      [2.0]
    """
    mean = np.asarray(dataset.mean, dtype=np.float32)
    std = np.asarray(dataset.std, dtype=np.float32)
    scaled = x.astype(np.float32) / np.float32(dataset.scale)
    return ((scaled - mean) / std).astype(np.float32, copy=False)


def channel_stats(x: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``x / scale``, in float64.

    Args:
      x: ``[N, ..., C]`` raw inputs (channels last).
      scale: the raw value range (255 for 8-bit images).

    Returns:
      ``(mean, std)``, each a tuple of C floats; a zero std is replaced by 1 so that `normalize`
      stays finite.
    """
    channels = x.shape[-1]
    flat = x.reshape(-1, channels)
    total = np.zeros(channels, dtype=np.float64)
    total_sq = np.zeros(channels, dtype=np.float64)
    for start in range(0, flat.shape[0], _STATS_CHUNK):
        chunk = flat[start : start + _STATS_CHUNK].astype(np.float64) / scale
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    count = max(flat.shape[0], 1)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    std = np.where(std > 0.0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def image_stats(name: str, train_x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The reference constants for ``name`` if there are any, else the train split's statistics."""
    if name in REFERENCE_STATS:
        return REFERENCE_STATS[name]
    return channel_stats(train_x, 255.0)


def from_arrays(
    train_x, train_y, test_x, test_y, *, num_classes: int | None = None, name: str = "arrays",
    scale: float | None = None,
) -> Dataset:
    """A `Dataset` from your own numpy arrays (docs/extending.md §4).

    Args:
      train_x: ``[N, ...]`` inputs, channels last (uint8 pixels, or real-valued features).
      train_y: ``[N]`` integer labels in ``[0, num_classes)``.
      test_x: like ``train_x``.
      test_y: like ``train_y``.
      num_classes: C (default: the largest label + 1).
      name: what summaries call it.
      scale: the raw value range (default 255 for uint8 inputs, else 1); inputs are normalized by
        the train split's per-channel mean and standard deviation of ``x / scale``.

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> ds = from_arrays(rng.normal(size=(40, 3)), rng.integers(0, 2, 40),
      ...                  rng.normal(size=(10, 3)), rng.integers(0, 2, 10))
      >>> ds.num_classes, ds.input_shape, ds.train_y.dtype
      (2, (3,), dtype('int32'))
    """
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y, test_y = (np.asarray(y) for y in (train_y, test_y))
    for what, y in (("train_y", train_y), ("test_y", test_y)):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{what}: expected integer labels [N], got {y.dtype} {y.shape}.")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"inputs and labels differ in length: train {len(train_x)} vs "
                         f"{len(train_y)}, test {len(test_x)} vs {len(test_y)}.")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"train and test inputs differ in shape: {train_x.shape[1:]} vs "
                         f"{test_x.shape[1:]}.")
    c = int(num_classes) if num_classes is not None else int(max(train_y.max(), test_y.max())) + 1
    if min(train_y.min(), test_y.min()) < 0 or max(train_y.max(), test_y.max()) >= c:
        raise ValueError(f"labels must lie in [0, {c}); got [{min(train_y.min(), test_y.min())}, "
                         f"{max(train_y.max(), test_y.max())}].")
    if scale is None:
        scale = 255.0 if train_x.dtype == np.uint8 else 1.0
    features = train_x if train_x.ndim > 1 else train_x[:, None]
    mean, std = channel_stats(features, scale)
    return Dataset(name, train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32), c,
                   tuple(train_x.shape[1:]), mean, std, float(scale))
