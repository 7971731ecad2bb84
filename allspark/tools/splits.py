"""Make split lists for semi-supervised segmentation.

    # labeled / unlabeled lists from all training samples (a list file, or a scan of the root)
    python -m allspark.tools.splits make --list train.txt --ratio 1/8 --seed 0 --out splits/mydata/1_8
    # from a folder: images without a mask go to the unlabeled list as image-only lines; --val-count /
    # --val-ratio also draws a val.txt (from the images with masks) before the labeled ones
    python -m allspark.tools.splits make --root data/mydata --image-dir images --mask-dir masks --count 100 \
        --val-count 50 --out splits/mydata/100
    # an unlabeled list as every training image not in the labeled list (how COCO's are defined)
    python -m allspark.tools.splits complete --labeled splits/coco/1_512/labeled.txt \
        --root data/coco --image-dir train2017 --mask-dir masks --out splits/coco/1_512/unlabeled.txt
"""
import argparse
import sys
from pathlib import Path

from ..data import DataError, read_list, write_list
from ..data.splits import complete_split, draw_split, parse_ratio, scan_root
from ..files import WriteError

__all__ = ["main"]


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
