"""A researcher's own model, data set, graph and partitioner, named by import path in
tests/test_registry.py (``_plugins:make_net``; tests/ is on sys.path, as for ``_reference``)."""

from __future__ import annotations

import numpy as np

from spark_tpu import data, models

CALLS: list[dict] = []  # the keywords each load_blobs call received


def make_net(input_shape, *, num_classes, key):
    """A 2-8-C MLP."""
    return models.MLP(input_shape, hidden=(8,), num_classes=num_classes, key=key)


def load_blobs(*, seed=0):
    """Two Gaussian blobs in 3-D, 60 training and 40 test points."""
    CALLS.append({"seed": seed})
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 100)
    x = rng.normal(size=(100, 3)) + 2.0 * y[:, None]
    return data.from_arrays(x[:60], y[:60], x[60:], y[60:], name="blobs")


def path_graph(topology, seed):
    """The path 0 - 1 - ... - (n-1): connected, degrees 1 and 2."""
    del seed
    n = topology.clients
    adj = np.zeros((n, n), dtype=bool)
    i = np.arange(n - 1)
    adj[i, i + 1] = adj[i + 1, i] = True
    return adj


def contiguous(labels, num_clients, samples_per_client, rng):
    """Client q holds examples [q·n, (q+1)·n)."""
    del labels, rng
    n = samples_per_client
    return [np.arange(q * n, (q + 1) * n) for q in range(num_clients)]
