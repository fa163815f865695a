"""Splitting the training set across clients (docs/data.md §3).

`partition` is the one entry point: it validates the request, seeds a numpy Generator and runs one
of the methods in `PARTITIONERS`. Every method returns per-client index lists; `Partition` stacks
them into a padded ``[clients, n_max]`` table with a mask, the static shape the simulator needs.
The built-ins register themselves next to their functions (`_dirichlet.py`, `_shards.py`); a new
one is one function and one `register_partitioner` line (docs/extending.md §4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from spark_tpu.registry import Registry, accepts, call_with

from ._partition_file import file_partition


class Partition(NamedTuple):
    """Which training examples each client holds (docs/data.md §3).

    Attributes:
      indices: ``int32 [clients, n_max]`` indices into the train set; padding entries are 0.
      mask: ``bool [clients, n_max]``, True where ``indices`` is a real example.
      sizes: ``int32 [clients]``, the number of real examples per client (``mask.sum(1)``).
    """

    indices: np.ndarray
    mask: np.ndarray
    sizes: np.ndarray


# (labels, num_clients, samples_per_client, rng, **options) -> per-client index arrays; the options
# it names among alpha, min_size and shards_per_client are passed (and validated).
PartitionFn = Callable[..., list[np.ndarray]]
PARTITIONERS: Registry[PartitionFn] = Registry("partitioner", "partition")
_DISJOINT: set[str] = set()  # partitioners that never give one example to two clients


def register_partitioner(
    name: str, fn: PartitionFn, *, disjoint: bool = False, replace: bool = False
) -> PartitionFn:
    """Makes ``fn`` available as ``--partition=name`` and to `spark_tpu.simulate`; returns it.

    ``disjoint``: no example goes to two clients, so ``clients × samples_per_client`` must not
    exceed the training set (checked before ``fn`` runs).
    """
    PARTITIONERS.register(name, fn, replace=replace)
    if disjoint:
        _DISJOINT.add(name)
    else:
        _DISJOINT.discard(name)
    return fn
# Every --partition value: the registered partitioners, and "file" (read from --partition_file).
FILE = "file"


def from_index_lists(per_client: Sequence[np.ndarray]) -> Partition:
    """Stacks per-client index arrays into a padded `Partition`."""
    sizes = np.array([len(ix) for ix in per_client], dtype=np.int32)
    n_max = int(sizes.max()) if len(sizes) else 0
    indices = np.zeros((len(per_client), n_max), dtype=np.int32)
    mask = np.arange(n_max, dtype=np.int32)[None, :] < sizes[:, None]
    for q, ix in enumerate(per_client):
        indices[q, : len(ix)] = ix
    return Partition(indices=indices, mask=mask, sizes=sizes)


def _validate(labels, num_clients, method, alpha, samples_per_client, shards_per_client) -> int:
    """Checks every argument against the flag it comes from; returns samples per client."""
    fn = None if method == FILE else PARTITIONERS.get(method)  # one line listing the choices
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "partition needs a non-empty 1-D integer label array, "
            f"got {labels.dtype} {labels.shape}."
        )
    if labels.min() < 0:
        raise ValueError(f"partition needs labels ≥ 0, got a minimum of {labels.min()}.")
    n = labels.size
    if num_clients < 1 or num_clients > n:
        raise ValueError(f"--clients={num_clients}: need between 1 and the {n} training examples.")
    if fn is None:  # the file fixes each client's examples; the options below do not apply
        return 0
    if accepts(fn, "alpha") and not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(
            f"--alpha={alpha}: the Dirichlet concentration must be a finite number > 0 "
            "(0.05 = strong label skew, 100 = nearly IID)."
        )
    spc = n // num_clients if samples_per_client is None else samples_per_client
    if spc < 1:
        raise ValueError(
            f"--samples_per_client={spc}: each client needs at least 1 example; leave it unset "
            f"for N // --clients = {n // num_clients}."
        )
    if method in _DISJOINT and num_clients * spc > n:
        raise ValueError(
            f"--samples_per_client={spc} with --clients={num_clients} needs {num_clients * spc} "
            f"distinct examples but the train set has {n} (--partition={method} is disjoint); use "
            f"--samples_per_client ≤ {n // num_clients}, fewer clients, or --partition=dirichlet."
        )
    if accepts(fn, "shards_per_client") and not 1 <= shards_per_client <= spc:
        raise ValueError(
            f"--shards_per_client={shards_per_client}: must be between 1 and "
            f"--samples_per_client={spc}."
        )
    return spc


def partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    method: str,
    seed: int,
    alpha: float = 0.5,
    samples_per_client: int | None = None,
    shards_per_client: int = 2,
    min_size: int = 1,
    path: str | None = None,
    dataset: str | None = None,
) -> Partition:
    """Assigns training examples to clients, reproducibly from ``seed`` (docs/data.md §3).

    Methods (details in each function's docstring):

    - ``"dirichlet"``: per client, class proportions p ~ Dir(α·1_C) and ``samples_per_client``·p
      samples per class (rounded down, as the NTK-FL/NTK-DFL reference does), drawn from that
      class; examples may repeat across clients, not within one.
    - ``"dirichlet_disjoint"``: each class split across clients by proportions ~ Dir(α·1_Q);
      disjoint, sizes vary; every client gets at least ``min_size`` examples.
    - ``"iid"``: a uniform random disjoint split, ``samples_per_client`` each.
    - ``"shards"``: sort-and-shard with exactly ``shards_per_client`` distinct classes per client.
    - ``"file"``: read from ``path`` (docs/data.md §6), indices in the source order of
      ``dataset``; ``seed``, ``alpha``, ``samples_per_client`` and ``shards_per_client`` are
      unused.

    Args:
      labels: ``int [N]`` training labels.
      num_clients: Q (flag ``--clients``).
      method: a name of ``PARTITIONERS`` or an import path ``package.module:attribute`` (flag
        ``--partition``); each partitioner receives the options below that it names.
      seed: seeds ``np.random.default_rng``; the same seed gives the same partition.
      alpha: Dirichlet concentration α > 0 (``--alpha``); smaller is more skewed.
      samples_per_client: n per client (``--samples_per_client``); default ``N // num_clients``
        (200 for 300 clients on Fashion-MNIST). For ``dirichlet_disjoint`` it sets the pool, Q·n
        examples, and so the mean size.
      shards_per_client: classes per client for ``shards`` (``--shards_per_client``).
      min_size: smallest client for ``dirichlet`` and ``dirichlet_disjoint``.
      path: the partition file for ``"file"`` (``--partition_file``).
      dataset: for ``"file"``: the data set ``labels`` come from (``--dataset``), whose source
        order the file's indices are in; None if they are positions in ``labels`` already.

    Returns:
      A `Partition` (``indices int32 [Q, n_max]``, ``mask``, ``sizes``).

    Raises:
      ValueError: an argument out of range; the message names the flag, the value and what works.

    Examples:
      >>> p = partition(np.arange(12, dtype=np.int32) % 3, 4, method="iid", seed=0)
      >>> p.indices.shape, p.sizes.tolist()
      ((4, 3), [3, 3, 3, 3])
    """
    labels = np.asarray(labels)
    spc = _validate(labels, num_clients, method, alpha, samples_per_client, shards_per_client)
    if method == "file":
        if path is None:
            raise ValueError("--partition=file needs --partition_file=PATH (docs/data.md §6).")
        return from_index_lists(file_partition(path, labels.size, num_clients, dataset))
    rng = np.random.default_rng(seed)
    per_client = call_with(
        PARTITIONERS.get(method), labels, num_clients, spc, rng,
        alpha=alpha, min_size=min_size, shards_per_client=shards_per_client,
    )
    return from_index_lists(per_client)
