"""Loading a dataset by name into numpy (docs/data.md §1).

A name registered in `DATASETS` (the scikit-learn ones, yours) or an import path
``package.module:loader`` is made by its loader; any other name is a tfds dataset, read with
`tfds.data_source` (random access over array_record, no TensorFlow) after a missing cache is
prepared (`prepare_dataset`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from spark_tpu.registry import call_with, is_import_path

from ._dataset import DATASETS, Dataset, image_stats
from ._errors import CorruptDataError, DatasetNotFoundError
from ._prepare import (
    default_data_dir,
    missing_message,
    prepare_command,
    prepare_dataset,
    tfds_name,
    version_dirs,
)

SPLITS = ("train", "test")
_READ_CHUNK = 4096


def load_dataset(
    name: str = "fashion_mnist",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    idx_dir: str | os.PathLike[str] | None = None,
    prepare: bool = True,
    seed: int = 0,
) -> Dataset:
    """Loads a classification dataset, train and test, into numpy (docs/data.md §1).

    Args:
      name: ``"fashion_mnist"`` (the default), ``"mnist"``, ``"emnist"`` (tfds ``emnist/digits``),
        ``"cifar10"``, any other tfds image-classification name with ``train`` and ``test`` splits,
        a name of `DATASETS` (``"two_moons"`` / ``"digits"``: scikit-learn, no cache; or one you
        registered), or an import path ``package.module:loader`` (a function returning a
        `Dataset`, called with the keywords it names among ``seed``, ``data_dir``, ``idx_dir``).
      data_dir: the tfds cache root; default ``$SPARK_TPU_DATA_DIR`` or ``~/.cache/spark_tpu/tfds``.
      idx_dir: IDX files to prepare from when the cache is missing (MNIST family); ignored once the
        cache exists.
      prepare: prepare a missing cache (`prepare_dataset`); if False, a missing cache raises.
      seed: a loader's seed (two-moons' draw, digits' split); unused for tfds.

    Returns:
      A `Dataset`: uint8 images ``[N, H, W, C]`` (float32 ``[N, 2]`` for two-moons), int32 labels.

    Raises:
      DatasetNotFoundError: not prepared and it could not be prepared here; the message says where
        we looked and the exact command that provides it.
      CorruptDataError: the cache (or a source IDX file) is truncated or corrupt; the message names
        the file and the folder to delete.

    Examples:
      >>> ds = load_dataset("two_moons")
      >>> ds.train_x.shape, ds.num_classes
      ((1600, 2), 2)
    """
    if name in DATASETS or is_import_path(name):
        ds = call_with(DATASETS.get(name), seed=seed, data_dir=data_dir, idx_dir=idx_dir)
        if not isinstance(ds, Dataset):
            raise TypeError(f"--dataset={name}: the loader returned a {type(ds).__name__}, not a "
                            "data.Dataset (see data.from_arrays).")
        return ds
    data_dir = (
        os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else default_data_dir()
    )
    try:
        sources = _open_sources(name, data_dir)
    except DatasetNotFoundError:
        if not prepare:
            raise
        prepare_dataset(name, data_dir=data_dir, idx_dir=idx_dir)
        sources = _open_sources(name, data_dir)
    return _to_dataset(name, sources, data_dir)


def _open_sources(name: str, data_dir: str) -> Sequence[Any]:
    """`tfds.data_source` for both splits; failures are diagnosed (missing or corrupt)."""
    try:
        return tfds.data_source(
            tfds_name(name), split=list(SPLITS), data_dir=data_dir, download=False
        )
    except Exception as err:  # Diagnosed below and always re-raised.
        raise _diagnose(name, data_dir, err) from err


def _diagnose(name: str, data_dir: str, err: Exception) -> Exception:
    folders = version_dirs(name, data_dir)
    if not folders:
        return DatasetNotFoundError(missing_message(name, data_dir))
    try:
        splits = set(tfds.builder(tfds_name(name), data_dir=data_dir).info.splits)
    except Exception:  # An unreadable dataset_info.json: reported as corrupt below.
        splits = set(SPLITS)
    if not set(SPLITS) <= splits:
        return ValueError(
            f"--dataset={name} has splits {sorted(splits)}; spark_tpu needs 'train' and 'test'."
        )
    return _corrupt(name, data_dir, folders[-1], err)


def _corrupt(
    name: str, data_dir: str, folder: os.PathLike[str] | str, err: Exception
) -> CorruptDataError:
    return CorruptDataError(
        f"The prepared cache of {name!r} in {folder} is corrupt or incomplete "
        f"({type(err).__name__}: {err}). Delete it and prepare again: "
        f"{prepare_command(name, data_dir)} --overwrite"
    )


def _read_split(source: Any, keys: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """All examples of one split as ``(images [N, ...], labels int32 [N])``, read in chunks."""
    image_key, label_key = keys
    n = len(source)
    first = np.asarray(source[0][image_key]) if n else np.zeros((0,), np.uint8)
    images = np.empty((n, *first.shape), dtype=first.dtype)
    labels = np.empty((n,), dtype=np.int32)
    for start in range(0, n, _READ_CHUNK):
        batch = source.__getitems__(list(range(start, min(start + _READ_CHUNK, n))))
        for offset, example in enumerate(batch):
            images[start + offset] = example[image_key]
            labels[start + offset] = example[label_key]
    return images, labels


def _to_dataset(name: str, sources: Sequence[Any], data_dir: str) -> Dataset:
    info = sources[0].dataset_info
    keys = tuple(info.supervised_keys or ("image", "label"))
    num_classes = int(info.features[keys[1]].num_classes)
    arrays = []
    for split, source in zip(SPLITS, sources, strict=True):
        try:
            images, labels = _read_split(source, keys)
        except (RuntimeError, ValueError, IndexError, KeyError, OSError) as err:
            folders = version_dirs(name, data_dir)
            raise _corrupt(name, data_dir, folders[-1] if folders else data_dir, err) from err
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise _corrupt(
                name,
                data_dir,
                data_dir,
                ValueError(
                    f"{split} labels span [{labels.min()}, {labels.max()}], {num_classes} classes"
                ),
            )
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"--dataset={name}: expected uint8 images [N, H, W, C], got "
                f"{images.dtype} {images.shape[1:]}."
            )
        arrays += [images, labels]
    logging.info("Loaded %s: %d train, %d test examples", name, len(arrays[1]), len(arrays[3]))
    mean, std = image_stats(tfds_name(name), arrays[0])
    return Dataset(
        name=name,
        train_x=arrays[0],
        train_y=arrays[1],
        test_x=arrays[2],
        test_y=arrays[3],
        num_classes=num_classes,
        input_shape=tuple(arrays[0].shape[1:]),
        mean=mean,
        std=std,
        scale=255.0,
    )
