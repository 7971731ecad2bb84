"""Data: split lists, the semi-supervised dataset, the release's augmentations, the toy dataset.

The dataset (and with it torch / torchvision) is imported on first use, so that the list tools
``python -m allspark.tools.splits`` and ``python -m allspark.tools.toy`` start quickly.
"""
import importlib

from ..config import IGNORE_INDEX
from .classes import CLASSES, PALETTES, REDUCE_ZERO_LABEL, class_names, num_classes, palette_of
from .lists import IMAGE_EXTS, DataError, Sample, read_list, write_list

_LAZY = {"SemiDataset": "semi", "MODES": "semi", "PAD_UNLABELED": "semi", "decode_mask": "semi", "read_rgb": "semi"}

__all__ = ["IGNORE_INDEX", "CLASSES", "PALETTES", "REDUCE_ZERO_LABEL", "class_names", "num_classes", "palette_of", "IMAGE_EXTS", "DataError", "Sample", "read_list", "write_list",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
