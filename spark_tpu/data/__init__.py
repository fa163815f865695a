"""Datasets, partitions and per-client arrays (docs/data.md; docs/architecture.md §2, layer 2).

``python -m spark_tpu.data.prepare --dataset=fashion_mnist --data_dir=DIR`` builds a dataset's
array_record cache once; `load_dataset` reads it with `tfds.data_source` (no TensorFlow).
"""

from ._dataset import DATASETS as DATASETS
from ._dataset import REFERENCE_STATS as REFERENCE_STATS
from ._dataset import Dataset as Dataset
from ._dataset import channel_stats as channel_stats
from ._dataset import from_arrays as from_arrays
from ._dataset import normalize as normalize
from ._dataset import register_dataset as register_dataset
from ._dirichlet import dirichlet as dirichlet
from ._dirichlet import dirichlet_disjoint as dirichlet_disjoint
from ._errors import CorruptDataError as CorruptDataError
from ._errors import DatasetNotFoundError as DatasetNotFoundError
from ._federated import ClientArrays as ClientArrays
from ._federated import federated_arrays as federated_arrays
from ._federated import pad_clients as pad_clients
from ._idx import read_idx as read_idx
from ._load import load_dataset as load_dataset
from ._partition import PARTITIONERS as PARTITIONERS
from ._partition import Partition as Partition
from ._partition import from_index_lists as from_index_lists
from ._partition import partition as partition
from ._partition_file import read_partition_file as read_partition_file
from ._partition_file import source_to_cache as source_to_cache
from ._partition import register_partitioner as register_partitioner
from ._prepare import default_data_dir as default_data_dir
from ._prepare import prepare_dataset as prepare_dataset
from ._shards import iid as iid
from ._shards import shards as shards
from ._sklearn import sklearn_digits as sklearn_digits
from ._sklearn import two_moons as two_moons
from ._summary import client_class_counts as client_class_counts
from ._summary import format_partition_summary as format_partition_summary
from ._summary import label_entropy as label_entropy
from ._summary import partition_summary as partition_summary
