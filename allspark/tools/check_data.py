"""Check a dataset against its split lists before (or instead of) training on it.

    python -m allspark.tools.check_data --config configs/pascal_allspark.yaml \
        --lists splits/pascal/1464/labeled.txt --unlabeled splits/pascal/1464/unlabeled.txt [--full]

Without ``--full``: every listed file exists (stat calls only; what train.py and eval.py run at start-up).
With ``--full``: every mask is also opened and checked (mode, size against its image, values that are
neither a class nor ignore), with counts per problem and the pixel frequency of each class.
The config's val list is always checked. Exit status: 0 clean, 1 problems found, 2 unusable arguments.
"""
import argparse
import sys
from pathlib import Path

from ..config import ConfigError, load_data_config, resolve_path
from ..data import REDUCE_ZERO_LABEL, DataError, class_names, read_list
from ..data.check import Report, full_check, missing_files

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check a dataset's files against its split lists.")
    parser.add_argument("--config", required=True, help="the training config (data_root, val_id_path, nclass)")
    parser.add_argument("--lists", nargs="*", default=[], help="labeled lists (images and masks must exist)")
    parser.add_argument("--unlabeled", nargs="*", default=[], help="unlabeled lists (only the images must exist)")
    parser.add_argument("--full", action="store_true", help="also open every mask and count the classes")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides (as train.py's)")
    args = parser.parse_args(argv)
    try:
        cfg = load_data_config(args.config, args.opts)
        root = resolve_path(cfg["data_root"])
        lists = [(resolve_path(cfg["val_id_path"]), True)] + [(Path(p), True) for p in args.lists] \
            + [(Path(p), False) for p in args.unlabeled]
        names = class_names(cfg)
        reduce_zero = (cfg["reduce_zero_label"] if cfg["reduce_zero_label"] is not None
                       else cfg["dataset"] in REDUCE_ZERO_LABEL)
        if not root.is_dir():
            raise DataError(f"dataset root not found: {root} (data_root in {args.config})")
        report = Report(cfg["nclass"])
        for path, need_mask in lists:
            samples = read_list(path, image_only=not need_mask)
            missing = missing_files(root, samples, need_mask)
            print(f"{path}: {len(samples)} samples, {len(missing)} missing file(s)")
            if args.full:
                full_check(root, samples, cfg["nclass"], cfg["ignore_index"], reduce_zero, report, need_mask)
            else:
                for kind, rel, where in missing:
                    report.add(f"missing {kind}", f"{rel} (listed at {where})")
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format(names) if (report.problems or args.full) else "every listed file is there")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
