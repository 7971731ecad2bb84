"""SemiDataset over generated trees in the Pascal, Cityscapes and COCO layouts, and its errors."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

import allspark.data.semi as semi
from allspark.data import DataError, SemiDataset
from allspark.data.transforms import MEAN, STD

from helpers import LAYOUTS, make_tree, write_sample


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_val_and_train(tmp_path, layout):
    root, lst, masks = make_tree(tmp_path, layout)
    val = SemiDataset(layout, root, "val", id_path=lst)
    img, mask, sample_id = val[1]
    assert img.shape == (3, 30, 40) and img.dtype == torch.float32
    assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), masks[1]), "class indices read unchanged"
    assert sample_id == LAYOUTS[layout][2](1)[0]

    random.seed(0)
    train_l = SemiDataset(layout, root, "train_l", size=24, id_path=lst, nsample=7)
    assert len(train_l) == 7
    assert [s.image for s in train_l.samples] == [LAYOUTS[layout][2](i % 3)[0] for i in range(7)], "tiled, then cut"
    img, mask = train_l[0]
    assert img.shape == (3, 24, 24) and mask.shape == (24, 24) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= set(range(LAYOUTS[layout][0])) | {255}


def test_unlabeled_samples_mark_their_padding(tmp_path):
    root, lst, _ = make_tree(tmp_path, "pascal", w=30, h=20)
    ds = SemiDataset("pascal", root, "train_u", size=80, id_path=lst)  # 2x of 30 is 60 < 80: always padded
    pad_value = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None, None]
    for seed in range(5):
        random.seed(seed)
        sample = ds[seed % 3]
        assert set(sample) == {"img_w", "padded"} and sample["padded"].dtype == torch.bool
        padded = torch.isclose(sample["img_w"], pad_value, atol=1e-5).all(dim=0)
        assert padded.any() and torch.equal(sample["padded"], padded)


def test_unlabeled_mask_file_is_not_read(tmp_path):
    root, lst, _ = make_tree(tmp_path, "coco")
    for path in (root / "masks").iterdir():
        path.unlink()
    sample = SemiDataset("coco", root, "train_u", size=16, id_path=lst)[0]
    assert sample["img_w"].shape == (3, 16, 16) and "truth" not in sample


def test_photometric_transforms_on_labeled_images_only(tmp_path, monkeypatch):
    root, lst, _ = make_tree(tmp_path, "pascal")
    calls = []
    real = semi.photometric
    monkeypatch.setattr(semi, "photometric", lambda img: calls.append(img.size) or real(img))
    SemiDataset("pascal", root, "train_u", size=24, id_path=lst)[0]
    SemiDataset("pascal", root, "val", id_path=lst)[0]
    assert calls == []
    SemiDataset("pascal", root, "train_l", size=24, id_path=lst)[0]
    assert calls == [(24, 24)], "after the crop, once per labeled sample"


def _item(mode, root, lst, seed):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    return SemiDataset("pascal", root, mode, size=32, id_path=lst)[0]


def test_labeled_and_unlabeled_share_geometry_but_not_colour(tmp_path, monkeypatch):
    """With the same seeds, train_l and train_u resize, crop and flip alike; only train_l changes colours."""
    root, lst, _ = make_tree(tmp_path, "pascal", w=60, h=50)
    differs = 0
    for seed in range(6):
        img_l, _ = _item("train_l", root, lst, seed)
        img_u = _item("train_u", root, lst, seed)["img_w"]
        differs += int(not torch.allclose(img_l, img_u))
    assert differs >= 4  # p(no colour change at all) = 0.2 * 0.8 * 0.5 per sample
    monkeypatch.setattr(semi, "photometric", lambda img: img)
    for seed in range(6):
        img_l, mask = _item("train_l", root, lst, seed)
        unlabeled = _item("train_u", root, lst, seed)
        assert torch.equal(img_l, unlabeled["img_w"])
        assert (mask[unlabeled["padded"]] == 255).all(), "padding: 255 in the labeled mask, marked in the unlabeled"


# ---- bad input ------------------------------------------------------------------------------------

def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"dataset root not found: .*nowhere"):
        SemiDataset("pascal", tmp_path / "nowhere", "val", id_path=tmp_path / "x.txt")


def test_missing_list(tmp_path):
    with pytest.raises(DataError, match=r"split list not found: .*absent.txt"):
        SemiDataset("pascal", tmp_path, "val", id_path=tmp_path / "absent.txt")


def test_empty_list(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"split list .*empty.txt is empty"):
        SemiDataset("pascal", tmp_path, "val", id_path=tmp_path / "empty.txt")


def test_malformed_line(tmp_path):
    (tmp_path / "bad.txt").write_text("a.jpg a.png\nb.jpg\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected '<image> <mask>', got 'b.jpg'"):
        SemiDataset("pascal", tmp_path, "val", id_path=tmp_path / "bad.txt")


def test_missing_image_names_file_and_line(tmp_path):
    root, lst, _ = make_tree(tmp_path, "pascal")
    (root / "JPEGImages/2007_000001.jpg").unlink()
    ds = SemiDataset("pascal", root, "val", id_path=lst)
    with pytest.raises(DataError, match=r"image file not found: .*2007_000001.jpg \(listed at .*pascal.txt:2\)"):
        ds[1]


def test_missing_mask_names_file_and_line(tmp_path):
    root, lst, _ = make_tree(tmp_path, "cityscapes")
    mask = root / LAYOUTS["cityscapes"][2](2)[1]
    mask.unlink()
    with pytest.raises(DataError, match=rf"mask file not found: .*{mask.name} \(listed at .*cityscapes.txt:3\)"):
        SemiDataset("cityscapes", root, "train_l", size=16, id_path=lst)[2]


def test_image_and_mask_size_mismatch(tmp_path):
    root = tmp_path / "d"
    write_sample(root, "a.jpg", "a.png", 40, 30, 21, np.random.default_rng(0), mask_size=(40, 31))
    (tmp_path / "l.txt").write_text("a.jpg a.png\n")
    with pytest.raises(DataError, match=r"sample .*l.txt:1: image is 40x30 but mask .*a.png is 40x31"):
        SemiDataset("pascal", root, "val", id_path=tmp_path / "l.txt")[0]


def test_mask_values_out_of_range(tmp_path):
    root = tmp_path / "d"
    mask = write_sample(root, "a.jpg", "a.png", 20, 10, 19, np.random.default_rng(0))
    mask[5, 5], mask[6, 6] = 19, 200
    Image.fromarray(mask).save(root / "a.png")
    (tmp_path / "l.txt").write_text("a.jpg a.png\n")
    with pytest.raises(DataError, match=r"mask .*a.png \(listed at .*l.txt:1\) has values \[19, 200\] that are "
                                        r"neither a class \(0..18\) nor ignore \(255\)"):
        SemiDataset("cityscapes", root, "train_l", size=8, id_path=tmp_path / "l.txt")[0]


def test_colour_mask_rejected(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "a.jpg")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "a.png")
    (tmp_path / "l.txt").write_text("a.jpg a.png\n")
    with pytest.raises(DataError, match=r"has mode RGB: expected a single-channel PNG"):
        SemiDataset("pascal", root, "val", id_path=tmp_path / "l.txt")[0]


def test_unknown_dataset_needs_num_classes(tmp_path):
    with pytest.raises(DataError, match=r"dataset 'mine' is not one of .*give num_classes"):
        SemiDataset("mine", tmp_path, "val", id_path=tmp_path / "l.txt")
    with pytest.raises(DataError, match=r"unknown dataset mode 'train'"):
        SemiDataset("pascal", tmp_path, "train", id_path=tmp_path / "l.txt")
    with pytest.raises(DataError, match=r"mode 'train_l' needs a crop size"):
        SemiDataset("pascal", tmp_path, "train_l", id_path=tmp_path / "l.txt")


@pytest.mark.parametrize("mode", ["train_u", "train_u_strong"])
def test_unlabeled_truth_is_the_labeled_crop_when_asked_for(tmp_path, mode):
    """unlabeled_labels: the true labels of the unlabeled crop (``truth``, 255 where padded), with the same
    geometry as a labeled crop drawn with the same seed; without it, or with a mask missing, nothing is read."""
    root, lst, _ = make_tree(tmp_path, "pascal", w=30, h=20)
    for seed in range(4):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        items = SemiDataset("pascal", root, mode, size=48, id_path=lst, unlabeled_labels=True)[0]
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        _, mask = SemiDataset("pascal", root, "train_l_weak", size=48, id_path=lst)[0]
        assert len(items) == (3 if mode == "train_u" else 7) and torch.equal(items["truth"], mask)
    assert "truth" not in SemiDataset("pascal", root, mode, size=48, id_path=lst)[0]
    next((root / "SegmentationClass").iterdir()).unlink()
    assert not SemiDataset("pascal", root, mode, size=48, id_path=lst, unlabeled_labels=True).with_labels
