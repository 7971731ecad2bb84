"""Turning the official downloads into the mask layouts the split lists expect (see docs/datasets.md);
the command is ``python -m allspark.tools.convert``.

    # Pascal: SBD's class masks (benchmark_RELEASE/dataset/cls/*.mat) as PNGs beside VOC's own masks
    python -m allspark.tools.convert sbd --sbd-root benchmark_RELEASE/dataset --out data/pascal/SegmentationClass
    # Cityscapes: *_gtFine_labelTrainIds.png (19 train ids, 255 ignore) from *_gtFine_labelIds.png
    python -m allspark.tools.convert cityscapes --root data/cityscapes
    # COCO: masks/<image id>.png with 0 background and 1..80 from the instance annotations
    python -m allspark.tools.convert coco --annotations data/coco/annotations/instances_train2017.json \
        --out data/coco/masks

``sbd`` needs scipy (to read MATLAB files); ``coco`` reads polygons and uncompressed RLE itself and uses
pycocotools, when installed, for compressed RLE. Neither is an install-time dependency.
Every file is written through a temporary file and a rename.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..config import IGNORE_INDEX
from ..files import atomic_path
from .classes import palette_of
from .lists import DataError

__all__ = ["CITYSCAPES_TRAIN_IDS", "label_ids_to_train_ids", "sbd_mask", "coco_mask", "save_png", "convert_sbd", "convert_cityscapes", "convert_coco"]

# Cityscapes' labelIds -> trainIds (the 19 evaluated classes; every other id is ignored), as
# cityscapesscripts' labels table defines them.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def save_png(array, path, palette=None):
    """(H, W) uint8 class indices -> PNG (palette PNG with ``palette``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array.astype(np.uint8), mode="L")
    if palette is not None:
        im = im.convert("P")  # keeps the indices
        im.putpalette(palette)
    with atomic_path(path, "mask") as tmp:
        im.save(tmp, format="PNG")


def label_ids_to_train_ids(label_ids):
    """(H, W) Cityscapes labelIds -> (H, W) uint8 trainIds, 255 where the id is not evaluated."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return table[np.asarray(label_ids, dtype=np.uint8)]


def sbd_mask(mat_path):
    """SBD's ``cls/<name>.mat`` -> (H, W) uint8 class indices (0 background, 1..20; SBD has no ignore band)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading SBD's .mat files needs scipy: pip install scipy") from None
    try:
        gt = loadmat(str(mat_path), squeeze_me=True, struct_as_record=False)["GTcls"]
    except Exception as exc:  # scipy's MatReadError and friends, KeyError, AttributeError
        raise DataError(f"{mat_path}: not an SBD class mask (expected a MATLAB file with GTcls.Segmentation): "
                        f"{exc}") from None
    try:
        return np.asarray(gt.Segmentation, dtype=np.uint8)
    except AttributeError:
        raise DataError(f"{mat_path}: GTcls has no Segmentation field (not an SBD class mask)") from None


def _rle_to_mask(rle, h, w):
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):  # compressed RLE: pycocotools decodes it
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            raise DataError("a compressed RLE segmentation needs pycocotools: pip install pycocotools") from None
        return mask_utils.decode({"counts": counts, "size": rle["size"]}).astype(bool)
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:  # alternating runs of 0s and 1s, column by column
        flat[pos:pos + run] = value
        pos += run
        value = not value
    return flat.reshape(w, h).T


def _instance_mask(segmentation, h, w):
    if isinstance(segmentation, list):  # polygons [x1, y1, x2, y2, ...]
        im = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(im)
        for poly in segmentation:
            if len(poly) >= 6:
                draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
        return np.array(im, dtype=bool)
    return _rle_to_mask(segmentation, h, w)


def coco_mask(annotations, h, w, class_of):
    """One image's instance annotations -> (H, W) uint8: 0 background, ``class_of[category_id]`` (1..80)
    on each instance, larger instances painted first so that smaller ones stay visible; crowd regions
    (``iscrowd``) are 255 (ignore)."""
    out = np.zeros((h, w), dtype=np.uint8)
    crowd = np.zeros((h, w), dtype=bool)
    for ann in sorted(annotations, key=lambda a: -a.get("area", 0)):
        region = _instance_mask(ann["segmentation"], h, w)
        if ann.get("iscrowd"):
            crowd |= region
        else:
            out[region] = class_of[ann["category_id"]]
    out[crowd & (out == 0)] = IGNORE_INDEX
    return out


def convert_sbd(sbd_root, out, overwrite=False):
    files = sorted((Path(sbd_root) / "cls").glob("*.mat"))
    if not files:
        raise DataError(f"no SBD class masks under {Path(sbd_root) / 'cls'} (expected benchmark_RELEASE/dataset/cls/*.mat)")
    written = 0
    palette = palette_of("pascal")
    for mat in files:
        target = Path(out) / f"{mat.stem}.png"
        if target.exists() and not overwrite:
            continue  # VOC's own mask (with its 255 border band) takes precedence
        save_png(sbd_mask(mat), target, palette)
        written += 1
    return written, len(files)


def convert_cityscapes(root, overwrite=False):
    files = sorted((Path(root) / "gtFine").rglob("*_gtFine_labelIds.png"))
    if not files:
        raise DataError(f"no *_gtFine_labelIds.png under {Path(root) / 'gtFine'}")
    written = 0
    for src in files:
        target = src.with_name(src.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
        if target.exists() and not overwrite:
            continue
        with Image.open(src) as im:
            save_png(label_ids_to_train_ids(np.array(im)), target)
        written += 1
    return written, len(files)


def convert_coco(annotations_path, out, overwrite=False):
    try:
        data = json.loads(Path(annotations_path).read_text())
        images, categories = data["images"], data["categories"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{annotations_path}: not a COCO instance annotation file: {exc}") from None
    class_of = {c["id"]: k + 1 for k, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    per_image = {}
    for ann in data.get("annotations", []):
        per_image.setdefault(ann["image_id"], []).append(ann)
    written = 0
    for info in images:
        target = Path(out) / f"{Path(info['file_name']).stem}.png"
        if target.exists() and not overwrite:
            continue
        save_png(coco_mask(per_image.get(info["id"], []), info["height"], info["width"], class_of), target)
        written += 1
    return written, len(images)
