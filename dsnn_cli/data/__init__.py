"""Data: image datasets and ODE flow-map data, subsets, and batches.

>>> data = load_data(cfg.data)          # ImageData or VectorData with train/val/test splits
>>> for x, y in batches(data.train, 128, shuffle=True, augment="crop_flip", generator=g): ...
"""

from dsnn_cli.data.containers import DATASETS, ImageData, LazySplit, Source, Split, VectorData, VectorSource
from dsnn_cli.data.images import augment_batch
from dsnn_cli.data.loading import batches, load_data
from dsnn_cli.data.subsets import stratified_subset

__all__ = [
    "DATASETS",
    "ImageData",
    "LazySplit",
    "Source",
    "Split",
    "VectorData",
    "VectorSource",
    "augment_batch",
    "batches",
    "load_data",
    "stratified_subset",
]
