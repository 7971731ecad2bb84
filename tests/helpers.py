"""What the tests share: tiny model configs (one per family), configs and toy data on disk, the golden
files, and running the entry points as processes (free ports, a clean environment, their output)."""
import contextlib
import copy
import importlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.nn as nn
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The official releases' reference tensors live beside the project (not in it); users who clone the project
# lack them, so the tests that need them skip.
GOLDEN = Path(os.environ.get("ALLSPARK_GOLDEN", ROOT.parent / "shared" / "golden"))
CROP = 65  # the MiT models' training crop
DPT_CROP = 70  # the DINOv2 models' (a multiple of 14)


def golden_file(name):
    path = GOLDEN / name
    if not path.is_file():
        pytest.skip(f"golden reference {path} not present")
    return path


# ---- tiny models, one per family ------------------------------------------------------------------------

def tiny_model_cfg(num_class=5, image_size=CROP, decoder="allspark", dims=(16, 32, 40, 64), depths=(1, 1, 1, 1),
                   num_heads=2, embedding_dim=32, mit_heads=(1, 2, 5, 8), **decoder_kwargs):
    """MiT + the AllSpark decoder (or ``decoder='segformer'``), as small as the golden case; ``num_heads``
    are the bottleneck's, ``mit_heads`` the encoder stages'."""
    kwargs = {"num_class": num_class, "in_planes": list(dims), "embedding_dim": embedding_dim}
    if decoder == "allspark":
        kwargs.update(num_heads=num_heads, image_size=image_size, warmup_epoch=1)
    return {
        "backbone": {"type": "mit", "kwargs": {"embed_dims": list(dims), "num_heads": list(mit_heads),
                                               "depths": list(depths), "drop_path_rate": 0.0}},
        "decoder": {"type": decoder, "kwargs": {**kwargs, **decoder_kwargs}},
    }


TINY_DINOV2 = {"type": "dinov2", "kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 2, "layers": [0, 1, 2, 3]}}
TINY_DPT_HEAD = {"features": 16, "out_channels": [8, 16, 32, 32]}


def tiny_dpt_cfg(num_class=5):
    """UniMatch V2's model at the golden file's size: a 4-block DINOv2 of width 48 and a small DPT head."""
    return {"backbone": copy.deepcopy(TINY_DINOV2),
            "decoder": {"type": "dpt", "kwargs": {"num_class": num_class, **copy.deepcopy(TINY_DPT_HEAD)}}}


def tiny_dinov2_allspark_cfg(head="dpt", num_class=5, image_size=DPT_CROP):
    """The AllSpark bottleneck on the tiny DINOv2, with the DPT head (or the SegFormer head)."""
    width = TINY_DINOV2["kwargs"]["embed_dim"]
    kwargs = {"num_class": num_class, "in_planes": [width] * 4, "image_size": image_size, "warmup_epoch": 1,
              "embedding_dim": 32, "head": head}
    if head == "dpt":
        kwargs.update(copy.deepcopy(TINY_DPT_HEAD))
    return {"backbone": copy.deepcopy(TINY_DINOV2), "decoder": {"type": "allspark", "kwargs": kwargs}}


TINY_DINOV3 = {"type": "dinov3", "kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 2, "layers": [0, 1, 2, 3]}}
DINOV3_CROP = 64  # a multiple of DINOv3's patch 16


def tiny_dinov3_cfg(num_class=5, decoder="dpt", image_size=DINOV3_CROP):
    """A 4-block DINOv3-layout ViT of width 48 (patch 16, storage tokens, RoPE, the k-masked qkv bias) with
    UniMatch V2's DPT head (``decoder='dpt'``) or the AllSpark bottleneck and the DPT head (``'allspark'``)."""
    cfg = tiny_dinov2_allspark_cfg("dpt", num_class, image_size) if decoder == "allspark" else tiny_dpt_cfg(num_class)
    cfg["backbone"] = copy.deepcopy(TINY_DINOV3)
    return cfg


def golden_allspark_model_cfg(case, attention="fused"):
    """The model section of the AllSpark golden file's ``case`` (allspark_ref_small.pt), every size from it."""
    return {
        "backbone": {"type": "mit", "kwargs": {"embed_dims": case["dims"], "num_heads": case["bb_heads"],
                                               "depths": case["depths"], "drop_path_rate": 0.0}},
        "decoder": {"type": "allspark", "kwargs": {"num_heads": case["heads"], "num_class": case["ncls"],
                                                   "in_planes": case["dims"], "image_size": case["crop"],
                                                   "warmup_epoch": 1, "embedding_dim": case["emb"],
                                                   "attention": attention}},
    }


def golden_allspark_model(golden, attention="fused"):
    """The AllSpark golden file's model with its weights, dropout off."""
    from allspark.models import build_model

    model = zero_dropout(build_model(golden_allspark_model_cfg(golden["case"], attention)))
    model.load_state_dict(golden["state_dict"])
    return model


def zero_dropout(model):
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0
    return model


# ---- configs and data on disk ---------------------------------------------------------------------------

def config_dict(data=None, method="allspark", **changes):
    """A training config for the tiny model of ``method`` (raw, as a YAML file holds it)."""
    if method == "unimatch_v2":
        model = tiny_dpt_cfg()
    elif method in ("semi", "sup"):
        model = tiny_model_cfg(decoder="segformer")
    else:
        model = tiny_model_cfg()
    root = str(data.root) if data is not None else "."
    cfg = {"method": method, "dataset": "toy", "data_root": root, "val_id_path": data.val if data else "val.txt",
           "nclass": 5, "crop_size": CROP, "epochs": 2, "batch_size": 2, "lr": 0.005, "lr_multi": 10.0,
           "criterion": {"name": "CELoss", "kwargs": {"ignore_index": 255}}, "num_workers": 0, "model": model}
    if method == "unimatch_v2":
        cfg.update(crop_size=DPT_CROP, lr=0.0002, conf_thresh=0.5)
    cfg.update(changes)
    return cfg


def training_config(data=None, method="allspark", **changes):
    """:func:`config_dict`, checked and filled as the trainer gets it."""
    from allspark.config import make_training_config

    return make_training_config(config_dict(data, method, **changes))


def write_config(path, data, method="allspark", **changes):
    """:func:`config_dict` written as YAML to ``path``; returns the path."""
    Path(path).write_text(yaml.safe_dump(config_dict(data, method, **changes)))
    return Path(path)


def make_toy(root, **counts):
    """The toy dataset under ``root`` (small images) -> SimpleNamespace(root, labeled, unlabeled, val)."""
    from allspark.data.toy import make_toy_dataset

    kwargs = dict(seed=1, num_train=20, num_val=4, num_labeled=4, min_size=64, max_size=80)
    lists = make_toy_dataset(root, **{**kwargs, **counts})
    return SimpleNamespace(root=Path(root), **{k: str(v) for k, v in lists.items()})


# Dataset trees in the benchmarks' layouts: (classes, palette masks, (image, mask) of sample i)
LAYOUTS = {
    "pascal": (21, True, lambda i: (f"JPEGImages/2007_{i:06d}.jpg", f"SegmentationClass/2007_{i:06d}.png")),
    "cityscapes": (19, False, lambda i: (f"leftImg8bit/train/jena/jena_{i:06d}_000019_leftImg8bit.png",
                                         f"gtFine/train/jena/jena_{i:06d}_000019_gtFine_labelTrainIds.png")),
    "coco": (81, False, lambda i: (f"train2017/{i:012d}.jpg", f"masks/{i:012d}.png")),
}


def write_sample(root, image_rel, mask_rel, w, h, num_classes, rng, palette=False, mask_size=None):
    """A random image (never black: padding stays recognisable) and a mask of class indices with a few 255."""
    import numpy as np
    from PIL import Image

    from allspark.data import palette_of

    img = rng.integers(10, 256, size=(h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, num_classes, size=mask_size[::-1] if mask_size else (h, w), dtype=np.uint8)
    mask[0, :3] = 255
    (root / image_rel).parent.mkdir(parents=True, exist_ok=True)
    (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / image_rel)
    m = Image.fromarray(mask, mode="P" if palette else "L")
    if palette:
        m.putpalette(palette_of("pascal"))
    m.save(root / mask_rel)
    return mask


def make_tree(tmp_path, layout, n=3, w=40, h=30):
    """``n`` samples in ``layout`` under tmp_path/layout and their list -> (root, list path, masks)."""
    import numpy as np

    num_classes, palette, names = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    root = tmp_path / layout
    lines, masks = [], []
    for i in range(n):
        image_rel, mask_rel = names(i)
        masks.append(write_sample(root, image_rel, mask_rel, w, h, num_classes, rng, palette))
        lines.append(f"{image_rel} {mask_rel}\n")
    (tmp_path / f"{layout}.txt").write_text("".join(lines))
    return root, tmp_path / f"{layout}.txt", masks


# ---- processes ------------------------------------------------------------------------------------------

def free_port():
    """A TCP port that is free now, below the kernel's ephemeral range where possible (connections that run
    at the same time draw from that range)."""
    for _ in range(200):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 12000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    """The environment without launcher variables, one thread per process, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_",
                                                                     "SLURM_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def torchrun(*args, processes=2):
    """The arguments of ``python -m torch.distributed.run`` for ``processes`` local processes."""
    return ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", *args]


def run(args, **kwargs):
    """``python args...`` in the project root, to the end (5 minutes at most); stdout and stderr captured."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=kwargs.pop("env", clean_env()),
                          capture_output=True, text=True, timeout=300, **kwargs)


def start(args, **kwargs):
    """``python args...`` in the project root, started; stderr into stdout."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=kwargs.pop("env", clean_env()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op threads set to ``n`` inside the block (a run compared bitwise with one in another
    process must use as many threads as it: the processes run with OMP_NUM_THREADS=1)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def call(entry, argv, threads=1):
    """The entry point ``entry`` ('train', 'eval' or 'predict': the module at the project root) run in this
    process on ``argv`` as its command would run (errors as one line and exit status 2), with ``threads``
    torch threads -> SimpleNamespace(status, log, value): the exit status, what it logged, what main returned."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(entry)
    out, status, value = io.StringIO(), 0, None
    with contextlib.redirect_stdout(out), torch_threads(threads), _project_logger_kept():
        try:
            value = module.cli([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code
    return SimpleNamespace(status=status, log=out.getvalue(), value=value)


@contextlib.contextmanager
def _project_logger_kept():
    """The 'allspark' logger as it was before the block (entry points configure it for their process)."""
    import logging

    logger = logging.getLogger("allspark")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def assert_same_run(a_path, b_path):
    """Two latest.pth files of whole runs hold the same model, EMA teacher, optimizer state and lr."""
    import torch

    a, b = (torch.load(p, weights_only=True) for p in (a_path, b_path))
    assert a["epoch"] == b["epoch"] and "interrupted" not in b
    assert set(a) == set(b)
    for entry in [e for e in ("model", "model_ema") if e in a]:
        assert set(a[entry]) == set(b[entry])
        for key, value in a[entry].items():
            assert torch.equal(value, b[entry][key]), (entry, key)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for idx, state in a["optimizer"]["state"].items():
        for key, value in state.items():  # SGD's momentum buffers, AdamW's step and moments
            assert torch.equal(value, b["optimizer"]["state"][idx][key]), (idx, key)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]


def train_args(cfg, data, save, *extra):
    return ["train.py", "--config", str(cfg), "--labeled-id-path", data.labeled, "--unlabeled-id-path", data.unlabeled,
            "--save-path", str(save), *extra]


def mious(log):
    import re

    return [float(v) for v in re.findall(r"MeanIoU: ([0-9.]+)", log)]


def wait_for_line(proc, text, timeout=120):
    """Read ``proc``'s output until a line holds ``text``; returns what was read."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never came: {''.join(seen)[-3000:]}")


def _proc_entries():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield entry


def children(pid):
    """Pids whose parent is ``pid``."""
    out = []
    for entry in _proc_entries():
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def rank_of(pid):
    env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    return int(next(v for v in env if v.startswith(b"RANK=")).split(b"=")[1])


def processes_with(text):
    """Pids of live processes whose command line holds ``text``."""
    out = []
    for entry in _proc_entries():
        try:
            if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                out.append(int(entry.name))
        except OSError:
            pass
    return out
