"""Write the built-in toy dataset (Pascal VOC layout, 5 classes): ``python -m allspark.tools.toy --root data/toy``."""
import argparse
import sys
import time
from pathlib import Path

from ..data.toy import DEFAULTS, make_toy_dataset

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the toy segmentation dataset (Pascal VOC layout).")
    parser.add_argument("--root", required=True, help="output folder, e.g. data/toy")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    start = time.time()
    lists = make_toy_dataset(args.root, **{k: getattr(args, k) for k in DEFAULTS})
    counts = {k: len(Path(p).read_text().splitlines()) for k, p in lists.items()}
    print(f"toy dataset written to {args.root} in {time.time() - start:.1f} s: {counts['labeled']} labeled, "
          f"{counts['unlabeled']} unlabeled, {counts['val']} val images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
