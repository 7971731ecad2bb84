"""Inference without ground truth (what predict.py runs): a checkpoint's predictions on a folder, a list
or some image files, written as palette PNGs of class indices, with optional overlays and raw scores."""
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..config import load_training_config, resolve_path
from ..data import IMAGE_EXTS, DataError, palette_of, read_list, read_rgb
from ..data.transforms import normalize
from .checkpoint import load_trained_model
from .dist import cleanup, setup_distributed
from .evaluate import class_scores
from .logger import setup_logger

__all__ = ["main", "collect_inputs", "write_prediction", "batches_of_equal_size"]

logger = logging.getLogger("allspark")


def collect_inputs(inputs: Sequence, root=None) -> List[Tuple[Path, str]]:
    """[(image path, output name without extension)] from ``inputs``: folders (scanned recursively, the
    name is the path inside the folder), split lists (``.txt``: ``<image> [<mask>]`` per line, relative to
    ``root``; the name is the image's path in the list) and image files (the name is the file's stem)."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            if not images:
                raise DataError(f"no image ({', '.join(IMAGE_EXTS)}) under {path}")
            found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in images]
        elif path.suffix.lower() == ".txt":
            base = Path(root) if root is not None else path.parent
            found += [(base / s.image, Path(s.image).with_suffix("").as_posix())
                      for s in read_list(path, image_only=True)]
        elif path.is_file():
            found.append((path, path.stem))
        else:
            raise DataError(f"input not found: {path} (expected a folder, a .txt list or an image file)")
    missing = [str(p) for p, _ in found if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} listed image(s) not found, e.g. {missing[:5]}")
    return found


def write_prediction(out_dir, name: str, pred: np.ndarray, palette: list, image: Optional[Image.Image] = None,
                     scores: Optional[np.ndarray] = None) -> None:
    """``out_dir/<name>.png``: the class map (H, W) as a palette PNG (pixel values are class indices);
    with ``image`` (a PIL RGB image) ``out_dir/overlay/<name>.jpg``, the colours over the image at half
    opacity; with ``scores`` (K, H, W) ``out_dir/logits/<name>.npy`` (float32)."""
    out_dir = Path(out_dir)
    target = out_dir / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(pred.astype(np.uint8), mode="P")
    im.putpalette(palette)
    im.save(target)
    if image is not None:
        overlay = out_dir / "overlay" / f"{name}.jpg"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        Image.blend(image.convert("RGB"), im.convert("RGB"), 0.5).save(overlay, quality=90)
    if scores is not None:
        raw = out_dir / "logits" / f"{name}.npy"
        raw.parent.mkdir(parents=True, exist_ok=True)
        np.save(raw, scores.astype(np.float32))


def batches_of_equal_size(items, batch_size):
    """Consecutive items in batches of up to ``batch_size`` images of one size."""
    batch, size = [], None
    for path, name in items:
        image = read_rgb(path)
        if batch and (len(batch) == batch_size or image.size != size):
            yield batch
            batch = []
        batch.append((image, name))
        size = image.size
    if batch:
        yield batch


class _Progress:
    """A tqdm bar over the images on rank 0 (tqdm comes with timm's dependencies; without it, none)."""

    def __init__(self, total, enabled):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="predict", unit="img")

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def main(args):
    """Predict every input image of ``args`` with the checkpoint; returns the number written by this process."""
    env = setup_distributed(getattr(args, "port", None))
    setup_logger(env.rank)
    try:
        cfg = load_training_config(args.config, require_method=False, overrides=getattr(args, "opts", None))
        mode = args.mode or cfg["eval_mode"]
        if args.batch_size < 1:
            raise DataError(f"--batch-size must be positive, got {args.batch_size}")
        items = collect_inputs(args.input, resolve_path(args.root) if args.root else resolve_path(cfg["data_root"]))
        shard = items[env.rank::env.world_size]
        entry = "model_ema" if args.ema else "model"
        model, ckpt = load_trained_model(cfg, args.checkpoint, env.device, entry, args.config)
        model.eval()
        palette = palette_of(cfg["dataset"], cfg["nclass"], cfg["palette"])
        logger.info(f"predicting {len(items)} image(s) with {args.checkpoint} ({entry}, epoch {ckpt.get('epoch', '?')}), "
                    f"mode {mode}, batch size {args.batch_size}, {env.world_size} process(es) on {env.device} "
                    f"-> {args.output}")
        written = 0
        progress = _Progress(len(shard), env.is_main)
        for batch in batches_of_equal_size(shard, args.batch_size):  # images are read batch by batch
            img = torch.stack([normalize(image) for image, _ in batch]).to(env.device)
            scores = class_scores(model, img, cfg, mode)
            preds = scores.argmax(dim=1).cpu().numpy()
            for (image, name), pred, score in zip(batch, preds, scores):
                # (center_crop predicts the central crop only: no overlay on the whole image)
                overlay = image if args.overlay and pred.shape == (image.size[1], image.size[0]) else None
                write_prediction(args.output, name, pred, palette, overlay, score.cpu().numpy() if args.logits else None)
                written += 1
            progress.update(len(batch))
        progress.close()
        logger.info(f"wrote {written} prediction(s) under {args.output}" + (" (this process)" if env.world_size > 1 else ""))
        return written
    finally:
        cleanup()
