"""The release's augmentations (UniMatch's ``dataset/transform.py``), with the same distributions.

All of them take PIL images and draw from Python's ``random`` (geometry, probabilities), NumPy's
global generator (blur sigma) and torch's (ColorJitter), as the release does; the dataset seeds all three
from each sample's own seed (:func:`allspark.rng.seed_all`).
"""
import random

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

from ..config import IGNORE_INDEX

__all__ = ["resize", "crop", "hflip", "blur", "photometric", "cutmix_box", "normalize", "MEAN", "STD"]

MEAN = (0.485, 0.456, 0.406)  # ImageNet
STD = (0.229, 0.224, 0.225)


def resize(img, mask, ratio_range=(0.5, 2.0)):
    """Rescale so that the long side is randint(lo * L, hi * L) for the current long side L, keeping
    the aspect ratio: bilinear for the image, nearest for the mask."""
    w, h = img.size
    long_side = random.randint(int(max(h, w) * ratio_range[0]), int(max(h, w) * ratio_range[1]))
    if h > w:
        oh, ow = long_side, int(1.0 * w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(1.0 * h * long_side / w + 0.5)
    return img.resize((ow, oh), Image.BILINEAR), mask.resize((ow, oh), Image.NEAREST)


def crop(img, mask, size, ignore_value=IGNORE_INDEX):
    """Pad right / bottom up to ``size`` (image with 0, mask with ``ignore_value``), then take a
    random ``size`` x ``size`` crop of both."""
    w, h = img.size
    padw, padh = max(size - w, 0), max(size - h, 0)
    img = ImageOps.expand(img, border=(0, 0, padw, padh), fill=0)
    mask = ImageOps.expand(mask, border=(0, 0, padw, padh), fill=ignore_value)
    w, h = img.size
    x, y = random.randint(0, w - size), random.randint(0, h - size)
    return img.crop((x, y, x + size, y + size)), mask.crop((x, y, x + size, y + size))


def hflip(img, mask, p=0.5):
    """Flip image and mask left-right together with probability p."""
    if random.random() < p:
        return img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    return img, mask


def blur(img, p=0.5):
    """Gaussian blur with radius sigma ~ U(0.1, 2.0), with probability p."""
    if random.random() < p:
        img = img.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))
    return img


def photometric(img):
    """The release's labeled-image colour augmentations: ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8,
    RandomGrayscale p 0.2, Gaussian blur p 0.5."""
    if random.random() < 0.8:
        img = transforms.ColorJitter(0.5, 0.5, 0.5, 0.25)(img)
    img = transforms.RandomGrayscale(p=0.2)(img)
    return blur(img, p=0.5)


def cutmix_box(size, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)):
    """UniMatch's CutMix box: a (size, size) float32 map, 1 inside one axis-aligned rectangle, 0 outside;
    all zero with probability 1 - p. The rectangle's area is U(area) x size^2 and its aspect h / w is
    U(ratio), drawn again (with a new position) until it fits inside the square."""
    box = torch.zeros(size, size)
    if random.random() > p:
        return box
    target = np.random.uniform(*area) * size * size
    while True:
        r = np.random.uniform(*ratio)
        w, h = int(np.sqrt(target / r)), int(np.sqrt(target * r))
        x, y = np.random.randint(0, size), np.random.randint(0, size)
        if x + w <= size and y + h <= size:
            break
    box[y:y + h, x:x + w] = 1
    return box


_TO_TENSOR = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def normalize(img, mask=None):
    """PIL image -> (3, H, W) float32 normalised with ImageNet mean / std; mask -> (H, W) int64."""
    img = _TO_TENSOR(img)
    if mask is None:
        return img
    return img, torch.from_numpy(np.array(mask)).long()
