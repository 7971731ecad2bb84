"""The built-in toy dataset: deterministic, in the Pascal layout, with the shipped lists."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from allspark.data import CLASSES, SemiDataset, read_list
from allspark.data.toy import DEFAULTS, make_toy_dataset

from helpers import ROOT


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_toy_is_deterministic_and_seed_dependent(tmp_path):
    small = dict(num_train=12, num_val=4, num_labeled=3)
    make_toy_dataset(tmp_path / "a", seed=5, **small)
    make_toy_dataset(tmp_path / "b", seed=5, **small)
    make_toy_dataset(tmp_path / "c", seed=6, **small)
    a = tree_bytes(tmp_path / "a")
    assert len(a) == 2 * 16 + 3
    assert a == tree_bytes(tmp_path / "b")
    assert a["JPEGImages/toy_train_0000.jpg"] != tree_bytes(tmp_path / "c")["JPEGImages/toy_train_0000.jpg"]


@pytest.fixture(scope="module")
def default_toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, "-m", "allspark.tools.toy", "--root", str(root)], check=True, cwd=ROOT,
                   capture_output=True)
    return root


def test_shipped_lists_are_the_generated_ones(default_toy):
    for name in ("labeled", "unlabeled", "val"):
        assert (ROOT / "splits/toy" / f"{name}.txt").read_text() == (default_toy / f"{name}.txt").read_text()


def test_default_toy_content(default_toy):
    labeled, unlabeled = read_list(default_toy / "labeled.txt"), read_list(default_toy / "unlabeled.txt")
    val = read_list(default_toy / "val.txt")
    assert (len(labeled), len(unlabeled), len(val)) == (37, 263, 100)
    assert not {s.image for s in labeled} & {s.image for s in unlabeled}
    seen = np.zeros(256, dtype=np.int64)
    for sample in labeled + val[:40]:
        img = Image.open(default_toy / sample.image)
        mask = Image.open(default_toy / sample.mask)
        assert mask.mode == "P" and img.size == mask.size
        assert all(DEFAULTS["min_size"] <= s <= DEFAULTS["max_size"] for s in img.size)
        seen += np.bincount(np.array(mask).ravel(), minlength=256)
    present = set(np.flatnonzero(seen).tolist())
    assert present == set(range(len(CLASSES["toy"]))) | {255}, "every class and the ignore band occur"
    assert 0.01 < seen[255] / seen.sum() < 0.15


def test_toy_loads_as_a_dataset(default_toy):
    ds = SemiDataset("toy", default_toy, "train_l", size=65, id_path=default_toy / "labeled.txt", nsample=263)
    img, mask = ds[0]
    assert len(ds) == 263 and img.shape == (3, 65, 65) and mask.shape == (65, 65)
