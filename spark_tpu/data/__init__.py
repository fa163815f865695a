"""Datasets, partitions and per-client arrays (SPEC section 9; DESIGN layer 2)."""

from ._errors import CorruptDataError as CorruptDataError
from ._errors import DatasetNotFoundError as DatasetNotFoundError
from ._idx import read_idx as read_idx
