"""Stacked per-client arrays, the simulator's view of the data (docs/data.md §5; docs/architecture.md §2, layer 2).

Built once on the host in numpy; the simulator places them on the device mesh, sharded along the
leading client axis. Ragged clients are padded to ``n_max`` and masked, so shapes stay static.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._dataset import Dataset, normalize
from ._partition import Partition


class ClientArrays(NamedTuple):
    """Every client's training data, stacked (docs/data.md §5).

    Attributes:
      x: ``float32 [clients, n_max, *input_shape]``, normalized (`normalize`); zero where masked.
      y: ``int32 [clients, n_max]`` labels; zero where masked.
      mask: ``bool [clients, n_max]``, True for real examples. A phantom client added by
        `pad_clients` is all False.
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray


def federated_arrays(dataset: Dataset, partition: Partition) -> ClientArrays:
    """Gathers each client's normalized examples into one padded block.

    Args:
      dataset: the dataset the partition indexes (its train split).
      partition: from `partition`.

    Returns:
      `ClientArrays` with ``x[q, i] = normalize(train_x[indices[q, i]])`` where ``mask[q, i]``.
    """
    x = normalize(dataset.train_x[partition.indices], dataset)
    x[~partition.mask] = 0.0
    y = np.where(partition.mask, dataset.train_y[partition.indices], 0).astype(np.int32)
    return ClientArrays(x=x, y=y, mask=partition.mask.copy())


def pad_clients(arrays: ClientArrays, multiple: int) -> ClientArrays:
    """Appends fully-masked phantom clients until the client count divides by ``multiple``.

    Use the device count as ``multiple`` so the client axis shards evenly; phantom clients have
    zero inputs, zero labels and an all-False mask, so masked losses and counts ignore them.

    Args:
      arrays: the real clients.
      multiple: e.g. ``len(jax.devices())``.

    Returns:
      `ClientArrays` with ``ceil(Q / multiple) · multiple`` clients, the real ones first.

    Raises:
      ValueError: ``multiple`` < 1.
    """
    if multiple < 1:
        raise ValueError(f"pad_clients multiple must be ≥ 1, got {multiple}.")
    clients = arrays.x.shape[0]
    extra = -clients % multiple
    if extra == 0:
        return arrays

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((extra, *a.shape[1:]), dtype=a.dtype)])

    return ClientArrays(x=pad(arrays.x), y=pad(arrays.y), mask=pad(arrays.mask))
