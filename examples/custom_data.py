"""Your own data and partition: scikit-learn's digits as numpy arrays, split by label into blocks.

`spark_tpu.from_arrays` makes a `Dataset` from numpy arrays (inputs normalized by the train
split's per-channel statistics); `simulate(partition=[...])` takes one array of training-set
indices per client (the client count is its length). Here client q gets the q-th contiguous block
of the label-sorted training set: one or two classes each, the hardest non-IID split.
Run from the repository root: python -m examples.custom_data [--rounds=N]
"""

import argparse

import numpy as np
import spark_tpu
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def label_blocks(labels: np.ndarray, clients: int) -> list[np.ndarray]:
    """Client q's indices: the q-th of `clients` contiguous blocks of the label-sorted set."""
    return np.array_split(np.argsort(labels, kind="stable"), clients)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--clients", type=int, default=10)
    args = p.parse_args(argv)
    x, y = load_digits(return_X_y=True)  # 1,797 8×8 images as 64 features in 0..16
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.25, random_state=0)
    dataset = spark_tpu.from_arrays(train_x, train_y, test_x, test_y, name="my_digits", scale=16)
    blocks = label_blocks(dataset.train_y, args.clients)
    for q, ix in enumerate(blocks):
        classes = np.unique(dataset.train_y[ix]).tolist()
        print(f"client {q}: {len(ix)} samples of classes {classes}")
    h = spark_tpu.simulate("dgd", "mlp", dataset, "ring", partition=blocks, rounds=args.rounds,
                           eval_every=max(1, args.rounds // 4), lr=0.1, batch_size=16)
    for r, local, agg in zip(h["round"], h["mean_local_acc"], h["aggregated_acc"]):
        if not np.isnan(agg):
            print(f"round {r}: mean local accuracy {local:.4f}, aggregated {agg:.4f}")


if __name__ == "__main__":
    main()
