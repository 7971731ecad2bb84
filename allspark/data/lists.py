"""Split lists: one sample per line, ``<image> <mask>``, both relative to the dataset root, e.g.
``JPEGImages/2007_000733.jpg SegmentationClass/2007_000733.png``.

Kept free of torch so that the list tools (``allspark.data.splits``, ``allspark.data.toy``) start fast.
"""
import os
import tempfile
from pathlib import Path

__all__ = ["DataError", "Sample", "read_list", "write_list"]


class DataError(ValueError):
    """A dataset root, list or sample that cannot be used; the message names the file (and list line)."""


class Sample:
    """One list entry: image and mask paths relative to the root, and where the entry was read."""

    __slots__ = ("image", "mask", "source")

    def __init__(self, image, mask, source):
        self.image, self.mask, self.source = image, mask, source

    def __repr__(self):
        return f"Sample({self.image!r}, {self.mask!r}, from {self.source})"


def read_list(path):
    """Parse a split list into [Sample]; a missing or empty list, or a line that is not two paths,
    raises DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    samples = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}:{lineno}: expected '<image> <mask>', got {line.strip()!r}")
        samples.append(Sample(fields[0], fields[1], f"{path}:{lineno}"))
    if not samples:
        raise DataError(f"split list {path} is empty")
    return samples


def write_list(path, pairs):
    """Write ``<image> <mask>`` lines to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{image} {mask}\n" for image, mask in pairs)
    os.replace(tmp, path)
