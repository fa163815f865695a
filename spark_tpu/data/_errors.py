"""Errors raised by the data layer (docs/data.md §1).

Every message names the dataset or file, what is wrong with it, and the command that fixes it, so
a launcher can show it unchanged (docs/style.md §10).
"""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not prepared in the cache and could not be prepared here.

    The message names the dataset, every place that was searched, and the exact command that
    provides it.
    """


class CorruptDataError(ValueError):
    """A source file (IDX) or a prepared cache (array_record, dataset_info.json) is unreadable.

    The message names the file and what is wrong with it (bad magic number, truncated, checksum
    mismatch, ...) and, for a cache, the directory to delete before preparing again.
    """
