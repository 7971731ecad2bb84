"""Checking a dataset against its split lists: the pre-flight check train.py and eval.py run at start-up
(every listed file exists: stat calls only) and the full check (every mask opened: mode, size against its
image, values that are neither a class nor ignore; the pixel frequency of each class). The command:
``python -m allspark.tools.check_data``."""
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import IGNORE_INDEX
from .lists import DataError, read_list

__all__ = ["missing_files", "preflight", "full_check", "Report"]

SHOWN = 10  # missing files named in an error
MASK_MODES = ("P", "L", "I", "I;16")


def missing_files(root, samples, need_mask=True):
    """[(kind, path relative to root, list line)] of the listed images (and masks) that are not files."""
    root = Path(root)
    missing = []
    for s in samples:
        if not (root / s.image).is_file():
            missing.append(("image", s.image, s.source))
        if need_mask and s.mask is not None and not (root / s.mask).is_file():
            missing.append(("mask", s.mask, s.source))
    return missing


def preflight(root, lists, hint=""):
    """Stat every file of ``lists`` ([(list path, need_mask)]; unlabeled lists need no masks) under the
    dataset ``root``; return how many files were checked, or raise one DataError naming the root and the first missing files with their list
    lines. Stat calls only, so it is cheap enough for every start-up."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}{hint}")
    missing, total = [], 0
    for path, need_mask in lists:
        samples = read_list(path, image_only=not need_mask)
        total += len(samples) * (2 if need_mask else 1)
        missing += missing_files(root, samples, need_mask)
    if missing:
        shown = "\n".join(f"  {kind} {rel} (listed at {where})" for kind, rel, where in missing[:SHOWN])
        more = f"\n  ... and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise DataError(f"{len(missing)} of the {total} files the lists name are missing under {root}{hint}:\n"
                        f"{shown}{more}")
    return total


class Report:
    """Problems found by :func:`full_check`: counts per kind with the first examples, class pixel counts."""

    def __init__(self, num_classes):
        self.problems = Counter()
        self.examples = {}
        self.pixels = np.zeros(num_classes + 1, dtype=np.int64)  # the last entry counts ignore pixels
        self.masks = 0

    def add(self, kind, message):
        self.problems[kind] += 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(message)

    def format(self, names):
        lines = []
        for kind, count in sorted(self.problems.items()):
            lines.append(f"{kind}: {count}")
            lines += [f"    {m}" for m in self.examples[kind]]
        total = self.pixels.sum()
        if total:
            lines.append(f"class pixel frequencies over {self.masks} masks ({total} pixels):")
            for name, n in zip(list(names) + ["(ignore)"], self.pixels):
                lines.append(f"  {name:>24s} {100 * n / total:7.3f} %")
            absent = [name for name, n in zip(names, self.pixels[:-1]) if n == 0]
            if absent:
                lines.append(f"classes never seen: {absent}")
        return "\n".join(lines)


def full_check(root, samples, num_classes, ignore_index=IGNORE_INDEX, reduce_zero_label=False, report=None,
               need_mask=True):
    """Open every mask of ``samples`` (and its image's header): mode, size against the image, values that
    are neither a class nor ignore; count the pixels of each class. Without ``need_mask`` (unlabeled
    lists) a missing mask is no problem. Returns the :class:`Report`."""
    from PIL import Image

    from .semi import decode_mask

    root = Path(root)
    report = report or Report(num_classes)
    for s in samples:
        image = root / s.image
        if not image.is_file():
            report.add("missing image", f"{s.image} (listed at {s.source})")
            continue
        try:
            with Image.open(image) as im:
                size, image_mode = im.size, im.mode
        except OSError as exc:
            report.add("unreadable image", f"{s.image} (listed at {s.source}): {exc}")
            continue
        if image_mode in ("I", "F"):
            report.add("image of unknown range", f"{s.image} has mode {image_mode} (listed at {s.source}): "
                       "convert it to 8-bit or 16-bit")
        if s.mask is None:
            continue
        mask_path = root / s.mask
        if not mask_path.is_file():
            if need_mask:  # (an unlabeled list's masks are optional)
                report.add("missing mask", f"{s.mask} (listed at {s.source})")
            continue
        try:
            with Image.open(mask_path) as m:
                mode, mask_size = m.mode, m.size
                raw = np.array(m) if mode in MASK_MODES else None
        except OSError as exc:
            report.add("unreadable mask", f"{s.mask} (listed at {s.source}): {exc}")
            continue
        if raw is None:
            report.add("mask not single-channel", f"{s.mask} has mode {mode} (listed at {s.source}): expected a "
                       "palette or grayscale PNG of class indices (an RGB colour mask must be converted)")
            continue
        if mask_size != size:
            report.add("mask size differs from image", f"{s.mask} is {mask_size[0]}x{mask_size[1]}, "
                       f"{s.image} is {size[0]}x{size[1]} (listed at {s.source})")
        mask, bad = decode_mask(raw, num_classes, ignore_index, reduce_zero_label)
        if bad.size:
            report.add("values neither a class nor ignore", f"{s.mask}: {np.unique(bad)[:10].tolist()} "
                       f"(listed at {s.source})")
        valid = mask[mask != IGNORE_INDEX]
        valid = valid[(valid >= 0) & (valid < num_classes)]
        report.pixels[:num_classes] += np.bincount(valid.ravel(), minlength=num_classes)
        report.pixels[num_classes] += int((mask == IGNORE_INDEX).sum())
        report.masks += 1
    return report
