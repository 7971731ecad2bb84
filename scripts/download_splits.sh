#!/usr/bin/env bash
# Fetch the standard split lists (published with UniMatch, used unchanged by the AllSpark release) into
# splits/, and write COCO's unlabeled lists (every train2017 image not in labeled.txt) when the COCO
# images are present.
#
#   bash scripts/download_splits.sh                      # fetch into splits/; complete COCO if data/coco exists
#   bash scripts/download_splits.sh --coco-root /data/coco
#   bash scripts/download_splits.sh --no-download --coco-root /data/coco   # only complete COCO's lists
#   bash scripts/download_splits.sh --dry-run            # print what would be fetched, fetch nothing
set -euo pipefail

COMMIT=0324f3dd4a22128105a5eb135d2586c0bb3cc647
BASE_URL="https://raw.githubusercontent.com/LiheYoung/UniMatch/${COMMIT}/splits"
DEST=splits
COCO_ROOT=data/coco
DOWNLOAD=1
DRY_RUN=0
PYTHON=${PYTHON:-python}

while [ $# -gt 0 ]; do
  case "$1" in
    --dest) DEST=$2; shift 2 ;;
    --coco-root) COCO_ROOT=$2; shift 2 ;;
    --no-download) DOWNLOAD=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

PASCAL_SPLITS="92 183 366 732 1464 1_16 1_8 1_4 1_2 u2pl_1_16 u2pl_1_8 u2pl_1_4"
CITYSCAPES_SPLITS="1_16 1_8 1_4 1_2 1_30"
COCO_SPLITS="1_512 1_256 1_128 1_64 1_32"

files() {
  echo pascal/val.txt
  echo pascal/train_aug.txt
  for s in $PASCAL_SPLITS; do echo "pascal/$s/labeled.txt"; echo "pascal/$s/unlabeled.txt"; done
  echo cityscapes/val.txt
  for s in $CITYSCAPES_SPLITS; do echo "cityscapes/$s/labeled.txt"; echo "cityscapes/$s/unlabeled.txt"; done
  echo coco/val.txt
  for s in $COCO_SPLITS; do echo "coco/$s/labeled.txt"; done
}

fetch() {  # url dest: download to a temporary file, then rename
  local tmp="$2.part"
  mkdir -p "$(dirname "$2")"
  if command -v curl >/dev/null; then
    curl -fsSL --retry 3 -o "$tmp" "$1"
  else
    wget -q -O "$tmp" "$1"
  fi && mv "$tmp" "$2"
}

if [ "$DOWNLOAD" = 1 ]; then
  failed=()
  for f in $(files); do
    if [ "$DRY_RUN" = 1 ]; then
      echo "$DEST/$f <- $BASE_URL/$f"
    elif ! fetch "$BASE_URL/$f" "$DEST/$f"; then
      rm -f "$DEST/$f.part"
      failed+=("$f")
    fi
  done
  [ "$DRY_RUN" = 1 ] && exit 0
  if [ ${#failed[@]} -gt 0 ]; then
    echo "could not fetch ${#failed[@]} list(s): ${failed[*]}" >&2
    exit 1
  fi
  echo "split lists written under $DEST/"
fi

if [ -d "$COCO_ROOT/train2017" ]; then
  for s in $COCO_SPLITS; do
    "$PYTHON" -m allspark.data.splits complete --labeled "$DEST/coco/$s/labeled.txt" \
      --root "$COCO_ROOT" --image-dir train2017 --mask-dir masks --out "$DEST/coco/$s/unlabeled.txt"
  done
else
  echo "COCO images not found at $COCO_ROOT/train2017: COCO's unlabeled lists not written" \
       "(run again with --no-download --coco-root DIR once they are there)"
fi
