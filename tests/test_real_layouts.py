"""End to end on stand-in trees with the real layouts, file names, sizes and mask encodings of Pascal VOC
(+ SBD), Cityscapes and COCO (names from the shipped split lists), with tiny models: train.py for an
epoch, eval.py in the evaluation modes, predict.py and the data check; and the pre-flight check's failure."""
import importlib
import json

import numpy as np
import pytest
from PIL import Image

from allspark.data import read_list
from allspark.data.classes import palette_of
from allspark.engine.predict import main as predict_main
from allspark.engine.score import main as eval_main
from allspark.engine.trainer import main as train_main
from allspark.tools.check_data import main as check_main
from allspark.tools.splits import main as splits_main
from helpers import ROOT, tiny_dpt_cfg, tiny_model_cfg

train_py = importlib.import_module("train")
eval_py = importlib.import_module("eval")
predict_py = importlib.import_module("predict")


def image(path, w, h, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def mask(path, w, h, num_classes, seed, mode="L", border=False, palette=None):
    """Blocks of classes; a 255 band at the border as VOC draws it."""
    rng = np.random.default_rng(seed)
    m = np.kron(rng.integers(0, num_classes, (4, 4)), np.ones((h // 4 + 1, w // 4 + 1), np.int64))[:h, :w]
    m = m.astype(np.uint8)
    if border:
        m[:3], m[-3:], m[:, :3], m[:, -3:] = 255, 255, 255, 255
    im = Image.fromarray(m, mode="L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def sublist(src, dst, n, start=0):
    lines = (ROOT / src).read_text().splitlines()[start:start + n]
    dst.write_text("".join(line + "\n" for line in lines))
    return read_list(dst, image_only=True)


def opts(root, val, model, crop, **extra):
    values = dict(data_root=str(root), val_id_path=str(val), crop_size=crop, epochs=1, batch_size=1, num_workers=0,
                  model=json.dumps(model), **extra)
    return [f"{k}={v}" for k, v in values.items()]


def train(config, labeled, unlabeled, save, options):
    return train_main(train_py.parse_args(["--config", str(config), "--labeled-id-path", str(labeled),
                                           "--unlabeled-id-path", str(unlabeled), "--save-path", str(save),
                                           "--opts", *options]))


def evaluate(config, ckpt, options, *extra):
    return eval_main(eval_py.parse_args(["--config", str(config), "--checkpoint", str(ckpt), "--opts", *options,
                                         *extra]))


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    """JPEGImages/*.jpg (VOC's sizes: 500 x 366, 500 x 343, 357 x 500), SegmentationClass/*.png: VOC's palette
    PNGs with the 255 border band, and SBD's masks converted to grayscale PNGs."""
    tmp = tmp_path_factory.mktemp("pascal")
    root = tmp / "data/pascal"
    labeled = sublist("splits/pascal/1_16/labeled.txt", tmp / "labeled.txt", 2)
    unlabeled = sublist("splits/pascal/1_16/unlabeled.txt", tmp / "unlabeled.txt", 2)
    val = sublist("splits/pascal/val.txt", tmp / "val.txt", 2)
    sizes = [(500, 366), (500, 343), (357, 500)]
    for k, s in enumerate(labeled + unlabeled + val):
        w, h = sizes[k % 3]
        image(root / s.image, w, h, k)
        if s in unlabeled:
            continue  # an unlabeled image's mask is never read
        voc = s in val or k == 0
        mask(root / s.mask, w, h, 21, k, mode="P" if voc else "L", border=voc, palette=palette_of("pascal"))
    return tmp


def test_pascal_layout_trains_evaluates_predicts_and_checks(pascal, tmp_path, capsys):
    root, config = pascal / "data/pascal", ROOT / "configs/pascal_allspark.yaml"
    options = opts(root, pascal / "val.txt", tiny_model_cfg(num_class=21, image_size=65), 65)
    train(config, pascal / "labeled.txt", pascal / "unlabeled.txt", tmp_path / "run", options)
    ckpt = tmp_path / "run/latest.pth"
    assert ckpt.is_file()
    for mode in ("original", "center_crop", "sliding_window", "multiscale"):  # sliding at 65 on 366: a cut edge
        miou, ious = evaluate(config, ckpt, options, "--mode", mode)
        assert len(ious) == 21 and 0 <= miou <= 100
    out = tmp_path / "pred"
    written = predict_main(predict_py.parse_args(["--config", str(config), "--checkpoint", str(ckpt), "--input",
                                                  str(pascal / "val.txt"), "--output", str(out), "--mode",
                                                  "multiscale", "--overlay", "--logits", "--opts", *options]))
    assert written == 2
    for s in read_list(pascal / "val.txt"):
        name = s.image[:-4]
        pred = Image.open(out / f"{name}.png")
        assert pred.mode == "P" and pred.size == Image.open(root / s.image).size
        assert np.array(pred).max() < 21 and pred.getpalette()[3:6] == [128, 0, 0]  # VOC's aeroplane red
        assert Image.open(out / f"overlay/{name}.jpg").size == pred.size
        scores = np.load(out / f"logits/{name}.npy")
        assert scores.shape == (21, pred.size[1], pred.size[0])
        assert (scores.argmax(0) == np.array(pred)).all()
    capsys.readouterr()
    assert check_main(["--config", str(config), "--lists", str(pascal / "labeled.txt"), "--unlabeled",
                       str(pascal / "unlabeled.txt"), "--full", "--opts", f"data_root={root}",
                       f"val_id_path={pascal / 'val.txt'}"]) == 0
    report = capsys.readouterr().out
    assert "class pixel frequencies over 4 masks" in report and "aeroplane" in report


def test_missing_val_image_stops_training_before_it_starts(pascal, tmp_path):
    from allspark.data import DataError

    val = tmp_path / "val.txt"
    val.write_text((pascal / "val.txt").read_text() + "JPEGImages/2099_000001.jpg SegmentationClass/2099_000001.png\n")
    options = opts(pascal / "data/pascal", val, tiny_model_cfg(num_class=21, image_size=65), 65)
    with pytest.raises(DataError, match=r"(?s)2 of the \d+ files the lists name are missing under .*"
                                        r"image JPEGImages/2099_000001.jpg \(listed at .*val.txt:3\)"):
        train(ROOT / "configs/pascal_allspark.yaml", pascal / "labeled.txt", pascal / "unlabeled.txt",
              tmp_path / "run", options)
    assert not (tmp_path / "run").exists(), "nothing written"


def test_cityscapes_layout(tmp_path):
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png at 2048 x 1024, gtFine/.../*_gtFine_labelTrainIds.png."""
    root = tmp_path / "data/cityscapes"
    labeled = sublist("splits/cityscapes/1_16/labeled.txt", tmp_path / "labeled.txt", 1)
    unlabeled = sublist("splits/cityscapes/1_16/unlabeled.txt", tmp_path / "unlabeled.txt", 1)
    val = sublist("splits/cityscapes/val.txt", tmp_path / "val.txt", 1)
    assert val[0].mask.endswith("_gtFine_labelTrainIds.png")
    for k, s in enumerate(labeled + unlabeled + val):
        image(root / s.image, 2048, 1024, k)
        mask(root / s.mask, 2048, 1024, 19, k, border=True)
    config = ROOT / "configs/cityscapes_baseline_semi.yaml"
    model = tiny_model_cfg(num_class=19, decoder="segformer")
    options = opts(root, tmp_path / "val.txt", model, 65, **{"criterion.kwargs.min_kept": 1000})
    train(config, tmp_path / "labeled.txt", tmp_path / "unlabeled.txt", tmp_path / "run", options)
    for mode, crop in (("original", 65), ("sliding_window", 801)):  # the release's 801 windows on 2048 x 1024
        miou, ious = evaluate(config, tmp_path / "run/latest.pth", options + [f"crop_size={crop}"], "--mode", mode)
        assert len(ious) == 19


def test_coco_layout_with_unlabeled_list_from_train2017(tmp_path):
    """train2017/*.jpg, val2017/*.jpg, a flat masks/ folder of 81-class PNGs; the unlabeled list made by the
    split tool from train2017 (as the README says); UniMatch V2 with a tiny DINOv2, scored with its EMA."""

    root = tmp_path / "data/coco"
    labeled = sublist("splits/coco/1_512/labeled.txt", tmp_path / "labeled.txt", 1)
    val = sublist("splits/coco/val.txt", tmp_path / "val.txt", 1)
    assert val[0].image.startswith("val2017/") and val[0].mask.startswith("masks/")
    for k, s in enumerate(labeled + val):
        image(root / s.image, 640, 480, k)
        mask(root / s.mask, 640, 480, 81, k)
    for k in range(2):
        image(root / f"train2017/{k:012d}.jpg", 427, 640, 10 + k)
    assert splits_main(["complete", "--labeled", str(tmp_path / "labeled.txt"), "--root", str(root), "--image-dir",
                        "train2017", "--mask-dir", "masks", "--out", str(tmp_path / "unlabeled.txt")]) == 0
    assert len(read_list(tmp_path / "unlabeled.txt")) == 2
    config = ROOT / "configs/coco_unimatch_v2.yaml"
    options = opts(root, tmp_path / "val.txt", tiny_dpt_cfg(num_class=81), 70)
    train(config, tmp_path / "labeled.txt", tmp_path / "unlabeled.txt", tmp_path / "run", options)
    for extra in ((), ("--ema",)):  # (multiscale on patch-14 models: test_unimatch_v2_parts)
        miou, ious = evaluate(config, tmp_path / "run/latest.pth", options, *extra)
        assert len(ious) == 81
    written = predict_main(predict_py.parse_args(["--config", str(config), "--checkpoint", str(tmp_path / "run/latest.pth"),
                                                  "--input", str(root / "train2017"), "--output", str(tmp_path / "pred"),
                                                  "--ema", "--batch-size", "2", "--opts", *options]))
    # three images of two sizes at batch size 2: only the two of one size share a forward
    assert written == 3 and sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == \
        ["000000000000.png", "000000000001.png", "000000177254.png"]
