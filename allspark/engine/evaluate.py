"""Evaluation shared by train.py and eval.py: whole-image, center-crop, sliding-window and
multi-scale + flip inference, with intersection / union counted on the device and summed over ranks."""
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import EVAL_MODES, IGNORE_INDEX
from ..models.resize import resize_bilinear
from .dist import all_reduce_sum
from .metrics import intersection_and_union, mean_iou

__all__ = ["class_scores", "predict", "sliding_window", "window_grid", "center_crop", "multiscale", "evaluate", "logits_at_any_size", "EVAL_MODES"]

def logits_at_any_size(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """``model(img)`` for an image of any size. A model that takes only multiples of
    ``model.input_multiple`` (patch encoders: 14 for DINOv2, 16 for DINOv3) gets the image resized bilinearly (align_corners True)
    to the nearest multiples (int(H / m + 0.5) * m) and its logits resized back the same way, as UniMatch
    V2's evaluation does; other models get the image as it is."""
    m = getattr(model, "input_multiple", None)
    h, w = img.shape[-2:]
    if not m or (h % m == 0 and w % m == 0):
        return model(img)
    size = (max(int(h / m + 0.5), 1) * m, max(int(w / m + 0.5), 1) * m)
    logits = model(F.interpolate(img, size=size, mode="bilinear", align_corners=True))
    return resize_bilinear(logits, (h, w), align_corners=True)


def _window_starts(length, window, stride, aligned, min_size=1):
    """Window starts along one side: every ``stride`` px, the last cut at the border (the AllSpark
    release) or, with ``aligned``, moved back so that it ends at the border (the UniMatch V2 release).
    A cut edge window shorter than ``min_size`` (the model cannot take it: the release fails there) is
    moved back to end at the border too, and dropped if that repeats a window."""
    if not aligned:
        starts = list(range(0, length, stride))
        if len(starts) > 1 and length - starts[-1] < min_size:
            shifted = max(length - window, 0)
            starts = starts[:-1] if shifted in starts else starts[:-1] + [shifted]
        return starts
    starts, pos = [], 0
    last = max(length - window, 0)
    while True:
        starts.append(pos)
        if pos >= last:
            return starts
        pos = min(pos + stride, last)


def window_grid(h, w, window, aligned=False, min_size=1):
    """The (row, col) starts of the sliding windows over an h x w image (stride int(2/3 window))."""
    stride = int(window * 2 / 3)
    return [(r, c) for r in _window_starts(h, window, stride, aligned, min_size)
            for c in _window_starts(w, window, stride, aligned, min_size)]


def sliding_window(model: nn.Module, img: torch.Tensor, window: int, num_classes: int,
                   aligned: bool = False) -> torch.Tensor:
    """Sliding-window inference: windows of ``window`` px, stride int(2/3 window), softmax probabilities
    summed. Edge windows are cut at the image border (the AllSpark release) or, with ``aligned``, shifted
    back inside it (the UniMatch V2 release); a cut edge window narrower than the model's
    ``min_input_size`` is shifted back too. img (B, 3, H, W) -> scores (B, num_classes, H, W)."""
    b, _, h, w = img.shape
    final = img.new_zeros(b, num_classes, h, w)
    for row, col in window_grid(h, w, window, aligned, getattr(model, "min_input_size", 1)):
        rows, cols = slice(row, min(h, row + window)), slice(col, min(w, col + window))
        final[:, :, rows, cols] += logits_at_any_size(model, img[:, :, rows, cols]).softmax(dim=1)
    return final


def center_crop(img, mask, size):
    """The central size x size window of image and mask (the release's center-crop evaluation;
    an image smaller than the crop is kept whole, where the release would index from the end)."""
    h, w = img.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return img[..., top:top + size, left:left + size], mask[..., top:top + size, left:left + size]


def multiscale(model: nn.Module, img: torch.Tensor, scales: Sequence[float], flip: bool) -> torch.Tensor:
    """Softmax probabilities averaged over rescaled (and horizontally flipped) copies, at the input size."""
    h, w = img.shape[-2:]
    total = 0
    for scale in scales:
        size = (max(int(h * scale + 0.5), 32), max(int(w * scale + 0.5), 32))
        x = F.interpolate(img, size=size, mode="bilinear", align_corners=False) if scale != 1 else img
        views = [(x, False), (x.flip(-1), True)] if flip else [(x, False)]
        for view, flipped in views:
            logits = logits_at_any_size(model, view)
            logits = logits.flip(-1) if flipped else logits
            total = total + resize_bilinear(logits, (h, w)).softmax(dim=1)
    return total


def class_scores(model: nn.Module, img: torch.Tensor, cfg: dict, mode: Optional[str] = None) -> torch.Tensor:
    """Per-class scores (B, K, H', W') of one batch under ``mode`` (default cfg['eval_mode']): logits for
    ``original`` and ``center_crop`` (H', W' the crop's), summed softmax probabilities for
    ``sliding_window`` and ``multiscale``. Their argmax is the prediction."""
    mode = mode or cfg["eval_mode"]
    if mode == "sliding_window":
        return sliding_window(model, img, cfg["crop_size"], cfg["nclass"], cfg["sliding_window_edges"] == "aligned")
    if mode == "multiscale":
        return multiscale(model, img, cfg["eval_scales"], cfg["eval_flip"])
    if mode == "center_crop":
        img, _ = center_crop(img, img[:, 0], cfg["crop_size"])
    return logits_at_any_size(model, img)


def predict(model: nn.Module, img: torch.Tensor, mask: torch.Tensor, cfg: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """Class map (B, H', W') and the matching mask for one validation batch under cfg['eval_mode']."""
    if cfg["eval_mode"] == "center_crop":
        _, mask = center_crop(img, mask, cfg["crop_size"])
    return class_scores(model, img, cfg).argmax(dim=1), mask


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, cfg: dict, device: torch.device,
             on_prediction: Optional[Callable] = None) -> Tuple[float, List[float]]:
    """Score ``model`` (a plain module, not DDP: shards may differ in length) on ``loader``'s shard and
    sum the counts over all processes. ``on_prediction(img, mask, pred, ids)`` is called per batch
    (visualisation). Returns (mIoU, [IoU per class]) in percent."""
    was_training = model.training
    model.eval()
    inter = torch.zeros(cfg["nclass"], dtype=torch.int64, device=device)
    union = torch.zeros_like(inter)
    for img, mask, ids in loader:
        img, mask = img.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        pred, mask = predict(model, img, mask, cfg)
        i, u, _ = intersection_and_union(pred, mask, cfg["nclass"], IGNORE_INDEX)
        inter += i
        union += u
        if on_prediction is not None:
            on_prediction(img, mask, pred, ids)
    all_reduce_sum(inter)
    all_reduce_sum(union)
    model.train(was_training)
    return mean_iou(inter, union)
