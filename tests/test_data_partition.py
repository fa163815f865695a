"""Partitioner invariants, checked from the partition alone (docs/data.md §3)."""

import json

import numpy as np
import pytest

from spark_tpu.data import (
    PARTITIONERS,
    client_class_counts,
    format_partition_summary,
    partition,
    partition_summary,
)

NUM_CLASSES = 10
CLIENTS = 60


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """12,000 labels, 1,200 per class, in a shuffled order (like a real train split)."""
    return (
        np.random.default_rng(1)
        .permutation(np.repeat(np.arange(NUM_CLASSES), 1200))
        .astype(np.int32)
    )


def check_table(p, n: int) -> None:
    """Shapes, dtypes, mask/sizes consistency, indices in range and padding zeroed."""
    assert p.indices.dtype == np.int32 and p.mask.dtype == np.bool_ and p.sizes.dtype == np.int32
    assert p.indices.shape == p.mask.shape and p.sizes.shape == (p.indices.shape[0],)
    np.testing.assert_array_equal(p.mask.sum(axis=1), p.sizes)
    assert p.mask.shape[1] == p.sizes.max()
    # Real entries first, then padding.
    np.testing.assert_array_equal(p.mask, np.arange(p.mask.shape[1])[None, :] < p.sizes[:, None])
    assert p.indices.min() >= 0 and p.indices.max() < n
    assert (p.indices[~p.mask] == 0).all()


def no_repeats_within_clients(p) -> bool:
    return all(
        np.unique(p.indices[q, : p.sizes[q]]).size == p.sizes[q] for q in range(len(p.sizes))
    )


def disjoint(p) -> bool:
    used = p.indices[p.mask]
    return np.unique(used).size == used.size


def entropies(p, labels) -> np.ndarray:
    counts = client_class_counts(p, labels, NUM_CLASSES).astype(np.float64)
    probs = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(probs * np.log(probs), axis=1)


def test_dirichlet_reference_sizes(labels):
    p = partition(labels, CLIENTS, method="dirichlet", alpha=0.3, seed=0)
    check_table(p, labels.size)
    n = labels.size // CLIENTS  # default samples per client
    assert ((p.sizes <= n) & (p.sizes >= n - NUM_CLASSES + 1)).all()  # floor(n·p) per class
    assert no_repeats_within_clients(p)
    assert not disjoint(p)  # 12,000 draws with replacement across clients must collide


def test_dirichlet_explicit_samples_per_client(labels):
    p = partition(labels, 500, method="dirichlet", alpha=1.0, samples_per_client=40, seed=0)
    assert p.sizes.max() <= 40 and p.sizes.min() >= 31
    assert no_repeats_within_clients(p)


def test_dirichlet_disjoint(labels):
    p = partition(labels, CLIENTS, method="dirichlet_disjoint", alpha=0.1, seed=0)
    check_table(p, labels.size)
    assert disjoint(p) and p.sizes.sum() == labels.size and p.sizes.min() >= 1
    assert p.sizes.std() > 0  # sizes vary at small alpha


def test_dirichlet_disjoint_min_size_rule(labels):
    p = partition(labels, 400, method="dirichlet_disjoint", alpha=0.01, min_size=10, seed=3)
    assert disjoint(p) and p.sizes.min() >= 10 and p.sizes.sum() == 400 * (labels.size // 400)


def test_iid(labels):
    p = partition(labels, CLIENTS, method="iid", samples_per_client=150, seed=0)
    check_table(p, labels.size)
    assert (p.sizes == 150).all() and disjoint(p)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_shards_exactly_k_classes(labels, k):
    p = partition(labels, CLIENTS, method="shards", shards_per_client=k, seed=0)
    check_table(p, labels.size)
    counts = client_class_counts(p, labels, NUM_CLASSES)
    assert ((counts > 0).sum(axis=1) == k).all()
    assert disjoint(p) and (p.sizes == k * ((labels.size // CLIENTS) // k)).all()
    per_class_clients = (counts > 0).sum(axis=0)  # shards spread evenly over the classes
    assert per_class_clients.max() - per_class_clients.min() <= 1


def test_entropy_decreases_with_alpha(labels):
    means = {}
    for alpha in (0.05, 0.5):
        for method in ("dirichlet", "dirichlet_disjoint"):
            means[method, alpha] = entropies(
                partition(labels, CLIENTS, method=method, alpha=alpha, seed=0), labels
            ).mean()
    iid_mean = entropies(partition(labels, CLIENTS, method="iid", seed=0), labels).mean()
    for method in ("dirichlet", "dirichlet_disjoint"):
        assert means[method, 0.05] < means[method, 0.5] < iid_mean <= np.log(NUM_CLASSES)


@pytest.mark.parametrize("method", sorted(PARTITIONERS))
def test_same_seed_same_partition_different_seed_different(labels, method):
    a, b, c = (partition(labels, CLIENTS, method=method, alpha=0.3, seed=s) for s in (7, 7, 8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.indices.shape != c.indices.shape or (a.indices != c.indices).any()


def test_summary_matches_direct_counts(labels):
    p = partition(labels, CLIENTS, method="shards", shards_per_client=2, seed=0)
    s = partition_summary(p, labels, NUM_CLASSES)
    json.dumps(s)  # JSON-serializable
    assert s["clients"] == CLIENTS and s["distinct_examples"] == p.sizes.sum()
    assert s["sizes"] == {"min": 200.0, "mean": 200.0, "max": 200.0}
    assert s["classes_per_client"] == {"min": 2.0, "mean": 2.0, "max": 2.0}
    # Each client holds 100 + 100 examples of two classes: entropy log 2 exactly.
    assert s["label_entropy"]["min"] == pytest.approx(np.log(2)) == s["label_entropy"]["max"]
    assert "60 clients" in format_partition_summary(s)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(method="dirichlet", alpha=0.0), "--alpha=0.0"),
        (dict(method="dirichlet_disjoint", alpha=-1.0), "--alpha=-1.0"),
        (dict(method="dirichlet", alpha=float("nan")), "--alpha=nan"),
        (dict(method="iid", samples_per_client=201), "--samples_per_client=201"),
        (dict(method="shards", samples_per_client=300), "--samples_per_client=300"),
        (dict(method="dirichlet_disjoint", samples_per_client=250), "--samples_per_client=250"),
        (dict(method="shards", shards_per_client=11), "--shards_per_client=11"),
        (dict(method="shards", shards_per_client=0), "--shards_per_client=0"),
        (dict(method="dirichlet", samples_per_client=0), "--samples_per_client=0"),
        (dict(method="label_skew"), "--partition=label_skew"),
    ],
)
def test_invalid_arguments_name_the_flag(labels, kwargs, flag):
    with pytest.raises(ValueError, match=flag) as info:
        partition(labels, CLIENTS, seed=0, **kwargs)
    assert len(str(info.value)) > len(flag) + 20  # says what would work, not just the value


def test_too_many_clients(labels):
    with pytest.raises(ValueError, match="--clients=20000"):
        partition(labels, 20_000, method="dirichlet", seed=0)


def test_dirichlet_may_oversubscribe_but_disjoint_may_not():
    y = np.repeat(np.arange(2, dtype=np.int32), 10)
    p = partition(y, 4, method="dirichlet", alpha=1.0, samples_per_client=15, seed=0)
    assert p.sizes.max() <= 15 and p.indices.max() < 20
    with pytest.raises(ValueError, match="--samples_per_client=15"):
        partition(y, 4, method="iid", samples_per_client=15, seed=0)
