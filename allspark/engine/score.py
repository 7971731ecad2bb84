"""Score a checkpoint on a config's validation list (what eval.py runs), optionally writing
image | ground truth | prediction panels in the dataset's palette."""
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import load_training_config, resolve_path
from ..data import class_names, palette_of
from ..data.check import preflight
from ..data.transforms import MEAN, STD
from .checkpoint import load_trained_model
from .dist import cleanup, setup_distributed
from .evaluate import evaluate
from .loaders import build_val_loader, shutdown_loaders
from .logger import format_iou_table, setup_logger

__all__ = ["main", "Visualiser"]

logger = logging.getLogger("allspark")


class Visualiser:
    """Writes one PNG per validation image: the image, its ground truth and the prediction side by side."""

    def __init__(self, out_dir, dataset, num_classes, colours=None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.palette = palette_of(dataset, num_classes, colours)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def _colour(self, labels):
        im = Image.fromarray(labels.cpu().numpy().astype(np.uint8), mode="P")
        im.putpalette(self.palette)
        return im.convert("RGB")

    def __call__(self, img, mask, pred, ids):
        for b, sample_id in enumerate(ids):
            h, w = pred.shape[-2:]
            top, left = (img.shape[-2] - h) // 2, (img.shape[-1] - w) // 2  # center-crop mode shrinks pred
            rgb = img[b, :, top:top + h, left:left + w].cpu() * self.std + self.mean
            rgb = Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
            panel = Image.new("RGB", (3 * w, h))
            for k, part in enumerate((rgb, self._colour(mask[b]), self._colour(pred[b]))):
                panel.paste(part, (k * w, 0))
            panel.save(self.out_dir / (Path(sample_id).stem + ".png"))


def main(args):
    """Score ``args.checkpoint`` on the config's val list; returns (mIoU, per-class IoU)."""
    env = setup_distributed(getattr(args, "port", None))
    setup_logger(env.rank)
    val = None
    try:
        cfg = load_training_config(args.config, require_method=False, overrides=getattr(args, "opts", None))
        if args.mode:
            cfg["eval_mode"] = args.mode
        preflight(resolve_path(cfg["data_root"]), [(resolve_path(cfg["val_id_path"]), True)],
                  hint=f" (data_root of {args.config}; see docs/datasets.md)")
        entry = "model_ema" if getattr(args, "ema", False) else "model"
        model, ckpt = load_trained_model(cfg, args.checkpoint, env.device, entry, args.config)
        logger.info(f"checkpoint {args.checkpoint} ({entry}): epoch {ckpt.get('epoch', '?')}, eval mode {cfg['eval_mode']}, "
                    f"world size {env.world_size}, device {env.device}")
        val = build_val_loader(cfg, env)
        visualise = Visualiser(args.save_vis, cfg["dataset"], cfg["nclass"], cfg["palette"]) if args.save_vis else None
        miou, ious = evaluate(model, val, cfg, env.device, on_prediction=visualise)
        logger.info(format_iou_table(class_names(cfg), ious, miou, cfg["eval_mode"]))
        return miou, ious
    finally:
        if val is not None:
            shutdown_loaders([val])
        cleanup()
