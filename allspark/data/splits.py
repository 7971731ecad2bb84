"""Split-list tooling for custom datasets.

    # labeled / unlabeled lists from all training samples (a list file, or a scan of the root)
    python -m allspark.data.splits make --list train.txt --ratio 1/8 --seed 0 --out splits/mydata/1_8
    # from a folder: images without a mask go to the unlabeled list as image-only lines; --val-count /
    # --val-ratio also draws a val.txt (from the images with masks) before the labeled ones
    python -m allspark.data.splits make --root data/mydata --image-dir images --mask-dir masks --count 100 \
        --val-count 50 --out splits/mydata/100
    # an unlabeled list as every training image not in the labeled list (how COCO's are defined)
    python -m allspark.data.splits complete --labeled splits/coco/1_512/labeled.txt \
        --root data/coco --image-dir train2017 --mask-dir masks --out splits/coco/1_512/unlabeled.txt

Lists hold ``<image> <mask>`` per line, relative to the dataset root.
"""
import argparse
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..files import WriteError
from .lists import DataError, read_list, write_list

__all__ = ["scan_root", "make_split", "draw_split", "complete_split", "parse_ratio"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


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


def _pairs_from_args(args):
    if args.list:
        return [(s.image, s.mask) for s in read_list(args.list)]
    if not (args.root and args.image_dir and args.mask_dir):
        raise DataError("give --list, or --root with --image-dir and --mask-dir")
    return scan_root(args.root, args.image_dir, args.mask_dir, args.mask_ext, require_masks=args.command == "make")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Make split lists for semi-supervised segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="labeled.txt and unlabeled.txt from all training samples")
    complete = sub.add_parser("complete", help="an unlabeled list: every training image not in a labeled list")
    for p in (make, complete):
        p.add_argument("--list", help="a list of all training samples")
        p.add_argument("--root", help="dataset root to scan instead of --list")
        p.add_argument("--image-dir", help="images folder under the root (scanned recursively)")
        p.add_argument("--mask-dir", help="masks folder under the root; a mask is <stem><mask-ext>")
        p.add_argument("--mask-ext", default=".png")
    amount = make.add_mutually_exclusive_group(required=True)
    amount.add_argument("--ratio", type=str, help="share of labeled samples, e.g. 1/8")
    amount.add_argument("--count", type=int, help="number of labeled samples")
    held = make.add_mutually_exclusive_group()
    held.add_argument("--val-ratio", type=str, help="also draw val.txt: this share of the images with masks")
    held.add_argument("--val-count", type=int, help="also draw val.txt: this many images with masks")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True, help="folder for labeled.txt and unlabeled.txt")
    complete.add_argument("--labeled", required=True, help="the labeled list")
    complete.add_argument("--out", required=True, help="the unlabeled list to write")
    args = parser.parse_args(argv)
    try:
        pairs = _pairs_from_args(args)
        if args.command == "make":
            ratio = parse_ratio(args.ratio) if args.ratio else None
            val_ratio = parse_ratio(args.val_ratio) if args.val_ratio else None
            val, labeled, unlabeled = draw_split(pairs, ratio, args.count, args.seed, val_ratio, args.val_count)
            write_list(Path(args.out) / "labeled.txt", labeled)
            write_list(Path(args.out) / "unlabeled.txt", unlabeled)
            if val:
                write_list(Path(args.out) / "val.txt", val)
            images_only = sum(mask is None for _, mask in unlabeled)
            print(f"{args.out}: {len(labeled)} labeled, {len(unlabeled)} unlabeled ({images_only} without a mask)"
                  + (f", {len(val)} val" if val else ""))
        else:
            unlabeled = complete_split([(s.image, s.mask) for s in read_list(args.labeled)], pairs)
            write_list(args.out, unlabeled)
            print(f"{args.out}: {len(unlabeled)} unlabeled")
    except (DataError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
