"""Datasets, samplers and the tf.data input pipeline.

=====================  =================================================================
module                 what lives there
=====================  =================================================================
``base``               the framework: :class:`Dataset`, :class:`DatasetSource`,
                       :func:`load_dataset` (split, max_train / max_test, size, channels),
                       :func:`split_by_classes`, :func:`fetch`; the helpers sources share
                       (``option``, ``root_path``, ``stream_mode``, ``stratified_split``)
``idx``                ``fashion_mnist`` and ``mnist``: IDX files, their search locations
``download``           the checksummed, https-only downloader (temporary ``.part`` files)
``digits``             ``digits``: scikit-learn's 8x8 digits, offline
``fingerprints``       what identifies a dataset's files, without decoding them
``image_folder``       ``image_folder``: a user's images, one sub-folder per class
``layouts``            the benchmarks (CUB-200-2011, Cars196, Stanford Online Products,
                       In-Shop) in their published layouts, with their protocols
``images``             decoding, resizing and grey <-> RGB; in memory or streamed
``image_files``        :class:`ImageFiles`: an index of image files, decoded as it streams
``samplers``           which images make each batch (``random``, ``pk``; numpy only)
``pipeline``           the tf.data pipelines for training and evaluation (TensorFlow)
=====================  =================================================================

Each dataset is a :class:`DatasetSource`, the code of an entry of
:data:`tripletlab.registry.DATASETS` (declared, with its schema, in
:mod:`tripletlab.options.dataset`; importing this package attaches the code). A new one is
its entry and source plus ``conf/dataset/<name>.yaml`` (docs/extending.md). Every problem with the input raises one
:class:`~tripletlab.errors.DataError` naming the file or folder, the problem and the fix;
nothing is silently skipped.

Only numpy and PIL are imported here (TensorFlow takes seconds to import), so loading and
checking data stays fast: ``pipeline`` is imported on its own, by training and inference.
"""

from __future__ import annotations

# The sources register their datasets in DATASETS as they are imported.
from tripletlab.data import digits, idx, image_folder, layouts  # noqa: F401
from tripletlab.data.base import (
    Dataset,
    DatasetSource,
    ensure_dataset,
    fetch,
    fingerprint,
    load_dataset,
    option,
    root_path,
    split_by_classes,
    stratified_split,
    stream_mode,
)
from tripletlab.data.download import check_download_url
from tripletlab.data.idx import (
    IDX_DATASETS,
    IDX_FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    find_idx_folder,
    read_idx,
    search_locations,
    write_idx,
)
from tripletlab.data.image_files import ImageFiles
from tripletlab.data.images import (
    IMAGE_EXTENSIONS,
    adapt_images,
    aligned_empty,
    conform_images,
    decode_image,
    images_from_files,
    in_memory_peak_bytes,
    to_gray,
)
from tripletlab.registry import DATASETS

__all__ = [
    "IDX_DATASETS",
    "IDX_FILES",
    "IMAGES_MAGIC",
    "IMAGE_EXTENSIONS",
    "LABELS_MAGIC",
    "Dataset",
    "DatasetSource",
    "ImageFiles",
    "adapt_images",
    "aligned_empty",
    "check_download_url",
    "conform_images",
    "decode_image",
    "ensure_dataset",
    "fetch",
    "find_idx_folder",
    "fingerprint",
    "images_from_files",
    "in_memory_peak_bytes",
    "load_dataset",
    "option",
    "read_idx",
    "root_path",
    "search_locations",
    "split_by_classes",
    "stratified_split",
    "stream_mode",
    "to_gray",
    "write_idx",
]


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "DATASET_NAMES":  # every dataset name, registered here or elsewhere
        return DATASETS.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
