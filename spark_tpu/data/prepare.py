"""Command line: build a dataset's tfds array_record cache once (docs/data.md §1).

    python -m spark_tpu.data.prepare --dataset=fashion_mnist --data_dir=~/.cache/spark_tpu/tfds
    python -m spark_tpu.data.prepare --dataset=mnist --idx_dir=/path/to/idx_files

Offline, Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``); any MNIST-format IDX folder works with ``--idx_dir``;
with a network, tfds downloads the data. The launcher calls the same `prepare_dataset` when a
cache is missing.
"""

from __future__ import annotations

import sys

from absl import app, flags

from spark_tpu import logs

from spark_tpu.data import CorruptDataError, DatasetNotFoundError, default_data_dir, prepare_dataset


def _define_flags() -> None:
    flags.DEFINE_string("dataset", "fashion_mnist", "tfds name, or 'emnist' for emnist/digits.")
    flags.DEFINE_string("data_dir", None, f"cache root (default {default_data_dir()}).")
    flags.DEFINE_string("idx_dir", None, "folder of MNIST-format IDX files to build from.")
    flags.DEFINE_bool("download", True, "let tfds download when no local files are found.")
    flags.DEFINE_bool("overwrite", False, "delete an existing (e.g. corrupt) cache first.")


def main(argv: list[str]) -> None:
    """Prepares ``--dataset`` and prints the folder it was written to."""
    if not (flags.FLAGS.alsologtostderr or flags.FLAGS.logtostderr):
        logs.quiet_terminal(keep=False)  # tfds' INFO lines and warnings; errors still show
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    try:
        folder = prepare_dataset(
            f.dataset,
            data_dir=f.data_dir,
            idx_dir=f.idx_dir,
            download=f.download,
            overwrite=f.overwrite,
        )
    except (DatasetNotFoundError, CorruptDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{f.dataset} is prepared in {folder}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
