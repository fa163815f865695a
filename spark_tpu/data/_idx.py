"""Reading MNIST-format IDX files, gzipped or raw (docs/data.md §1).

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the array in C order
with big-endian items. Files are validated before they are trusted: magic number, dtype code, the
dimensions, and that the payload is exactly as long as the dimensions say.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from ._errors import CorruptDataError

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise CorruptDataError(
            f"IDX file {path} is a corrupt or truncated gzip stream ({err}); "
            "download or copy it again."
        ) from err


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one IDX file (``.gz`` or raw, told apart by content) into a numpy array.

    Args:
      path: the file, e.g. ``/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz``.

    Returns:
      The array with the file's shape, in native byte order: ``uint8 [N, H, W]`` for MNIST-style
      images and ``uint8 [N]`` for labels.

    Raises:
      FileNotFoundError: the file does not exist.
      CorruptDataError: a bad magic number or dtype code, zero dimensions, a payload shorter or
        longer than the dimensions say, or a broken gzip stream. The message names the file.

    Examples:
      >>> import gzip, tempfile, os, numpy as np
      >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
      >>> with gzip.open(p, "wb") as f:
      ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 9]))
      >>> read_idx(p).tolist()
      [7, 1, 9]
    """
    path = os.fspath(path)
    data = _read_bytes(path)

    def corrupt(what: str) -> CorruptDataError:
        return CorruptDataError(f"IDX file {path} is corrupt: {what}.")

    if len(data) < 4:
        raise corrupt(f"only {len(data)} bytes, shorter than the 4-byte magic number")
    if data[0] != 0 or data[1] != 0:
        raise corrupt(f"magic number starts {data[:2].hex()}, expected 0000 (not an IDX file?)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise corrupt(f"unknown dtype code 0x{code:02x}, expected one of 08 09 0b 0c 0d 0e")
    if ndim == 0:
        raise corrupt("zero dimensions in the magic number")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(f"truncated header: {len(data)} bytes, {ndim} dimensions need {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header
    if payload != expected:
        kind = "truncated" if payload < expected else "too long"
        raise corrupt(
            f"{kind}: dimensions {dims} of {dtype.name} need {expected} payload bytes, "
            f"the file has {payload}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)
