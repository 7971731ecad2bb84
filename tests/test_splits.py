"""Split lists: the shipped standard lists parse with their known counts (and equal the reference copies),
and the split tools."""
import pytest

from allspark.data import DataError, read_list
from allspark.data.splits import complete_split, make_split, scan_root
from allspark.tools.splits import main

from helpers import ROOT

SHARED = ROOT.parent / "shared" / "splits"
SHIPPED = ROOT / "splits"

EXPECTED = {
    "pascal/val.txt": 1449, "pascal/train_aug.txt": 10582,
    "pascal/92/labeled.txt": 92, "pascal/183/labeled.txt": 183, "pascal/366/labeled.txt": 366,
    "pascal/732/labeled.txt": 732, "pascal/1464/labeled.txt": 1464, "pascal/92/unlabeled.txt": 10490,
    "pascal/1_16/labeled.txt": 662, "pascal/1_8/labeled.txt": 1323, "pascal/1_4/labeled.txt": 2646,
    "pascal/1_2/labeled.txt": 5291, "pascal/u2pl_1_8/labeled.txt": 1323,
    "cityscapes/val.txt": 500, "cityscapes/1_16/labeled.txt": 186, "cityscapes/1_8/labeled.txt": 372,
    "cityscapes/1_4/labeled.txt": 744, "cityscapes/1_2/labeled.txt": 1488, "cityscapes/1_30/labeled.txt": 100,
    "cityscapes/1_16/unlabeled.txt": 2789,
    "coco/val.txt": 5000, "coco/1_512/labeled.txt": 232, "coco/1_256/labeled.txt": 463,
    "coco/1_128/labeled.txt": 925, "coco/1_64/labeled.txt": 1849, "coco/1_32/labeled.txt": 3697,
}


def shared(rel=""):
    """A shipped list (the tests of the tools run on what the repository ships)."""
    return SHIPPED / rel


def pairs(path):
    return [(s.image, s.mask) for s in read_list(path)]


def test_every_shipped_list_parses_with_expected_counts():
    lists = sorted(p for d in ("pascal", "cityscapes", "coco") for p in (SHIPPED / d).rglob("*.txt")
                   if not (d == "coco" and p.name == "unlabeled.txt"))  # COCO's are made locally
    assert len(lists) == 43  # Pascal 2 + 12 x 2, Cityscapes 1 + 5 x 2, COCO 1 + 5
    counts = {p.relative_to(SHIPPED).as_posix(): len(read_list(p)) for p in lists}
    assert {k: counts.get(k) for k in EXPECTED} == EXPECTED
    prefixes = {"pascal": ("JPEGImages/", "SegmentationClass/"), "cityscapes": ("leftImg8bit/", "gtFine/"),
                "coco": ("train2017/", "masks/")}
    for rel in counts:
        if rel.startswith("coco/val"):
            continue  # val2017
        image_prefix, mask_prefix = prefixes[rel.split("/")[0]]
        for image, mask in pairs(SHIPPED / rel)[:50]:
            assert image.startswith(image_prefix) and mask.startswith(mask_prefix), rel
    assert "MIT License" in (SHIPPED / "LICENSE").read_text() and "Lihe Yang" in (SHIPPED / "LICENSE").read_text()


def test_shipped_lists_equal_the_reference_copies():
    if not SHARED.is_dir():
        pytest.skip(f"reference split lists {SHARED} not present")
    reference = sorted(SHARED.rglob("*.txt"))
    assert reference
    for path in reference:
        rel = path.relative_to(SHARED)
        assert (SHIPPED / rel).read_bytes() == path.read_bytes(), rel


@pytest.mark.parametrize("split", ["92", "1464", "1_8", "u2pl_1_4"])
def test_complete_reproduces_pascal_unlabeled_lists(split):
    unlabeled = complete_split(pairs(shared(f"pascal/{split}/labeled.txt")), pairs(shared("pascal/train_aug.txt")))
    assert sorted(unlabeled) == sorted(pairs(shared(f"pascal/{split}/unlabeled.txt")))


def test_complete_reproduces_cityscapes_unlabeled_lists():
    train = pairs(shared("cityscapes/1_2/labeled.txt")) + pairs(shared("cityscapes/1_2/unlabeled.txt"))
    assert len(train) == 2975
    unlabeled = complete_split(pairs(shared("cityscapes/1_8/labeled.txt")), train)
    assert sorted(unlabeled) == sorted(pairs(shared("cityscapes/1_8/unlabeled.txt")))


def test_complete_rejects_labeled_images_outside_the_pool():
    with pytest.raises(DataError, match=r"1 labeled image\(s\) are not among the 2 training images"):
        complete_split([("x.jpg", "x.png")], [("a.jpg", "a.png"), ("b.jpg", "b.png")])


def test_make_split_ratio_count_seed():
    pool = [(f"i{k}.jpg", f"m{k}.png") for k in range(80)]
    labeled, unlabeled = make_split(pool, ratio="1/8", seed=1)
    assert len(labeled) == 10 and len(unlabeled) == 70
    assert sorted(labeled + unlabeled) == sorted(pool) and not set(labeled) & set(unlabeled)
    assert labeled == sorted(labeled, key=pool.index), "input order kept"
    assert make_split(pool, ratio="1/8", seed=1) == (labeled, unlabeled)
    assert make_split(pool, ratio="1/8", seed=2)[0] != labeled
    assert len(make_split(pool, count=3)[0]) == 3
    with pytest.raises(DataError, match="between 1 and 79"):
        make_split(pool, count=80)


def test_cli_make_and_complete_from_a_scanned_root(tmp_path, capsys):
    (tmp_path / "data/images/a").mkdir(parents=True)
    (tmp_path / "data/masks/a").mkdir(parents=True)
    for k in range(8):
        (tmp_path / f"data/images/a/{k}.jpg").write_bytes(b"")
        if k < 6:  # two images without a mask: unlabeled, listed by image only
            (tmp_path / f"data/masks/a/{k}.png").write_bytes(b"")
    assert scan_root(tmp_path / "data", "images", "masks")[0] == ("images/a/0.jpg", "masks/a/0.png")
    assert scan_root(tmp_path / "data", "images", "masks", require_masks=True)[7] == ("images/a/7.jpg", None)
    out = tmp_path / "splits/mine"
    assert main(["make", "--root", str(tmp_path / "data"), "--image-dir", "images", "--mask-dir", "masks",
                 "--count", "2", "--val-count", "1", "--out", str(out)]) == 0
    assert "2 labeled, 5 unlabeled (2 without a mask), 1 val" in capsys.readouterr().out
    labeled, val = pairs(out / "labeled.txt"), pairs(out / "val.txt")
    unlabeled = [(s.image, s.mask) for s in read_list(out / "unlabeled.txt", image_only=True)]
    assert len(labeled) == 2 and len(val) == 1 and len(unlabeled) == 5
    assert ("images/a/6.jpg", None) in unlabeled and ("images/a/7.jpg", None) in unlabeled
    assert all(m is not None for _, m in labeled + val)
    assert sorted(i for i, _ in labeled + val + unlabeled) == [f"images/a/{k}.jpg" for k in range(8)]
    assert "images/a/6.jpg\n" in (out / "unlabeled.txt").read_text()
    assert main(["complete", "--labeled", str(out / "labeled.txt"), "--root", str(tmp_path / "data"),
                 "--image-dir", "images", "--mask-dir", "masks", "--out", str(tmp_path / "u.txt")]) == 0
    assert len(read_list(tmp_path / "u.txt")) == 6
    assert main(["make", "--list", str(tmp_path / "none.txt"), "--ratio", "1/2", "--out", str(out)]) == 2
    assert "split list not found" in capsys.readouterr().err
    assert main(["make", "--list", str(out / "labeled.txt"), "--ratio", "3/2", "--out", str(out)]) == 2
    assert "ratio must be between 0 and 1" in capsys.readouterr().err


def test_coco_unlabeled_lists_made_from_train2017(tmp_path):
    """The README's loop: every train2017 image not in a split's labeled list."""
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    for k in (3, 1, 2):
        (coco / f"train2017/{k:012d}.jpg").write_bytes(b"")
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("train2017/000000000002.jpg masks/000000000002.png\n")
    assert main(["complete", "--labeled", str(labeled), "--root", str(coco), "--image-dir", "train2017",
                 "--mask-dir", "masks", "--out", str(tmp_path / "unlabeled.txt")]) == 0
    assert pairs(tmp_path / "unlabeled.txt") == [("train2017/000000000001.jpg", "masks/000000000001.png"),
                                                 ("train2017/000000000003.jpg", "masks/000000000003.png")]
    # a real split's labeled images are train2017 images, so the same loop works on the shipped lists
    assert all(image.startswith("train2017/") for image, _ in pairs(SHIPPED / "coco/1_512/labeled.txt"))
