"""Preparing a tfds array_record cache from IDX files and loading it back (docs/data.md §1).

The IDX files are written here from the format description; the cache is read back through
`tfds.data_source` by `load_dataset`, so these tests cover the whole offline path.
"""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage

from spark_tpu.data import CorruptDataError, DatasetNotFoundError, load_dataset, prepare_dataset

NUM_TRAIN, NUM_TEST = 40, 12


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_idx_dir(folder, *, compress: bool = True, seed: int = 0):
    """Fashion-MNIST-shaped IDX files of random distinct images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, stem, n in (("train", "train", NUM_TRAIN), ("test", "t10k", NUM_TEST)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels, compress)
        written[split] = (images, labels)
    return written


def match_rows(loaded: np.ndarray, written: np.ndarray) -> np.ndarray:
    """The permutation p with loaded[i] == written[p[i]] (images are distinct by construction)."""
    where = {row.tobytes(): i for i, row in enumerate(written)}
    return np.array([where[row.tobytes()] for row in loaded])


@pytest.fixture
def idx_dir(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_prepare_then_load_round_trip(tmp_path, idx_dir, compress):
    written = make_idx_dir(idx_dir, compress=compress)
    ds = load_dataset("fashion_mnist", data_dir=tmp_path / "cache", idx_dir=idx_dir)
    assert (ds.num_classes, ds.input_shape, ds.scale) == (10, (28, 28, 1), 255.0)
    assert (ds.mean, ds.std) == ((0.2860,), (0.3530,))  # docs/data.md §2, not the toy data's
    for x, y, (images, labels) in (
        (ds.train_x, ds.train_y, written["train"]),
        (ds.test_x, ds.test_y, written["test"]),
    ):
        assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape == (len(labels), 28, 28, 1)
        order = match_rows(x[..., 0], images)  # tfds shuffles by example key: same set, new order
        assert sorted(order) == list(range(len(labels)))
        np.testing.assert_array_equal(y, labels[order])


def test_order_is_deterministic(tmp_path, idx_dir):
    make_idx_dir(idx_dir)
    a = load_dataset("fashion_mnist", data_dir=tmp_path / "a", idx_dir=idx_dir)
    b = load_dataset("fashion_mnist", data_dir=tmp_path / "b", idx_dir=idx_dir)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)


def test_prepared_folder_is_a_tfds_dataset(tmp_path, idx_dir):
    make_idx_dir(idx_dir)
    folder = prepare_dataset("fashion_mnist", data_dir=tmp_path, idx_dir=idx_dir)
    assert folder == tmp_path / "fashion_mnist" / "3.0.1"
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    lengths = {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in info["splits"]}
    assert lengths == {"train": NUM_TRAIN, "test": NUM_TEST}
    assert prepare_dataset("fashion_mnist", data_dir=tmp_path, idx_dir=idx_dir) == folder


def test_missing_dataset_names_place_and_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path, prepare=False)
    message = str(info.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert f"python -m spark_tpu.data.prepare --dataset=mnist --data_dir={tmp_path}" in message


def test_missing_fashion_mnist_offline_says_apt_get(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", data_dir=tmp_path, prepare=False)


def test_without_a_network_the_error_comes_in_seconds(tmp_path, monkeypatch):
    """No network (a name lookup that hangs): the actionable message within the probe's timeout,
    before tfds starts its minutes of download retries."""
    import socket
    import time

    import tensorflow_datasets as tfds

    from spark_tpu.data import _prepare

    def hanging_connect(*args, **kwargs):
        time.sleep(5)
        raise OSError("timed out")

    def download(*args, **kwargs):
        raise AssertionError("tfds tried to download without a network")

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download)
    monkeypatch.setattr(_prepare, "PROBE_TIMEOUT_S", 1.0)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert time.perf_counter() - start < 10
    message = str(e.value)
    assert f"python -m spark_tpu.data.prepare --dataset=cifar10 --data_dir={tmp_path}" in message
    assert "no network: storage.googleapis.com:443 was not reachable within 1 s" in message


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="--dataset=fashion_mnis: tfds has no dataset"):
        load_dataset("fashion_mnis", data_dir=tmp_path)


def test_idx_dir_without_files(tmp_path, idx_dir):
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        prepare_dataset("mnist", data_dir=tmp_path, idx_dir=idx_dir)


def test_truncated_idx_fails_and_leaves_no_cache(tmp_path, idx_dir):
    make_idx_dir(idx_dir)
    path = idx_dir / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(CorruptDataError, match="truncated") as info:
        load_dataset("fashion_mnist", data_dir=tmp_path / "cache", idx_dir=idx_dir)
    assert str(path) in str(info.value)
    assert not list((tmp_path / "cache").glob("fashion_mnist/*/dataset_info.json"))


def test_interrupted_prepare_leaves_no_cache(tmp_path, idx_dir, monkeypatch):
    make_idx_dir(idx_dir)
    save = PILImage.Image.save
    calls = []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == NUM_TRAIN // 2:
            raise KeyboardInterrupt("simulated interruption mid-write")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", failing_save)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("fashion_mnist", data_dir=cache, idx_dir=idx_dir)
    assert len(calls) == NUM_TRAIN // 2
    leftovers = (
        [p for p in (cache / "fashion_mnist").iterdir()]
        if (cache / "fashion_mnist").exists()
        else []
    )
    assert leftovers == []  # neither 3.0.1 nor tfds' incomplete.* folder
    with pytest.raises(DatasetNotFoundError):
        load_dataset("fashion_mnist", data_dir=cache, prepare=False)
    monkeypatch.undo()
    assert (
        load_dataset("fashion_mnist", data_dir=cache, idx_dir=idx_dir).train_x.shape[0] == NUM_TRAIN
    )


def test_concurrent_prepare_of_the_same_cache(tmp_path, idx_dir, monkeypatch):
    """Another process finishes the same cache while this one is writing: both succeed."""
    make_idx_dir(idx_dir)
    cache = tmp_path / "cache"
    save = PILImage.Image.save
    calls = []

    def save_and_race(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            command = [
                sys.executable,
                "-m",
                "spark_tpu.data.prepare",
                f"--data_dir={cache}",
                f"--idx_dir={idx_dir}",
            ]
            subprocess.run(command, capture_output=True, timeout=120, check=True)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", save_and_race)
    folder = prepare_dataset("fashion_mnist", data_dir=cache, idx_dir=idx_dir)
    monkeypatch.undo()
    assert len(calls) == NUM_TRAIN + NUM_TEST and sorted(
        p.name for p in folder.parent.iterdir()
    ) == ["3.0.1"]
    assert load_dataset("fashion_mnist", data_dir=cache, prepare=False).train_y.size == NUM_TRAIN


@pytest.fixture
def prepared(tmp_path, idx_dir):
    make_idx_dir(idx_dir)
    return tmp_path, prepare_dataset("fashion_mnist", data_dir=tmp_path, idx_dir=idx_dir)


def test_garbled_array_record_is_reported_corrupt(prepared):
    data_dir, folder = prepared
    shard = next(folder.glob("fashion_mnist-train.array_record-*"))
    blob = bytearray(shard.read_bytes())
    blob[2000:2064] = bytes(64)  # inside the records (the file's tail is block padding)
    shard.write_bytes(bytes(blob))
    with pytest.raises(CorruptDataError, match="corrupt") as info:
        load_dataset("fashion_mnist", data_dir=data_dir, prepare=False)
    assert str(folder) in str(info.value) and "--overwrite" in str(info.value)


def test_truncated_array_record_is_reported_corrupt(prepared):
    data_dir, folder = prepared
    shard = next(folder.glob("fashion_mnist-test.array_record-*"))
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(CorruptDataError, match="corrupt"):
        load_dataset("fashion_mnist", data_dir=data_dir, prepare=False)


def test_broken_dataset_info_is_reported_corrupt(prepared):
    data_dir, folder = prepared
    (folder / "dataset_info.json").write_text('{"name": ')
    with pytest.raises(CorruptDataError, match="dataset_info|JSON|corrupt"):
        load_dataset("fashion_mnist", data_dir=data_dir)  # prepare=True must not paper over it


def test_overwrite_repairs_a_corrupt_cache(prepared, idx_dir):
    data_dir, folder = prepared
    (folder / "dataset_info.json").write_text("{")
    prepare_dataset("fashion_mnist", data_dir=data_dir, idx_dir=idx_dir, overwrite=True)
    assert load_dataset("fashion_mnist", data_dir=data_dir, prepare=False).test_y.shape == (
        NUM_TEST,
    )


def test_command_line(tmp_path, idx_dir):
    make_idx_dir(idx_dir, compress=False)
    command = [
        sys.executable,
        "-m",
        "spark_tpu.data.prepare",
        "--dataset=fashion_mnist",
        f"--data_dir={tmp_path / 'cache'}",
        f"--idx_dir={idx_dir}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "cache" / "fashion_mnist" / "3.0.1") in done.stdout
    bad = subprocess.run(
        command[:3] + [f"--data_dir={tmp_path / 'other'}", f"--idx_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1 and "lacks the IDX files" in bad.stderr
