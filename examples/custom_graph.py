"""Your own graphs: one-peer exponential graphs used in turn, against a fixed ring, with D-PSGD.

A graph is a 0/1 symmetric adjacency (weighted by `mixing`), a row-stochastic mixing matrix, or a
list of either: round r uses graph r mod G. Here graph k links client q with q ± 2^k (k < log2 Q):
each is a union of cycles, sparse as a ring (degree ≤ 2), yet together they mix like a hypercube.
Run from the repository root: python -m examples.custom_graph [--rounds=N]
"""

import argparse

import numpy as np
import spark_tpu
from spark_tpu import topology


def one_peer_exponential(clients: int) -> list[np.ndarray]:
    """Adjacency k (k = 0 … log2(clients) − 1) links q with q ± 2^k (mod clients)."""
    graphs = []
    for k in range(int(np.log2(clients))):
        a = np.zeros((clients, clients), int)
        for q in range(clients):
            a[q, (q + 2**k) % clients] = a[(q + 2**k) % clients, q] = 1
        graphs.append(a)
    return graphs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args(argv)
    graphs = {"one-peer exponential": one_peer_exponential(args.clients),
              "ring": topology.ring(args.clients)}
    for name, graph in graphs.items():
        h = spark_tpu.simulate("dgd", "mlp", "digits", graph, partition="dirichlet", alpha=0.1,
                               samples_per_client=60, rounds=args.rounds, eval_every=args.rounds,
                               lr=0.1, batch_size=10)
        print(f"{name:>20}: aggregated accuracy {h['aggregated_acc'][-1]:.4f}, mean local "
              f"{h['mean_local_acc'][-1]:.4f}, consensus distance "
              f"{h['consensus_distance'][-1]:.3g}, bytes per client per round "
              f"{h['bytes_per_client'].mean():.0f}")


if __name__ == "__main__":
    main()
