"""tfds builders that write array_record datasets without TensorFlow (docs/data.md §1).

tfds' own builders encode images with TensorFlow (`tf.image.encode_png`) and the MNIST family also
reads its files with `tf.io.gfile`. The subclasses here keep everything else of the original
builder (name, version, config, features, split names, example keys, and so tfds' deterministic
shuffle) and change only what needs TensorFlow: images are PNG-encoded with Pillow before tfds sees
them (tfds stores encoded bytes as given), and MNIST-format IDX files are read with `read_idx`,
from a local folder or from tfds' own download (checksum-verified, no TensorFlow needed for HTTP).
The result is an ordinary tfds dataset folder that `tfds.data_source` reads.
"""

from __future__ import annotations

import inspect
import io
import os
import pathlib
import types
import urllib.parse
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image as PILImage

from ._errors import CorruptDataError
from ._idx import read_idx

IdxFiles = Mapping[str, tuple[str, str]]  # split -> (images file, labels file)

# The builders whose raw data is four MNIST-format IDX files (tfds' image_classification/mnist.py).
IDX_BUILDERS = ("mnist", "fashion_mnist", "kmnist", "emnist")
_SPLIT_STEMS = {"train": ("train",), "test": ("t10k", "test")}
_PART_STEMS = {"images": "images-idx3-ubyte", "labels": "labels-idx1-ubyte"}


def idx_file_names(tfds_name: str) -> dict[str, dict[str, list[str]]]:
    """Accepted file names, per split and part, for the IDX files of ``tfds_name``.

    The standard names are ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (MNIST, Fashion-MNIST,
    KMNIST); EMNIST's are ``emnist-<config>-{train,test}-...``. Each may end in ``.gz`` or not.
    """
    prefixes = [""]
    if "/" in tfds_name:
        prefixes.append(f"{tfds_name.split('/')[0]}-{tfds_name.split('/')[1]}-")
    names: dict[str, dict[str, list[str]]] = {}
    for split, split_stems in _SPLIT_STEMS.items():
        names[split] = {
            part: [
                f"{prefix}{stem}-{part_stem}{ext}"
                for prefix in prefixes
                for stem in split_stems
                for ext in (".gz", "")
            ]
            for part, part_stem in _PART_STEMS.items()
        }
    return names


def find_idx_files(idx_dir: str | os.PathLike[str], tfds_name: str) -> IdxFiles | None:
    """The train and test IDX files of ``tfds_name`` in ``idx_dir``, or None if any is missing."""
    found: dict[str, tuple[str, str]] = {}
    for split, parts in idx_file_names(tfds_name).items():
        paths = []
        for candidates in parts.values():
            hits = [os.path.join(idx_dir, c) for c in candidates]
            hits = [h for h in hits if os.path.isfile(h)]
            if not hits:
                return None
            paths.append(hits[0])
        found[split] = (paths[0], paths[1])
    return found


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8 [H, W, C]`` image (C in 1, 3, 4) as tfds' Image feature stores it."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"encode_png needs uint8 [H, W, 1|3|4], got {image.dtype} {image.shape}.")
    pil = PILImage.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    pil.save(buffer, format="png", compress_level=1)  # ~4% larger than level 6, faster
    return buffer.getvalue()


def _check_idx_pair(
    images: np.ndarray, labels: np.ndarray, files: tuple[str, str], features
) -> None:
    shape = tuple(features["image"].shape)
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != shape[:2]:
        raise CorruptDataError(
            f"IDX file {files[0]} holds {images.dtype} {images.shape}; the builder expects uint8 "
            f"images [N, {shape[0]}, {shape[1]}]."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise CorruptDataError(
            f"IDX file {files[1]} holds labels {labels.shape} for {images.shape[0]} images in "
            f"{files[0]}; the counts must match."
        )
    num_classes = features["label"].num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDataError(
            f"IDX file {files[1]} has labels in [{labels.min()}, {labels.max()}]; "
            f"this dataset has {num_classes} classes."
        )


def _idx_examples(self, images_path: str, labels_path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Same keys as tfds' MNIST builder (the example index), so the same shuffled order."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    _check_idx_pair(images, labels, (images_path, labels_path), self.info.features)
    for index in range(images.shape[0]):
        yield index, {"image": encode_png(images[index][..., None]), "label": int(labels[index])}


def _download_idx(builder, dl_manager) -> IdxFiles:
    """tfds' own download of the four IDX files (checksums verified), without extraction."""
    if builder.name != "emnist":
        names = {
            "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        }
        urls = {
            f"{s}/{i}": urllib.parse.urljoin(builder.URL, n)
            for s, ns in names.items()
            for i, n in enumerate(ns)
        }
        paths = dl_manager.download(urls)
        return {s: (os.fspath(paths[f"{s}/0"]), os.fspath(paths[f"{s}/1"])) for s in names}
    config = builder.builder_config.name
    archive = os.fspath(dl_manager.download(builder.URL))
    out_dir = os.path.join(os.path.dirname(archive), f"emnist_{config}_idx")
    with zipfile.ZipFile(archive) as zf:
        for split in ("train", "test"):
            for part_stem in _PART_STEMS.values():
                member = f"gzip/emnist-{config}-{split}-{part_stem}.gz"
                if not os.path.exists(os.path.join(out_dir, member)):
                    zf.extract(member, out_dir)
    files = find_idx_files(os.path.join(out_dir, "gzip"), f"emnist/{config}")
    if files is None:
        raise CorruptDataError(f"EMNIST archive {archive} lacks the {config} IDX files.")
    return files


def idx_builder(
    base: tfds.core.DatasetBuilder, idx_files: IdxFiles | None
) -> tfds.core.DatasetBuilder:
    """A builder like ``base`` (an MNIST-family builder) that reads IDX files with numpy.

    Args:
      base: the registered tfds builder, e.g. ``tfds.builder("fashion_mnist", data_dir=...)``.
      idx_files: local IDX files per split; None to download them through tfds.

    Returns:
      A builder writing to ``base``'s own data folder, ready for ``download_and_prepare``.
    """

    def split_generators(self, dl_manager):
        files = idx_files if idx_files is not None else _download_idx(self, dl_manager)
        logging.info("Preparing %s from IDX files %s", self.name, files)
        return {split: self._generate_examples(*paths) for split, paths in files.items()}

    return _subclass(
        base, {"_split_generators": split_generators, "_generate_examples": _idx_examples}
    )


def png_builder(base: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    """A builder like ``base`` whose numpy images are PNG-encoded with Pillow instead of TF.

    Works for builders whose generators need no TensorFlow otherwise (many read their files with
    `tf.io.gfile`: those raise an ImportError naming tensorflow).
    """
    image_keys = [k for k, f in base.info.features.items() if isinstance(f, tfds.features.Image)]

    def generate_examples(self, *args, **kwargs):
        for key, example in super(type(self), self)._generate_examples(*args, **kwargs):
            for k in image_keys:
                if isinstance(example.get(k), np.ndarray):
                    example = {**example, k: encode_png(example[k])}
            yield key, example

    return _subclass(base, {"_generate_examples": generate_examples})


def _registered_url_infos(base_cls) -> dict[str, Any] | None:
    """tfds' registered download checksums of ``base_cls`` (verified when downloading).

    Looked up where tfds keeps them (``url_checksums/<name>.txt`` for legacy builders,
    ``checksums.tsv`` beside the builder's source otherwise) without ``base_cls.url_infos``, which
    needs the optional ``importlib_resources`` package to locate the source folder.
    """
    for path in (
        tfds.core.utils.tfds_path() / "url_checksums" / f"{base_cls.name}.txt",
        pathlib.Path(inspect.getfile(base_cls)).parent / "checksums.tsv",
    ):
        if path.exists():
            return tfds.core.download.checksums.load_url_infos(path)
    return None


def _subclass(base: tfds.core.DatasetBuilder, methods: dict[str, Any]) -> tfds.core.DatasetBuilder:
    base_cls = type(base)

    def body(namespace: dict[str, Any]) -> None:
        namespace.update(methods)
        namespace["name"] = base_cls.name  # same folder and file names as tfds' own builder
        namespace["url_infos"] = _registered_url_infos(base_cls)

    cls = types.new_class(
        f"NoTf{base_cls.__name__}", (base_cls,), {"skip_registration": True}, body
    )
    return cls(
        data_dir=os.fspath(base.data_dir_root),
        config=base.builder_config,
        file_format="array_record",
    )
