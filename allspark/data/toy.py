"""A small synthetic segmentation dataset in the Pascal VOC layout, made on the spot.

    python -m allspark.tools.toy --root data/toy

writes ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs of class indices) and the lists
``labeled.txt``, ``unlabeled.txt`` and ``val.txt`` under the root. Every object class is one shape
drawn with one texture, in colours from a hue range that overlaps its neighbours' (colour hints at the
class, shape and texture settle it) over a greyish textured background;
objects may occlude one another; a band of 255 (ignore) runs along every object border, as in VOC.
The output depends only on the seed and the counts: creating it twice gives identical bytes.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from .classes import CLASSES, palette_of
from .lists import write_list

__all__ = ["make_toy_dataset", "render_sample", "DEFAULTS"]

DEFAULTS = dict(seed=0, num_train=300, num_val=100, num_labeled=37, min_size=96, max_size=160)
BORDER = 1  # pixels of 255 on each side of a boundary (a band 2 * BORDER + 1 wide at most)
JPEG_QUALITY = 90


def _rotated(xx, yy, cx, cy, angle):
    c, s = np.cos(angle), np.sin(angle)
    u, v = xx - cx, yy - cy
    return c * u + s * v, -s * u + c * v


def _shape(kind, xx, yy, cx, cy, r, angle):
    """Boolean mask of one shape of radius ``r`` centred at (cx, cy)."""
    u, v = _rotated(xx, yy, cx, cy, angle)
    if kind == "disk":
        return u ** 2 + v ** 2 <= r ** 2
    if kind == "square":
        side = r * 0.8
        return (np.abs(u) <= side) & (np.abs(v) <= side)
    if kind == "triangle":  # equilateral, circumradius r
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + k * 2 * np.pi / 3
            inside &= (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a) <= r / 2
        return inside
    if kind == "cross":
        arm = r / 3
        return ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(v) <= r) & (np.abs(u) <= arm))
    raise ValueError(kind)


def _texture(kind, xx, yy, rng):
    """Boolean pattern that selects the second colour of an object."""
    period = rng.uniform(8, 13)
    if kind == "stripes":
        a = rng.uniform(0, np.pi)
        return np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period) > 0
    if kind == "checker":
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
    if kind == "dots":
        return ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) <= (period / 3.5) ** 2
    if kind == "plain":
        return np.zeros_like(xx, dtype=bool)
    raise ValueError(kind)


# class index -> (shape, texture); index 0 is the background
OBJECTS = {1: ("disk", "stripes"), 2: ("square", "checker"), 3: ("triangle", "dots"), 4: ("cross", "plain")}
assert len(OBJECTS) + 1 == len(CLASSES["toy"])


def _colour(rng, hue=None):
    """An RGB colour; with ``hue`` (degrees) a saturated one near that hue, otherwise any colour."""
    if hue is None:
        return rng.integers(0, 256, size=3).astype(np.float32)
    h = (hue % 360) / 60.0
    x = 1 - abs(h % 2 - 1)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
    value, grey = rng.uniform(0.55, 1.0), rng.uniform(0.0, 0.35)
    return (255 * value * (grey + (1 - grey) * np.array(rgb))).astype(np.float32)


# Each object class draws its colour from a hue range of 150 degrees; neighbouring ranges overlap by 60
# degrees, so colour hints at the class but only shape and texture settle it.
HUE_CENTRE = {1: 0, 2: 90, 3: 180, 4: 270}
HUE_SPREAD = 75


def _border_band(label):
    """Pixels within BORDER of a pixel of another label."""
    band = np.zeros(label.shape, dtype=bool)
    padded = np.pad(label, BORDER, mode="edge")
    h, w = label.shape
    for dy in range(-BORDER, BORDER + 1):
        for dx in range(-BORDER, BORDER + 1):
            band |= padded[BORDER + dy:BORDER + dy + h, BORDER + dx:BORDER + dx + w] != label
    return band


def render_sample(rng, min_size, max_size):
    """One image (H, W, 3) uint8 and its mask (H, W) uint8 of class indices with the 255 border band."""
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # background: a smooth blend of two greyish colours, plus noise and a faint random texture
    c0, c1 = (0.5 * _colour(rng) + 0.5 * rng.uniform(60, 200) for _ in range(2))
    a = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(a) + yy * np.sin(a)) / max(h, w)
    t = ((t - t.min()) / max(t.max() - t.min(), 1e-6))[..., None]
    image = (1 - t) * c0 + t * c1
    distractor = _texture(["stripes", "checker", "dots"][rng.integers(3)], xx, yy, rng)
    image += (distractor[..., None] * rng.uniform(-15, 15))
    label = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, len(OBJECTS) + 1))
        shape_kind, texture_kind = OBJECTS[cls]
        r = rng.uniform(0.22, 0.36) * min(h, w)
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        inside = _shape(shape_kind, xx, yy, cx, cy, r, rng.uniform(0, 2 * np.pi))
        pattern = _texture(texture_kind, xx, yy, rng)
        fg0 = _colour(rng, HUE_CENTRE[cls] + rng.uniform(-HUE_SPREAD, HUE_SPREAD))
        # the second colour differs clearly in brightness, so that the texture is always visible
        shift = rng.uniform(70, 110) * (1 if fg0.mean() < 128 else -1)
        fg1 = np.clip(fg0 + shift + rng.uniform(-30, 30, size=3), 0, 255).astype(np.float32)
        image[inside] = np.where(pattern[inside][:, None], fg1, fg0)
        label[inside] = cls
    image += rng.normal(0, 8, size=image.shape)
    mask = label.copy()
    mask[_border_band(label)] = 255
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _write_list(path, names):
    write_list(path, [(f"JPEGImages/{n}.jpg", f"SegmentationClass/{n}.png") for n in names])


def make_toy_dataset(root, seed=0, num_train=300, num_val=100, num_labeled=37, min_size=96, max_size=160):
    """Write the toy dataset under ``root`` and return {'labeled': path, 'unlabeled': path, 'val': path}.
    The labeled list is ``num_labeled`` of the training images; the unlabeled list is all the others."""
    if not 0 < num_labeled < num_train:
        raise ValueError(f"num_labeled must be between 1 and num_train - 1 ({num_train - 1}), got {num_labeled}")
    if num_val < 1 or not 32 <= min_size <= max_size:
        raise ValueError(f"need num_val >= 1 and 32 <= min_size <= max_size, got {num_val}, {min_size}, {max_size}")
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    palette = palette_of("toy")
    names = {"train": [f"toy_train_{i:04d}" for i in range(num_train)],
             "val": [f"toy_val_{i:04d}" for i in range(num_val)]}
    # one generator per image, so a sample does not depend on how many came before it
    seeds = np.random.SeedSequence(seed).spawn(num_train + num_val)
    for name, ss in zip(names["train"] + names["val"], seeds):
        image, mask = render_sample(np.random.default_rng(ss), min_size, max_size)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=JPEG_QUALITY)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{name}.png")
    order = np.random.default_rng(seed).permutation(num_train)
    labeled = sorted(names["train"][i] for i in order[:num_labeled])
    unlabeled = sorted(set(names["train"]) - set(labeled))
    lists = {"labeled": root / "labeled.txt", "unlabeled": root / "unlabeled.txt", "val": root / "val.txt"}
    _write_list(lists["labeled"], labeled)
    _write_list(lists["unlabeled"], unlabeled)
    _write_list(lists["val"], names["val"])
    return lists
