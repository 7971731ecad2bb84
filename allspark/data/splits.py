"""Split lists for custom datasets: labeled / unlabeled (and val) lists drawn from the training samples,
and an unlabeled list completed from a labeled one. The command is ``python -m allspark.tools.splits``.

Lists hold ``<image> <mask>`` per line, relative to the dataset root.
"""
from fractions import Fraction
from pathlib import Path

import numpy as np

from .lists import IMAGE_EXTS, DataError

__all__ = ["scan_root", "make_split", "draw_split", "complete_split", "parse_ratio"]

def scan_root(root, image_dir, mask_dir, mask_ext=".png", require_masks=False):
    """Every image under ``root/image_dir`` (recursively, sorted) paired with
    ``mask_dir/<same relative folder>/<stem><mask_ext>``; paths relative to ``root``. With
    ``require_masks`` an image whose mask file is not there is paired with None."""
    root = Path(root)
    base = root / image_dir
    if not base.is_dir():
        raise DataError(f"image folder not found: {base}")
    pairs = []
    for path in sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTS):
        rel = path.relative_to(base)
        mask = (Path(mask_dir) / rel.with_suffix(mask_ext)).as_posix()
        if require_masks and not (root / mask).is_file():
            mask = None
        pairs.append(((Path(image_dir) / rel).as_posix(), mask))
    if not pairs:
        raise DataError(f"no image ({', '.join(IMAGE_EXTS)}) under {base}")
    return pairs


def parse_ratio(text):
    """'1/8' or '0.125' -> a fraction in (0, 1)."""
    try:
        ratio = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"ratio must look like 1/8 or 0.125, got {text!r}") from None
    if not 0 < ratio < 1:
        raise DataError(f"ratio must be between 0 and 1, got {text!r}")
    return ratio


def make_split(pairs, ratio=None, count=None, seed=0):
    """Draw the labeled samples (``count`` of them, or round(ratio * len) at least 1) with a seeded
    permutation; return (labeled, unlabeled), both in the input order."""
    n = len(pairs)
    if (ratio is None) == (count is None):
        raise DataError("give exactly one of ratio and count")
    if count is None:
        count = max(1, round(Fraction(ratio) * n))
    if not 0 < count < n:
        raise DataError(f"labeled count must be between 1 and {n - 1} for {n} samples, got {count}")
    chosen = set(np.random.default_rng(seed).permutation(n)[:count].tolist())
    labeled = [p for i, p in enumerate(pairs) if i in chosen]
    unlabeled = [p for i, p in enumerate(pairs) if i not in chosen]
    return labeled, unlabeled


def draw_split(pairs, ratio=None, count=None, seed=0, val_ratio=None, val_count=None):
    """(val, labeled, unlabeled) from a pool where some images may lack a mask (mask None): val (when
    asked) and labeled are drawn, seeded, from the images with masks; the rest is unlabeled."""
    masked = [p for p in pairs if p[1] is not None]
    val = []
    if val_ratio is not None or val_count is not None:
        val, masked = make_split(masked, val_ratio, val_count, seed + 1)
    labeled, rest = make_split(masked, ratio, count, seed) if masked else ([], [])
    if not labeled:
        raise DataError("no image has a mask: nothing to label (masks are <mask-dir>/<image stem><mask-ext>)")
    rest = set(rest)
    unlabeled = [p for p in pairs if p in rest or p[1] is None]
    return val, labeled, unlabeled


def complete_split(labeled, pairs):
    """Every pair of ``pairs`` whose image is not in ``labeled``, in order; a labeled image that is not
    among ``pairs`` raises DataError (usually a wrong root or image folder)."""
    labeled_images = {image for image, _ in labeled}
    known = {image for image, _ in pairs}
    stray = sorted(labeled_images - known)
    if stray:
        raise DataError(f"{len(stray)} labeled image(s) are not among the {len(pairs)} training images, "
                        f"e.g. {stray[:3]}")
    return [p for p in pairs if p[0] not in labeled_images]
