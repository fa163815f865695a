"""read_idx against IDX bytes written here by hand (docs/data.md §1)."""

import gzip
import re
import struct

import numpy as np
import pytest

from spark_tpu.data import CorruptDataError, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, built from the format description, not from read_idx."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_round_trip(tmp_path, images, compress):
    path = tmp_path / ("x-idx3-ubyte" + (".gz" if compress else ""))
    data = idx_bytes(images)
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 4, 3)
    np.testing.assert_array_equal(out, images)


def test_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "ints-idx1"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + values.tobytes())
    assert read_idx(path).tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-7], "truncated: dimensions (5, 4, 3)"),
        (lambda b: b + b"\x00", "too long"),
        (lambda b: b"\x01\x00" + b[2:], "magic number"),
        (lambda b: b[:2] + b"\x42" + b[3:], "unknown dtype code"),
        (lambda b: b[:9], "truncated header"),
        (lambda b: b[:2], "shorter than the 4-byte magic"),
    ],
    ids=["short-payload", "long-payload", "bad-magic", "bad-dtype", "short-header", "tiny"],
)
def test_corrupt_files_raise_naming_the_file(tmp_path, images, mutate, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(images)))
    with pytest.raises(CorruptDataError, match=re.escape(message)) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path, images):
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-20])
    with pytest.raises(CorruptDataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent-idx1-ubyte.gz")
