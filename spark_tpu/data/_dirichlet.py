"""Dirichlet label-skew partitions (docs/data.md §3; Hsu, Qi & Brown 2019, arXiv 1909.06335).

Two readings of "Dirichlet non-IID" are in use and both are offered:

- `dirichlet`, per client (the NTK-FL / NTK-DFL reference): each client draws its own class
  proportions and a fixed budget of samples; clients may share examples.
- `dirichlet_disjoint`, per class (the common FedML-style one): each class is dealt out across
  clients by Dirichlet proportions; clients are disjoint and their sizes vary.
"""

from __future__ import annotations

import numpy as np

from ._partition import register_partitioner


def _class_pools(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each class that occurs in ``labels`` (absent classes are left out)."""
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    del classes
    return np.split(order, starts[1:])


def _check_min_size(min_size: int, samples_per_client: int) -> None:
    if not 1 <= min_size <= samples_per_client:
        raise ValueError(
            f"min_size={min_size}: must be between 1 and --samples_per_client={samples_per_client}."
        )


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    samples_per_client: int,
    rng: np.random.Generator,
    *,
    alpha: float,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Per-client label skew, as the NTK-FL / NTK-DFL reference partitions Fashion-MNIST.

    For each client q: p_q ~ Dir(α·1_C) over the classes present; class c gets
    ``floor(samples_per_client · p_q[c])`` examples (rounding down, as the reference does: a client
    holds between n − C + 1 and n examples, e.g. 191..200 for n = 200, C = 10), drawn without
    replacement from class c's examples (with replacement only if the class has fewer examples
    than asked for). A client whose rounded total is below ``min_size`` gets the shortfall from its
    largest class. Examples may repeat across clients. Each client's indices are shuffled.

    Args:
      labels: ``int [N]`` training labels.
      num_clients: Q.
      samples_per_client: n, the budget before rounding.
      rng: the seeded generator.
      alpha: the concentration α > 0.
      min_size: the smallest allowed client.

    Returns:
      Q index arrays.
    """
    _check_min_size(min_size, samples_per_client)
    pools = _class_pools(labels)
    proportions = rng.dirichlet(np.full(len(pools), alpha, dtype=np.float64), size=num_clients)
    counts = np.floor(samples_per_client * proportions).astype(np.int64)
    short = np.maximum(min_size - counts.sum(axis=1), 0)
    counts[np.arange(num_clients), proportions.argmax(axis=1)] += short
    per_client = []
    for q in range(num_clients):
        parts = [
            rng.choice(pool, size=int(k), replace=bool(k > len(pool)))
            for pool, k in zip(pools, counts[q], strict=True)
            if k > 0
        ]
        per_client.append(rng.permutation(np.concatenate(parts)))
    return per_client


register_partitioner("dirichlet", dirichlet)


def _repair_min_size(per_client: list[np.ndarray], min_size: int) -> list[np.ndarray]:
    """Moves examples from the largest clients to those below ``min_size`` (deterministic)."""
    sizes = np.array([len(ix) for ix in per_client])
    for q in np.flatnonzero(sizes < min_size):
        while sizes[q] < min_size:
            donor = int(np.argmax(sizes))
            take = min(min_size - sizes[q], sizes[donor] - min_size)
            per_client[q] = np.concatenate([per_client[q], per_client[donor][-take:]])
            per_client[donor] = per_client[donor][:-take]
            sizes[q] += take
            sizes[donor] -= take
    return per_client


def dirichlet_disjoint(
    labels: np.ndarray,
    num_clients: int,
    samples_per_client: int,
    rng: np.random.Generator,
    *,
    alpha: float,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Per-class label skew with disjoint clients (each class split by Dir(α·1_Q)).

    The pool is a uniform random subset of Q·n training examples (all of them when n is the
    default N // Q, up to the remainder). For each class c, proportions r_c ~ Dir(α·1_Q) and the
    class's pool examples, shuffled, are cut at ``floor(cumsum(r_c) · |pool_c|)``. Sizes vary
    (mean n; at small α a client can hold most of a class, so n_max can be far above n).

    Min-size rule: a client left with fewer than ``min_size`` examples receives them from the
    currently largest client, one transfer at a time, until every client has ``min_size``;
    this always succeeds because the pool holds Q·n ≥ Q·min_size examples.

    Args:
      labels: ``int [N]`` training labels.
      num_clients: Q.
      samples_per_client: n; the pool holds Q·n examples (validated ≤ N by `partition`).
      rng: the seeded generator.
      alpha: the concentration α > 0.
      min_size: the smallest allowed client.

    Returns:
      Q disjoint index arrays.
    """
    _check_min_size(min_size, samples_per_client)
    pool = rng.permutation(labels.size)[: num_clients * samples_per_client]
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for class_pool in _class_pools(labels[pool]):
        members = rng.permutation(pool[class_pool])
        shares = rng.dirichlet(np.full(num_clients, alpha, dtype=np.float64))
        cuts = np.floor(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
        for q, chunk in enumerate(np.split(members, cuts)):
            pieces[q].append(chunk)
    per_client = [rng.permutation(np.concatenate(p)) for p in pieces]
    return _repair_min_size(per_client, min_size)


register_partitioner("dirichlet_disjoint", dirichlet_disjoint, disjoint=True)
