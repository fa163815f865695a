"""IID and k-class shard partitions (docs/data.md §3; McMahan et al. 2017, arXiv 1602.05629)."""

from __future__ import annotations

import numpy as np

from ._partition import register_partitioner


def iid(
    labels: np.ndarray, num_clients: int, samples_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """A uniform random disjoint split: the first Q·n of a random permutation, n per client."""
    chosen = rng.permutation(labels.size)[: num_clients * samples_per_client]
    return list(chosen.reshape(num_clients, samples_per_client))


register_partitioner("iid", iid, disjoint=True)


def _shard_counts(num_classes: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Shards per class: as equal as possible, the remainder going to randomly chosen classes."""
    counts = np.full(num_classes, total // num_classes, dtype=np.int64)
    counts[rng.permutation(num_classes)[: total % num_classes]] += 1
    return counts


def _assign_classes(
    counts: np.ndarray, num_clients: int, k: int, rng: np.random.Generator
) -> np.ndarray:
    """``[Q, k]`` distinct classes per client with class c used exactly ``counts[c]`` times.

    Greedy: each client takes the k classes with the most shards left (ties broken at random).
    This never fails while max(remaining) ≤ clients left and sum(remaining) = k·(clients left),
    which holds initially (counts are balanced and k ≤ C) and is preserved by the greedy step.
    """
    remaining = counts.copy()
    chosen = np.empty((num_clients, k), dtype=np.int64)
    for q in range(num_clients):
        keys = remaining + rng.random(remaining.size)  # the fraction only breaks ties
        chosen[q] = np.argsort(-keys, kind="stable")[:k]
        remaining[chosen[q]] -= 1
    return chosen


def shards(
    labels: np.ndarray,
    num_clients: int,
    samples_per_client: int,
    rng: np.random.Generator,
    *,
    shards_per_client: int,
) -> list[np.ndarray]:
    """Sort-and-shard with exactly k = ``shards_per_client`` distinct classes per client.

    Each class's examples are shuffled and cut into shards of ``samples_per_client // k`` examples;
    the Q·k shards are spread over the classes as evenly as possible, and each client receives k
    shards of k different classes. Unlike McMahan et al.'s original (sort by label, cut the sorted
    list into equal shards, deal two at random), a shard never straddles two classes and a client
    never gets two shards of one class, so "k classes per client" holds exactly. Clients hold
    k · (n // k) examples and are disjoint.

    Raises:
      ValueError: k exceeds the number of classes, or a class has too few examples for its shards.
    """
    k = shards_per_client
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    pools = np.split(order, starts[1:])
    if k > classes.size:
        raise ValueError(
            f"--shards_per_client={k}: the train set has only {classes.size} classes; "
            f"use at most {classes.size}."
        )
    shard_size = samples_per_client // k
    counts = _shard_counts(classes.size, num_clients * k, rng)
    for c, (pool, count) in enumerate(zip(pools, counts, strict=True)):
        if count * shard_size > pool.size:
            raise ValueError(
                f"--shards_per_client={k} with --clients={num_clients} and --samples_per_client="
                f"{samples_per_client} needs {count} shards of {shard_size} from class "
                f"{classes[c]}, which has {pool.size} examples; use fewer clients or samples."
            )
    class_shards = [
        list(rng.permutation(pool)[: count * shard_size].reshape(count, shard_size))
        for pool, count in zip(pools, counts, strict=True)
    ]
    assigned = _assign_classes(counts, num_clients, k, rng)
    return [
        rng.permutation(np.concatenate([class_shards[c].pop() for c in assigned[q]]))
        for q in range(num_clients)
    ]


register_partitioner("shards", shards, disjoint=True)
