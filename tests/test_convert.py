"""The converters from the official downloads: SBD's .mat masks, Cityscapes' labelTrainIds, COCO's 81-class masks."""
import json

import numpy as np
import pytest
from PIL import Image

from allspark.data.classes import CLASSES
from allspark.tools.convert import main


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    src = tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    src.parent.mkdir(parents=True)
    ids = np.array([[0, 7, 8, 11], [24, 26, 33, 34], [1, 6, 9, 31]], np.uint8)  # 34+: not in the table
    Image.fromarray(ids).save(src)
    assert main(["cityscapes", "--root", str(tmp_path)]) == 0
    out = np.array(Image.open(str(src).replace("_labelIds", "_labelTrainIds")))
    assert out.tolist() == [[255, 0, 1, 2], [11, 13, 18, 255], [255, 255, 255, 16]]
    assert CLASSES["cityscapes"][11] == "person" and CLASSES["cityscapes"][16] == "train"
    assert main(["cityscapes", "--root", str(tmp_path / "none")]) == 2


def test_sbd_mat_masks_become_palette_pngs_beside_vocs(tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    (tmp_path / "sbd/cls").mkdir(parents=True)
    seg = np.zeros((6, 5), np.uint8)
    seg[2:4, 1:3] = 15  # person
    for name in ("2008_000002", "2007_000032"):
        scipy_io.savemat(tmp_path / f"sbd/cls/{name}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": 0,
                                                                     "CategoriesPresent": 15}})
    out = tmp_path / "SegmentationClass"
    out.mkdir()
    Image.fromarray(np.full((6, 5), 255, np.uint8)).save(out / "2007_000032.png")  # VOC's own: kept
    assert main(["sbd", "--sbd-root", str(tmp_path / "sbd"), "--out", str(out)]) == 0
    assert "wrote 1 mask(s), 1 already there (of 2)" in capsys.readouterr().out
    png = Image.open(out / "2008_000002.png")
    assert png.mode == "P" and (np.array(png) == seg).all()
    assert (np.array(Image.open(out / "2007_000032.png")) == 255).all()
    (tmp_path / "sbd/cls/bad.mat").write_text("not a mat file")
    assert main(["sbd", "--sbd-root", str(tmp_path / "sbd"), "--out", str(out)]) == 2
    assert "bad.mat: not an SBD class mask" in capsys.readouterr().err


def test_coco_instances_become_81_class_masks(tmp_path):
    # a 4 x 6 image: a polygon of "bicycle" (id 2 -> class 2), a larger "person" (id 1) under it, a crowd
    # region in uncompressed RLE (column-major runs), and "toothbrush" (id 90 -> class 80) elsewhere
    crowd = np.zeros((4, 6), bool)
    crowd[0, 5] = crowd[1, 5] = True
    runs, flat, value, n = [], crowd.T.ravel(), False, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    data = {
        "images": [{"id": 7, "file_name": "000000000007.jpg", "height": 4, "width": 6}],
        "categories": [{"id": i, "name": n} for i, n in ((1, "person"), (2, "bicycle"), (90, "toothbrush"))]
        + [{"id": i, "name": f"c{i}"} for i in range(3, 90) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)][:77],
        "annotations": [
            {"image_id": 7, "category_id": 2, "iscrowd": 0, "area": 1, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
            {"image_id": 7, "category_id": 1, "iscrowd": 0, "area": 9, "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]},
            {"image_id": 7, "category_id": 90, "iscrowd": 0, "area": 2, "segmentation": [[4, 3, 5, 3, 5, 4, 4, 4]]},
            {"image_id": 7, "category_id": 1, "iscrowd": 1, "area": 2, "segmentation": {"counts": runs, "size": [4, 6]}},
        ],
    }
    assert len(data["categories"]) == 80
    (tmp_path / "instances.json").write_text(json.dumps(data))
    assert main(["coco", "--annotations", str(tmp_path / "instances.json"), "--out", str(tmp_path / "masks")]) == 0
    m = np.array(Image.open(tmp_path / "masks/000000000007.png"))
    assert m.shape == (4, 6)
    assert m[0, 0] == 2 and m[2, 2] == 2 and m[3, 3] == 1 and m[0, 4] == 0, "bicycle over person, background beyond"
    assert m[3, 4] == 80 and m[0, 5] == 255 and m[1, 5] == 255 and m[2, 5] == 0
    assert CLASSES["coco"][80] == "toothbrush" and CLASSES["coco"][2] == "bicycle"
