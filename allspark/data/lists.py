"""Split lists: one sample per line, ``<image> <mask>``, both relative to the dataset root, e.g.
``JPEGImages/2007_000733.jpg SegmentationClass/2007_000733.png``; an unlabeled list may name the image
alone (``<image>``).

Kept free of torch so that the list tools (``allspark.tools.splits``, ``allspark.tools.toy``) start fast.
"""
from pathlib import Path

from ..files import atomic_path

__all__ = ["IMAGE_EXTS", "DataError", "Sample", "read_list", "write_list"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # the image files a folder scan finds (split tool, predict.py)


class DataError(ValueError):
    """A dataset root, list or sample that cannot be used; the message names the file (and list line)."""


class Sample:
    """One list entry: image and mask paths relative to the root (mask None: an image-only line of an
    unlabeled list), and where the entry was read."""

    __slots__ = ("image", "mask", "source")

    def __init__(self, image, mask, source):
        self.image, self.mask, self.source = image, mask, source

    def __repr__(self):
        return f"Sample({self.image!r}, {self.mask!r}, from {self.source})"


def read_list(path, image_only=False):
    """Parse a split list into [Sample]; a missing or empty list, or a line that is not two paths (one
    or two with ``image_only``: unlabeled lists), raises DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    samples = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 and not (image_only and len(fields) == 1):
            expected = "'<image> <mask>' or '<image>'" if image_only else "'<image> <mask>'"
            raise DataError(f"{path}:{lineno}: expected {expected}, got {line.strip()!r}")
        samples.append(Sample(fields[0], fields[1] if len(fields) == 2 else None, f"{path}:{lineno}"))
    if not samples:
        raise DataError(f"split list {path} is empty")
    return samples


def write_list(path, pairs):
    """Write ``<image> <mask>`` lines (``<image>`` where the mask is None) to ``path`` through a
    temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, "split list") as tmp, open(tmp, "w") as f:
        f.writelines(f"{image} {mask}\n" if mask is not None else f"{image}\n" for image, mask in pairs)
