"""Make the masks the split lists expect from the official downloads (see docs/datasets.md).

    # Pascal: SBD's class masks (benchmark_RELEASE/dataset/cls/*.mat) as PNGs beside VOC's own masks
    python -m allspark.tools.convert sbd --sbd-root benchmark_RELEASE/dataset --out data/pascal/SegmentationClass
    # Cityscapes: *_gtFine_labelTrainIds.png (19 train ids, 255 ignore) from *_gtFine_labelIds.png
    python -m allspark.tools.convert cityscapes --root data/cityscapes
    # COCO: masks/<image id>.png with 0 background and 1..80 from the instance annotations
    python -m allspark.tools.convert coco --annotations data/coco/annotations/instances_train2017.json \
        --out data/coco/masks
"""
import argparse
import sys

from ..data import DataError
from ..data.convert import convert_cityscapes, convert_coco, convert_sbd
from ..files import WriteError

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Make the masks the split lists expect from the official downloads.")
    sub = parser.add_subparsers(dest="command", required=True)
    sbd = sub.add_parser("sbd", help="SBD's cls/*.mat -> palette PNGs (VOC's own masks are kept)")
    sbd.add_argument("--sbd-root", required=True, help="benchmark_RELEASE/dataset (holds cls/)")
    sbd.add_argument("--out", required=True, help="e.g. data/pascal/SegmentationClass")
    city = sub.add_parser("cityscapes", help="*_gtFine_labelTrainIds.png from *_gtFine_labelIds.png")
    city.add_argument("--root", required=True, help="the Cityscapes root (holds gtFine/)")
    coco = sub.add_parser("coco", help="81-class masks from instances_<split>.json")
    coco.add_argument("--annotations", required=True, help="e.g. data/coco/annotations/instances_train2017.json")
    coco.add_argument("--out", required=True, help="e.g. data/coco/masks")
    for p in (sbd, city, coco):
        p.add_argument("--overwrite", action="store_true", help="replace masks that are already there")
    args = parser.parse_args(argv)
    try:
        if args.command == "sbd":
            written, total = convert_sbd(args.sbd_root, args.out, args.overwrite)
        elif args.command == "cityscapes":
            written, total = convert_cityscapes(args.root, args.overwrite)
        else:
            written, total = convert_coco(args.annotations, args.out, args.overwrite)
    except (DataError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.command}: wrote {written} mask(s), {total - written} already there (of {total})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
