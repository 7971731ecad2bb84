"""The release's augmentations: padding values, crops, joint flips, resize ranges, dtypes."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.data.transforms import MEAN, STD, crop, hflip, normalize, resize


def pattern_pair(w, h):
    """An RGB image and a mask that both encode the column index (so their geometry can be compared)."""
    cols = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    img = Image.fromarray(np.stack([cols, cols // 2 + 10, np.full_like(cols, 200)], axis=-1))
    return img, Image.fromarray(cols)


def test_crop_pads_image_with_zero_and_mask_with_ignore_value():
    img, mask = pattern_pair(20, 10)
    out_img, out_mask = crop(img, mask, 32, ignore_value=254)
    a, m = np.array(out_img), np.array(out_mask)
    assert a.shape == (32, 32, 3) and m.shape == (32, 32)
    # the image is smaller than the crop in both directions, so the crop is the whole padded image
    assert np.array_equal(a[:10, :20], np.array(img)) and np.array_equal(m[:10, :20], np.array(mask))
    assert (a[10:] == 0).all() and (a[:, 20:] == 0).all()
    assert (m[10:] == 254).all() and (m[:, 20:] == 254).all()


def test_crop_takes_a_window_of_a_large_image():
    random.seed(3)
    img, mask = pattern_pair(100, 60)
    out_img, out_mask = crop(img, mask, 40)
    m = np.array(out_mask)
    x0 = int(m[0, 0])
    assert np.array_equal(m, np.tile(np.arange(x0, x0 + 40, dtype=np.uint8), (40, 1)))
    assert np.array_equal(np.array(out_img)[..., 0], m)


def test_hflip_flips_image_and_mask_together():
    img, mask = pattern_pair(30, 8)
    flipped = 0
    for seed in range(40):
        random.seed(seed)
        out_img, out_mask = hflip(img, mask, p=0.5)
        a, m = np.array(out_img), np.array(out_mask)
        assert np.array_equal(a[..., 0], m), "image and mask must stay aligned"
        flipped += int(m[0, 0] == 29)
    assert 5 < flipped < 35, "p=0.5 should flip some samples and not others"
    random.seed(0)
    assert np.array_equal(np.array(hflip(img, mask, p=1.0)[1])[0], np.arange(29, -1, -1))
    assert np.array_equal(np.array(hflip(img, mask, p=0.0)[1]), np.array(mask))


def test_resize_long_side_range_and_nearest_mask():
    img, mask = pattern_pair(80, 40)
    sides = set()
    for seed in range(60):
        random.seed(seed)
        out_img, out_mask = resize(img, mask, (0.5, 2.0))
        w, h = out_img.size
        assert out_mask.size == (w, h)
        assert 40 <= w <= 160 and abs(h - w / 2) <= 1, "long side in [0.5 L, 2 L], aspect ratio kept"
        assert set(np.unique(np.array(out_mask))) <= set(range(80)), "nearest: no new mask values"
        sides.add(w)
    assert min(sides) < 70 and max(sides) > 130


def test_normalize_dtypes_and_values():
    img = Image.fromarray(np.full((4, 5, 3), 255, dtype=np.uint8))
    mask = Image.fromarray(np.full((4, 5), 7, dtype=np.uint8))
    t, m = normalize(img, mask)
    assert t.dtype == torch.float32 and t.shape == (3, 4, 5)
    assert m.dtype == torch.int64 and m.shape == (4, 5) and (m == 7).all()
    expected = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(t[:, 0, 0], expected)
    assert normalize(img).shape == (3, 4, 5)


@pytest.mark.parametrize("size", [(10, 30), (30, 10)])
def test_resize_portrait_and_landscape(size):
    img, mask = pattern_pair(*size)
    random.seed(1)
    out, _ = resize(img, mask)
    assert (out.size[0] > out.size[1]) == (size[0] > size[1])
