"""Building the tfds array_record cache once (docs/data.md §1).

`prepare_dataset` writes an ordinary tfds dataset folder,
``<data_dir>/<name>/[<config>/]<version>``, that `tfds.data_source` reads with random access and
without TensorFlow. Sources, in order:

1. ``idx_dir``: a folder of MNIST-format IDX files (MNIST family only);
2. the Debian package's IDX files (``dataset-fashion-mnist`` →
   ``/usr/share/datasets/fashion-mnist``), for Fashion-MNIST;
3. tfds' own download, where the machine has a network.

tfds writes into ``incomplete.*`` beside the final folder and renames it on success, deleting it on
any exception, so an interrupted prepare leaves no half-written cache.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import threading
import urllib.parse

import requests
import tensorflow_datasets as tfds
from absl import logging

from ._builders import IDX_BUILDERS, find_idx_files, idx_builder, idx_file_names, png_builder
from ._dataset import DATASETS
from ._errors import DatasetNotFoundError

DATA_DIR_ENV = "SPARK_TPU_DATA_DIR"
# Short names accepted beside tfds names.
ALIASES = {"emnist": "emnist/digits"}
# Local IDX files installed by a Debian package: name -> (folder, package).
SYSTEM_IDX_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist")}
# Without a network tfds retries each download for minutes; one short connection attempt to its
# download mirror (or the HTTPS proxy) first turns that into an error within seconds.
PROBE_HOST = ("storage.googleapis.com", 443)
PROBE_TIMEOUT_S = 3.0
OFFLINE = (
    "The machine has no network: {host}:{port} was not reachable within {timeout:g} s, so tfds "
    "cannot download it."
)


def _probe_target() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if url.hostname:
            return url.hostname, url.port or 80
    return PROBE_HOST


def network_available(timeout: float | None = None) -> tuple[bool, str]:
    """Whether a TCP connection to tfds' download mirror (or the HTTPS proxy) opens within
    ``timeout`` seconds (default `PROBE_TIMEOUT_S`), name lookup included; and, if not, the
    message saying so."""
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    host, port = _probe_target()
    reachable = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            reachable.append(True)
        except Exception:  # noqa: BLE001 - any failure means unreachable; never raise in a thread
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a stuck name lookup is abandoned
    thread.start()
    thread.join(timeout)
    return bool(reachable), OFFLINE.format(host=host, port=port, timeout=timeout)


def default_data_dir() -> str:
    """``$SPARK_TPU_DATA_DIR``, or ``~/.cache/spark_tpu/tfds``."""
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or "~/.cache/spark_tpu/tfds")


def tfds_name(name: str) -> str:
    """The tfds name for a dataset name (``"emnist"`` → ``"emnist/digits"``; others unchanged)."""
    return ALIASES.get(name, name)


def prepare_command(name: str, data_dir: str, idx_dir: str | None = None) -> str:
    """The shell command that prepares ``name`` into ``data_dir``."""
    command = f"python -m spark_tpu.data.prepare --dataset={name} --data_dir={data_dir}"
    return command + (f" --idx_dir={idx_dir}" if idx_dir else "")


def version_dirs(name: str, data_dir: str | os.PathLike[str]) -> list[pathlib.Path]:
    """Prepared (or half-broken) version folders of ``name``: those holding a dataset_info.json."""
    root = pathlib.Path(data_dir) / tfds_name(name)
    return sorted(p.parent for p in root.glob("*/dataset_info.json"))


def _is_idx_dataset(name: str) -> bool:
    return tfds_name(name).split("/")[0] in IDX_BUILDERS


def _expected_idx_names(name: str) -> str:
    names = idx_file_names(tfds_name(name))
    return ", ".join(f"{parts['images'][0]} / {parts['labels'][0]}" for parts in names.values())


def missing_message(name: str, data_dir: str, looked: list[str] | None = None) -> str:
    """What a user reads when ``name`` is not prepared: where we looked and how to provide it."""
    lines = [
        f"Dataset {name!r} is not prepared in {data_dir} (no {tfds_name(name)}/<version>/"
        "dataset_info.json there)."
    ]
    for place in looked or []:
        lines.append(f"  Also looked in: {place}")
    if name in SYSTEM_IDX_DIRS:
        folder, package = SYSTEM_IDX_DIRS[name]
        lines.append(f"Offline: `apt-get install {package}` (puts IDX files in {folder}), then")
        lines.append(f"  {prepare_command(name, data_dir)}")
    if _is_idx_dataset(name):
        lines.append(f"From MNIST-format IDX files ({_expected_idx_names(name)}, .gz or raw):")
        lines.append(f"  {prepare_command(name, data_dir, '/path/to/idx_files')}")
    lines.append(f"With a network (tfds downloads it): {prepare_command(name, data_dir)}")
    return "\n".join(lines)


def _local_idx_files(name: str, idx_dir: str | None, looked: list[str]):
    """IDX files from ``idx_dir`` (which must hold them) or the Debian folder, else None."""
    if idx_dir is not None:
        files = find_idx_files(idx_dir, tfds_name(name))
        if files is None:
            raise DatasetNotFoundError(
                f"--idx_dir={idx_dir} lacks the IDX files of {name!r}: expected "
                f"{_expected_idx_names(name)} (each .gz or raw)."
            )
        return files
    if name in SYSTEM_IDX_DIRS:
        folder, package = SYSTEM_IDX_DIRS[name]
        files = find_idx_files(folder, tfds_name(name))
        looked.append(f"{folder} (Debian package {package})")
        return files
    return None


def prepare_dataset(
    name: str = "fashion_mnist",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    idx_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    overwrite: bool = False,
) -> pathlib.Path:
    """Builds the array_record cache of a tfds image dataset once (docs/data.md §1).

    Args:
      name: a tfds name (``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``, ...) or ``"emnist"``
        (tfds ``emnist/digits``).
      data_dir: the cache root; default `default_data_dir()`.
      idx_dir: a folder of MNIST-format IDX files to build from (MNIST family only), named
        ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (EMNIST: ``emnist-digits-...``).
      download: whether tfds may download the data when no local files are found.
      overwrite: delete an existing cache of ``name`` first (e.g. one reported corrupt).

    Returns:
      The prepared version folder, e.g. ``<data_dir>/fashion_mnist/3.0.1``.

    Raises:
      DatasetNotFoundError: no local files and ``download`` is False, the download failed, or the
        builder needs TensorFlow; the message says where we looked and what command provides it.
      CorruptDataError: a source IDX file is truncated or corrupt.
      ValueError: ``name`` is not a tfds name, or is a registered data set (`DATASETS`, e.g. the
        scikit-learn ones, which need no preparing).

    Examples:
      >>> prepare_dataset("fashion_mnist", data_dir="/tmp/tfds")  # doctest: +SKIP
      PosixPath('/tmp/tfds/fashion_mnist/3.0.1')
    """
    if name in DATASETS:
        raise ValueError(f"--dataset={name} is made by its registered loader (two_moons and "
                         "digits ship with scikit-learn) and needs no preparing.")
    data_dir = (
        os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else default_data_dir()
    )
    idx_dir = os.path.expanduser(os.fspath(idx_dir)) if idx_dir is not None else None
    if overwrite:
        for folder in version_dirs(name, data_dir):
            logging.info("Deleting the existing cache %s", folder)
            shutil.rmtree(folder)
    try:
        base = tfds.builder(tfds_name(name), data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"--dataset={name}: tfds has no dataset of that name. Use fashion_mnist (the default), "
            "mnist, emnist, cifar10, another tfds image-classification name "
            "(`tfds.list_builders()`), or two_moons / digits."
        ) from err
    if base.is_prepared():
        logging.info("%s is already prepared in %s", name, base.data_dir)
        return pathlib.Path(base.data_dir)
    looked: list[str] = []
    files = None
    if _is_idx_dataset(name):
        files = _local_idx_files(name, idx_dir, looked)
        if files is None and not download:
            raise DatasetNotFoundError(missing_message(name, data_dir, looked))
        builder = idx_builder(base, files)
    elif idx_dir is not None:
        raise ValueError(
            f"--idx_dir applies to the MNIST family ({', '.join(IDX_BUILDERS)}), not {name!r}."
        )
    elif not download:
        raise DatasetNotFoundError(missing_message(name, data_dir))
    else:
        builder = png_builder(base)
    if not (_is_idx_dataset(name) and files is not None):  # tfds will download
        online, why = network_available()
        if not online:
            raise DatasetNotFoundError(f"{missing_message(name, data_dir, looked)}\n{why}")
    _run_builder(builder, name, data_dir, looked)
    return pathlib.Path(base.data_dir)


def _run_builder(builder, name: str, data_dir: str, looked: list[str]) -> None:
    logging.info("Preparing %s into %s", name, builder.data_dir)
    try:
        builder.download_and_prepare(file_format="array_record")
    except ImportError as err:
        if "tensorflow" not in str(err).lower():
            raise
        raise DatasetNotFoundError(
            f"tfds' builder for {name!r} needs TensorFlow to prepare it (reading does not). "
            f"Run once `pip install tensorflow` and then {prepare_command(name, data_dir)}, or "
            f"prepare it elsewhere and copy {pathlib.Path(data_dir) / tfds_name(name)} here."
        ) from err
    except (tfds.download.DownloadError, requests.RequestException) as err:
        raise DatasetNotFoundError(
            f"{missing_message(name, data_dir, looked)}\nThe download failed: {err}"
        ) from err
    except OSError:
        # Another process prepared the same cache first, so tfds' final rename found the folder
        # taken (its own temporary folder is deleted either way).
        if not (pathlib.Path(builder.data_dir) / "dataset_info.json").exists():
            raise
        logging.info("%s was prepared concurrently by another process", name)
