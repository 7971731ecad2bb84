"""The pre-flight data check (stat calls at start-up) and `python -m allspark.tools.check_data`."""
import numpy as np
import pytest
import yaml
from PIL import Image

from allspark.config import PROJECT_ROOT
from allspark.data import DataError
from allspark.data.check import preflight
from allspark.tools.check_data import main


def make_tree(root, n=4, size=(40, 30)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for k in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(root / f"images/{k}.jpg")
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[:, : size[0] // 2] = k % 3
        Image.fromarray(mask).save(root / f"masks/{k}.png")
        lines.append(f"images/{k}.jpg masks/{k}.png\n")
    return lines


def write_config(tmp_path, root, val, **extra):
    cfg = yaml.safe_load((PROJECT_ROOT / "configs/toy_allspark.yaml").read_text())
    cfg.update(dataset="mine", data_root=str(root), val_id_path=str(val), nclass=3, **extra)
    cfg["model"]["decoder"]["kwargs"]["num_class"] = 3
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_preflight_names_the_first_missing_files_and_their_lines(tmp_path):
    lines = make_tree(tmp_path / "d")
    (tmp_path / "l.txt").write_text("".join(lines))
    (tmp_path / "u.txt").write_text("images/0.jpg masks/none.png\nimages/1.jpg\n")  # unlabeled: masks optional
    assert preflight(tmp_path / "d", [(tmp_path / "l.txt", True), (tmp_path / "u.txt", False)]) == 10
    (tmp_path / "d/images/2.jpg").unlink()
    (tmp_path / "d/masks/3.png").unlink()
    with pytest.raises(DataError) as err:
        preflight(tmp_path / "d", [(tmp_path / "l.txt", True)], hint=" (data_root of c.yaml)")
    message = str(err.value)
    assert message.startswith(f"2 of the 8 files the lists name are missing under {tmp_path / 'd'} (data_root of c.yaml)")
    assert f"image images/2.jpg (listed at {tmp_path / 'l.txt'}:3)" in message
    assert f"mask masks/3.png (listed at {tmp_path / 'l.txt'}:4)" in message
    with pytest.raises(DataError, match="dataset root not found"):
        preflight(tmp_path / "nowhere", [(tmp_path / "l.txt", True)])


def test_preflight_lists_at_most_ten(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "l.txt").write_text("".join(f"i{k}.jpg m{k}.png\n" for k in range(12)))
    with pytest.raises(DataError, match=r"(?s)24 of the 24 files.*i4.jpg.*\.\.\. and 14 more"):
        preflight(tmp_path / "d", [(tmp_path / "l.txt", True)])


def test_check_cli_reports_problems_and_class_frequencies(tmp_path, capsys):
    root = tmp_path / "d"
    lines = make_tree(root, n=6)
    (tmp_path / "val.txt").write_text("".join(lines[:2]))
    (tmp_path / "l.txt").write_text("".join(lines[2:]))
    config = write_config(tmp_path, root, tmp_path / "val.txt", classes=["sky", "tree", "road"])
    assert main(["--config", str(config), "--lists", str(tmp_path / "l.txt")]) == 0
    assert "every listed file is there" in capsys.readouterr().out
    assert main(["--config", str(config), "--lists", str(tmp_path / "l.txt"), "--full"]) == 0
    out = capsys.readouterr().out
    assert "class pixel frequencies over 6 masks (7200 pixels)" in out
    assert "sky  66.667 %" in out and "tree  16.667 %" in out and "road  16.667 %" in out

    # break things: an RGB mask, a mask of another size, values out of range, a missing image
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "masks/2.png")
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(root / "masks/3.png")
    bad = np.zeros((30, 40), np.uint8)
    bad[0, 0], bad[1, 1] = 7, 255
    Image.fromarray(bad).save(root / "masks/4.png")
    (root / "images/5.jpg").unlink()
    assert main(["--config", str(config), "--lists", str(tmp_path / "l.txt")]) == 1
    assert "missing image: 1" in capsys.readouterr().out
    assert main(["--config", str(config), "--lists", str(tmp_path / "l.txt"), "--full"]) == 1
    out = capsys.readouterr().out
    assert "mask not single-channel: 1" in out and "masks/2.png has mode RGB" in out
    assert "mask size differs from image: 1" in out and "masks/3.png is 40x31, images/3.jpg is 40x30" in out
    assert "values neither a class nor ignore: 1" in out and "masks/4.png: [7]" in out
    assert "missing image: 1" in out
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
