"""ADE20K on a stand-in tree with the official layout and names: reduce-zero-label reading, the shipped
lists and configs, and a short training run evaluated with 150 classes."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.config import PROJECT_ROOT, load_training_config
from allspark.data import CLASSES, DataError, SemiDataset, read_list
from helpers import call, mious, tiny_model_cfg, train_args, write_config


def ade_tree(root, n_train=6, n_val=2, seed=0):
    """images/{training,validation}/ADE_*.jpg and annotations/.../ADE_*.png holding 0 (other) .. 150."""
    rng = np.random.default_rng(seed)
    lists = {}
    for split, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        lines = []
        for i in range(1, n + 1):
            image, mask = f"images/{split}/{prefix}_{i:08d}.jpg", f"annotations/{split}/{prefix}_{i:08d}.png"
            for rel in (image, mask):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
            h, w = rng.integers(64, 90, size=2)
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / image)
            m = rng.integers(0, 151, size=(h, w), dtype=np.uint8)
            m[:4] = 0  # "other"
            m[4:8] = 150  # the last class
            Image.fromarray(m, mode="L").save(root / mask)
            lines.append(f"{image} {mask}\n")
        lists[split] = root / f"{split}.txt"
        lists[split].write_text("".join(lines))
    return lists


def test_masks_are_read_with_reduce_zero_label_and_shifted_ones_refused(tmp_path):
    lists = ade_tree(tmp_path)
    raw = np.array(Image.open(tmp_path / "annotations/validation/ADE_val_00000001.png"))
    _, mask, _ = SemiDataset("ade20k", tmp_path, "val", id_path=lists["validation"])[0]
    assert len(CLASSES["ade20k"]) == 150
    assert (mask[:4] == 255).all() and (mask[4:8] == 149).all()
    assert torch.equal(mask[8:], torch.from_numpy(raw[8:].astype(np.int64) - 1).masked_fill(torch.from_numpy(raw[8:] == 0), 255))
    shifted = raw.copy()
    shifted[:4] = 255
    Image.fromarray(shifted, mode="L").save(tmp_path / "annotations/validation/ADE_val_00000001.png")
    with pytest.raises(DataError, match=r"ADE_val_00000001.png .* holds 255: it looks already shifted"):
        SemiDataset("ade20k", tmp_path, "val", id_path=lists["validation"])[0]


def test_shipped_lists_and_configs():
    train = read_list(PROJECT_ROOT / "splits/ade20k/train.txt")
    assert len(train) == 20210 and train[0].image == "images/training/ADE_train_00000001.jpg"
    assert len(read_list(PROJECT_ROOT / "splits/ade20k/val.txt")) == 2000
    for split, count in (("1_64", 316), ("1_32", 632), ("1_16", 1263), ("1_8", 2526)):
        labeled = {s.image for s in read_list(PROJECT_ROOT / f"splits/ade20k/{split}/labeled.txt")}
        unlabeled = {s.image for s in read_list(PROJECT_ROOT / f"splits/ade20k/{split}/unlabeled.txt")}
        assert len(labeled) == count and not labeled & unlabeled and len(labeled | unlabeled) == 20210
    for name, method in (("allspark", "allspark"), ("unimatch_v2", "unimatch_v2"), ("allspark_dinov2", "allspark")):
        cfg = load_training_config(PROJECT_ROOT / "configs" / f"ade20k_{name}.yaml")
        assert (cfg["dataset"], cfg["nclass"], cfg["method"]) == ("ade20k", 150, method)
    assert load_training_config(PROJECT_ROOT / "configs/ade20k_unimatch_v2.yaml")["lock_backbone"] is True


def test_a_short_run_trains_and_scores_150_classes(tmp_path):
    lists = ade_tree(tmp_path / "ade")
    (tmp_path / "labeled.txt").write_text("".join(lists["training"].read_text().splitlines(True)[:2]))
    (tmp_path / "unlabeled.txt").write_text("".join(lists["training"].read_text().splitlines(True)[2:]))
    data = SimpleNamespace(root=tmp_path / "ade", val=str(lists["validation"]), labeled=str(tmp_path / "labeled.txt"),
                           unlabeled=str(tmp_path / "unlabeled.txt"))
    cfg = write_config(tmp_path / "c.yaml", data, "allspark", dataset="ade20k", nclass=150, epochs=1,
                       model=tiny_model_cfg(num_class=150))
    out = call("train", train_args(cfg, data, tmp_path / "run")[1:])
    assert out.status == 0, out.log[-3000:]
    assert len(mious(out.log)) == 1 and "Class [149 flag] IoU" in out.log
    scored = call("eval", ["--config", cfg, "--checkpoint", tmp_path / "run" / "latest.pth"])
    assert scored.status == 0 and mious(scored.log) == mious(out.log), scored.log[-2000:]
