"""The README's "Your own dataset" walk-through, command for command, on a small dataset made here: a folder
of images (some without masks) -> split lists -> a config that describes the dataset -> the data check ->
scripts/train.sh -> eval.py -> predict.py. The launchers run as the README runs them; the Python tools and
eval.py run in this process, as their commands would."""
import os
import subprocess

import numpy as np
from PIL import Image

from allspark.data import read_list
from allspark.tools import check_data, splits
from helpers import ROOT, call, free_port

# The config of the walk-through (README), with absolute paths; the model is made tiny on the command line.
CONFIG = """\
method: allspark
dataset: mine
data_root: {root}
val_id_path: {splits}/val.txt
nclass: 3
classes: [sky, tree, road]
palette: [[70, 130, 180], [107, 142, 35], [128, 64, 128]]
reduce_zero_label: true          # the masks store 0 = unannotated, 1..3 the classes
crop_size: 129
epochs: 40
batch_size: 2
lr: 0.001
lr_multi: 10.0
criterion:
  name: CELoss
  kwargs:
    ignore_index: 255
eval_mode: sliding_window
model:
  backbone:
    type: mit_b0
    kwargs:
      pretrained: false            # true: pretrained_weights/mit_b0.pth (ImageNet)
  decoder:
    type: allspark
    kwargs:
      num_heads: 2
      num_class: 3
      in_planes: [32, 64, 160, 256]
      image_size: 129
      warmup_epoch: 1              # S-Mem is used after this epoch
      embedding_dim: 256
"""
TINY = ("model={backbone: {type: mit, kwargs: {embed_dims: [8, 16, 24, 32], num_heads: [1, 1, 1, 1], "
        "depths: [1, 1, 1, 1]}}, decoder: {type: allspark, kwargs: {num_heads: 2, num_class: 3, "
        "in_planes: [8, 16, 24, 32], image_size: 65, warmup_epoch: 1, embedding_dim: 16}}}")


def run(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def make_dataset(root, n=12, unannotated=3):
    """Sky over trees over road; the last ``unannotated`` images have no mask."""
    rng = np.random.default_rng(0)
    for k in range(n):
        h, w = int(rng.integers(90, 140)), int(rng.integers(90, 140))
        mask = np.ones((h, w), np.uint8)
        mask[h // 3:, :] = 2
        mask[2 * h // 3:, :] = 3
        mask[:, :4] = 0  # an unannotated strip
        colours = np.array([[0, 0, 0], [70, 130, 180], [40, 140, 40], [120, 120, 120]], np.uint8)
        img = colours[mask] + rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"images/{k:03d}.jpg")
        if k < n - unannotated:
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask).save(root / f"masks/{k:03d}.png")


def test_walkthrough(tmp_path, capsys):
    root, lists = tmp_path / "data/mine", tmp_path / "splits/mine/4"
    make_dataset(root)
    assert splits.main(["make", "--root", str(root), "--image-dir", "images", "--mask-dir", "masks", "--count", "4",
                        "--val-count", "2", "--seed", "0", "--out", str(lists)]) == 0
    assert "4 labeled, 6 unlabeled (3 without a mask), 2 val" in capsys.readouterr().out
    assert sum(s.mask is None for s in read_list(lists / "unlabeled.txt", image_only=True)) == 3
    config = tmp_path / "mine.yaml"
    config.write_text(CONFIG.format(root=root, splits=lists))

    assert check_data.main(["--config", str(config), "--lists", str(lists / "labeled.txt"), "--unlabeled",
                            str(lists / "unlabeled.txt"), "--full"]) == 0
    out = capsys.readouterr().out
    assert "sky" in out and "road" in out and "(ignore)" in out and "classes never seen" not in out

    save = tmp_path / "exp"
    out = run("bash", "scripts/train.sh", "1", str(free_port()), "mine", "allspark", str(lists), "--config", str(config),
              "--save-path", str(save), "epochs=2", "crop_size=65", "num_workers=0", TINY)
    assert "sky" in out and "MeanIoU" in out
    assert (save / "latest.pth").is_file() and len(list(save.glob("*.log"))) == 1

    tiny = ["--opts", "crop_size=65", TINY]
    out = call("eval", ["--config", config, "--checkpoint", save / "latest.pth", *tiny])
    assert out.status == 0 and "tree" in out.log and "sliding_window" in out.log
    pred = tmp_path / "pred"
    # two processes under torchrun, each predicting its share
    out = run("torchrun", "--nproc_per_node=2", f"--master_port={free_port()}", "predict.py", "--config", str(config),
              "--checkpoint", str(save / "latest.pth"), "--input", str(root / "images"), "--output", str(pred),
              "--overlay", *tiny)
    assert "wrote 6 prediction(s)" in out
    pngs = sorted(pred.glob("*.png"))
    assert len(pngs) == 12 and len(list((pred / "overlay").glob("*.jpg"))) == 12
    first = Image.open(pngs[0])
    assert first.getpalette()[:9] == [70, 130, 180, 107, 142, 35, 128, 64, 128], "the config's palette"
    assert np.array(first).max() <= 2
