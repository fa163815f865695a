"""The two small datasets that ship with scikit-learn (docs/dynamics.md §6, docs/data.md §1).

Two-moons is the seed-002 dynamics dataset; scikit-learn's 8×8 digits is a quick image task. Both
are generated or split deterministically from a seed, need no cache and no network.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from ._dataset import Dataset, channel_stats, register_dataset

_DIGITS_SCALE = 16.0  # load_digits pixels are counts 0..16 (4×4 blocks of a 32×32 bitmap)


def two_moons(
    *, num_train: int = 1600, num_test: int = 400, noise: float = 0.1, seed: int = 0
) -> Dataset:
    """Two interleaved half circles in 2-D, two classes (`sklearn.datasets.make_moons`).

    The seed-002 experiments use 8 clients × 200 samples, hence the default 1600 training points.
    The features are the raw coordinates: ``mean = (0, 0)`` and ``std = (1, 1)``, so `normalize`
    leaves them unchanged.

    Args:
      num_train: training points (the first ``num_train`` of one shuffled draw).
      num_test: test points (the rest of the same draw).
      noise: standard deviation of the Gaussian noise added to each point.
      seed: ``random_state`` of `make_moons`; the same seed gives the same points.

    Returns:
      A `Dataset` with ``train_x float32 [num_train, 2]`` and labels in {0, 1}.

    Raises:
      ValueError: a non-positive size or a negative noise.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(
            f"two_moons needs num_train ≥ 1 and num_test ≥ 1, got {num_train}, {num_test}."
        )
    if noise < 0:
        raise ValueError(f"two_moons noise must be ≥ 0, got {noise}.")
    x, y = sk_datasets.make_moons(
        n_samples=num_train + num_test, noise=noise, shuffle=True, random_state=seed
    )
    x = x.astype(np.float32)
    y = y.astype(np.int32)
    return Dataset(
        name="two_moons",
        train_x=x[:num_train],
        train_y=y[:num_train],
        test_x=x[num_train:],
        test_y=y[num_train:],
        num_classes=2,
        input_shape=(2,),
        mean=(0.0, 0.0),
        std=(1.0, 1.0),
        scale=1.0,
    )


register_dataset("two_moons", two_moons)


def sklearn_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits: 1,797 8×8 images, 10 classes (`load_digits`).

    Split with `train_test_split` stratified by label, so each class keeps its share in both
    splits; the same seed gives the same split. Pixels stay raw integers 0..16 (``scale = 16``);
    mean and std are the train split's.

    Args:
      test_fraction: share of the examples held out for testing.
      seed: ``random_state`` of the split.

    Returns:
      A `Dataset` with ``train_x uint8 [N, 8, 8, 1]``.

    Raises:
      ValueError: ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction}.")
    bunch = sk_datasets.load_digits()
    images = bunch.images.astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    train_x, test_x, train_y, test_y = model_selection.train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    mean, std = channel_stats(train_x, _DIGITS_SCALE)
    return Dataset(
        name="digits",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        input_shape=(8, 8, 1),
        mean=mean,
        std=std,
        scale=_DIGITS_SCALE,
    )


register_dataset("digits", sklearn_digits)
