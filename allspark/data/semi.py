"""The semi-supervised segmentation dataset: labeled, unlabeled and validation samples from split lists.
Masks hold class indices (palette or grayscale PNGs); 255 is ignore.
"""
import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..config import IGNORE_INDEX
from ..rng import seed_all
from .classes import CLASSES, REDUCE_ZERO_LABEL
from .lists import DataError, read_list
from .transforms import crop, cutmix_box, hflip, normalize, photometric, resize

__all__ = ["SemiDataset", "MODES", "PAD_UNLABELED", "decode_mask", "read_rgb"]

MODES = ("train_l", "train_l_weak", "train_u", "train_u_strong", "val")
PAD_UNLABELED = 254  # what unlabeled crops are padded with inside the dataset: no class index (8-bit masks, 255 ignore)


# 16-bit grayscale images (medical, remote sensing): read as 8-bit by v / 257, rounded (65535 -> 255), since
# the augmentations and the normalisation work on 8-bit images; modes with no fixed range are refused.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def read_rgb(path, source=None):
    """The image at ``path`` as an 8-bit RGB PIL image. 16-bit grayscale (``I;16*``) is scaled to 8 bits
    (v / 257, rounded); 32-bit integer or float images (``I``, ``F``), whose range is unknown, raise
    DataError naming the file and its mode (``source``: where the file was listed)."""
    where = f" (listed at {source})" if source else ""
    try:
        with Image.open(path) as im:
            if im.mode in WIDE_MODES:
                wide = np.asarray(im, dtype=np.float64)
                return Image.fromarray(np.round(wide / 257.0).astype(np.uint8), mode="L").convert("RGB")
            if im.mode in ("I", "F"):
                raise DataError(f"image {path}{where} has mode {im.mode} (32-bit {'integer' if im.mode == 'I' else 'float'} "
                                "pixels of unknown range): convert it to 8-bit (or 16-bit grayscale) first")
            return im.convert("RGB")
    except OSError as exc:
        raise DataError(f"image {path}{where} cannot be read: {exc}") from None


def decode_mask(raw, num_classes, ignore_index=IGNORE_INDEX, reduce_zero_label=False):
    """Stored mask values (H, W) -> (class indices (H, W) int64 with 255 for ignore, the stored values that
    are neither a class nor ignore (1-D)). ``ignore_index`` pixels become 255; with ``reduce_zero_label``
    0 becomes 255 too and class k is stored as k + 1."""
    raw = raw.astype(np.int64)
    ignore = raw == ignore_index
    if reduce_zero_label:
        ignore |= raw == 0
    mask = raw - 1 if reduce_zero_label else raw.copy()
    bad = ~ignore & ((mask < 0) | (mask >= num_classes))
    mask[ignore] = IGNORE_INDEX
    return mask, raw[bad]


class SemiDataset(Dataset):
    """Samples of one split list in one mode.

    - ``train_l``: (image (3, size, size) float32, mask (size, size) int64) after resize, crop
      (mask padded with 255), flip and the photometric transforms. With ``nsample`` the list is
      tiled and cut to that length (the trainer passes the unlabeled list's length); with
      ``cut_longer`` False (UniMatch V2) a list longer than ``nsample`` is kept whole.
    - ``train_l_weak``: as ``train_l`` without the photometric transforms (UniMatch V2's labeled view).
    - ``train_u``: {``img_w``: the image (3, size, size) after the geometric transforms only, ``padded``:
      (size, size) bool, where the crop was padded}; the unlabeled mask file is not read (but see
      ``unlabeled_labels`` below).
    - ``train_u_strong`` (UniMatch V2): {``img_w``: the weak view, ``img_s1`` / ``img_s2``: two strong views,
      ``padded``, ``box1`` / ``box2``: their CutMix boxes (size, size) float32}; each strong view is the weak
      view with its own photometric transforms (:func:`photometric`), then its own box (:func:`cutmix_box`).
    - ``val``: (full image, full mask, image path as id), no augmentation.

    With ``unlabeled_labels`` and every mask of an unlabeled list present (``with_labels``), the unlabeled
    samples also hold ``truth``: the crop's true labels (255 where padded), only to measure the pseudo
    labels; they never enter a loss.

    ``num_classes`` defaults to the class count of a known ``name`` (pascal, cityscapes, coco, ade20k, toy).
    Masks are read as stored, their ``ignore_index`` becoming 255; with ``reduce_zero_label`` (default:
    ADE20K's, whose masks hold 0 = other) 0 becomes 255 and class k becomes k - 1. Mask values that are
    neither a class nor ignore raise DataError. Unlabeled lists may name images only. An index may come as
    (index, seed): the augmentations then draw from that seed, whatever worker loads the sample.
    """

    def __init__(self, name, root, mode, size=None, id_path=None, nsample=None, num_classes=None, cut_longer=True,
                 unlabeled_labels=False, ignore_index=IGNORE_INDEX, reduce_zero_label=None):
        if mode not in MODES:
            raise DataError(f"unknown dataset mode {mode!r}; valid modes: {list(MODES)}")
        if mode != "val" and not size:
            raise DataError(f"mode {mode!r} needs a crop size")
        if num_classes is None:
            if name not in CLASSES:
                raise DataError(f"dataset {name!r} is not one of {sorted(CLASSES)}: give num_classes")
            num_classes = len(CLASSES[name])
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root not found: {self.root} (dataset {name!r})")
        if id_path is None:
            raise DataError(f"mode {mode!r} needs a split list (id_path)")
        self.name, self.mode, self.size, self.num_classes = name, mode, size, num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = name in REDUCE_ZERO_LABEL if reduce_zero_label is None else reduce_zero_label
        self.samples = read_list(id_path, image_only=mode.startswith("train_u"))
        if mode.startswith("train_l") and nsample is not None and (cut_longer or nsample > len(self.samples)):
            self.samples = (self.samples * math.ceil(nsample / len(self.samples)))[:nsample]
        # unlabeled_labels: read the masks of an unlabeled list if every one is there (stat calls only)
        self.with_labels = bool(mode.startswith("train_u") and unlabeled_labels
                                and all(s.mask is not None and (self.root / s.mask).is_file() for s in self.samples))

    def __len__(self):
        return len(self.samples)

    def _file(self, rel, sample, kind):
        path = self.root / rel
        if not path.is_file():
            raise DataError(f"{kind} file not found: {path} (listed at {sample.source})")
        return path

    def _load_mask(self, sample, image_size):
        path = self._file(sample.mask, sample, "mask")
        with Image.open(path) as m:
            if m.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"mask {path} (listed at {sample.source}) has mode {m.mode}: expected a "
                                "single-channel PNG of class indices (palette or grayscale)")
            if m.size != image_size:
                raise DataError(f"sample {sample.source}: image is {image_size[0]}x{image_size[1]} but mask {path} "
                                f"is {m.size[0]}x{m.size[1]}")
            raw = np.array(m)
        if self.name in REDUCE_ZERO_LABEL and self.reduce_zero_label and (raw == IGNORE_INDEX).any():
            raise DataError(f"mask {path} (listed at {sample.source}) holds {IGNORE_INDEX}: it looks already shifted "
                            f"(reduce-zero-label applied). {self.name} masks are read as the official annotations "
                            f"store them (0 = other, 1..{self.num_classes} the classes) and shifted here; use those")
        mask, bad = decode_mask(raw, self.num_classes, self.ignore_index, self.reduce_zero_label)
        if bad.size:
            first = 1 if self.reduce_zero_label else 0
            raise DataError(f"mask {path} (listed at {sample.source}) has values {np.unique(bad)[:10].tolist()} that "
                            f"are neither a class ({first}..{first + self.num_classes - 1}) nor ignore ({self.ignore_index})")
        return Image.fromarray(mask.astype(np.uint8))

    def __getitem__(self, index):
        if isinstance(index, tuple):  # (index, seed) from a seeding sampler: draw this sample's own randomness
            index, seed = index
            seed_all(seed)
        sample = self.samples[index]
        unlabeled = self.mode.startswith("train_u")
        img = read_rgb(self._file(sample.image, sample, "image"), sample.source)
        if unlabeled and not self.with_labels:
            mask = Image.fromarray(np.zeros((img.size[1], img.size[0]), dtype=np.uint8))
        else:
            mask = self._load_mask(sample, img.size)
        if self.mode == "val":
            img, mask = normalize(img, mask)
            return img, mask, sample.image

        img, mask = resize(img, mask, (0.5, 2.0))
        img, mask = crop(img, mask, self.size, PAD_UNLABELED if unlabeled else IGNORE_INDEX)
        img, mask = hflip(img, mask, p=0.5)
        if self.mode == "train_l":
            img = photometric(img)
        if not unlabeled:
            return normalize(img, mask)
        if self.mode == "train_u":
            img_w, mask = normalize(img, mask)
            return self._unlabeled(mask, img_w=img_w)
        # UniMatch V2: the weak view and two strong views, each strong view with its own colour draws and box
        img_s1 = photometric(img)
        box1 = cutmix_box(self.size)
        img_s2 = photometric(img)
        box2 = cutmix_box(self.size)
        img_w, mask = normalize(img, mask)
        return self._unlabeled(mask, img_w=img_w, img_s1=normalize(img_s1), img_s2=normalize(img_s2), box1=box1,
                               box2=box2)

    def _unlabeled(self, mask, **views):
        """An unlabeled sample: ``views`` with ``padded`` (where the crop was padded) and, when the unlabeled
        masks are read, ``truth`` (the crop's true labels, 255 where padded)."""
        padded = mask == PAD_UNLABELED
        sample = {**views, "padded": padded}
        if self.with_labels:
            sample["truth"] = mask.masked_fill(padded, IGNORE_INDEX)
        return sample
