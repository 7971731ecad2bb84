"""Evaluation shared by train.py and eval.py: whole-image, center-crop, sliding-window and
multi-scale + flip inference, with intersection / union counted on the device and summed over ranks."""
import torch
import torch.nn.functional as F

from .dist import all_reduce_sum
from .metrics import intersection_and_union, mean_iou

__all__ = ["predict", "sliding_window", "center_crop", "multiscale", "evaluate", "EVAL_MODES"]

EVAL_MODES = ("original", "center_crop", "sliding_window", "multiscale")


def sliding_window(model, img, window, num_classes):
    """The release's sliding window: windows of ``window`` px (cut at the image border), stride
    int(2/3 window), softmax probabilities summed. img (B, 3, H, W) -> scores (B, num_classes, H, W)."""
    b, _, h, w = img.shape
    stride = int(window * 2 / 3)
    final = img.new_zeros(b, num_classes, h, w)
    row = 0
    while row < h:
        col = 0
        while col < w:
            rows, cols = slice(row, min(h, row + window)), slice(col, min(w, col + window))
            final[:, :, rows, cols] += model(img[:, :, rows, cols]).softmax(dim=1)
            col += stride
        row += stride
    return final


def center_crop(img, mask, size):
    """The central size x size window of image and mask (the release's center-crop evaluation;
    an image smaller than the crop is kept whole, where the release would index from the end)."""
    h, w = img.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return img[..., top:top + size, left:left + size], mask[..., top:top + size, left:left + size]


def multiscale(model, img, scales, flip):
    """Softmax probabilities averaged over rescaled (and horizontally flipped) copies, at the input size."""
    h, w = img.shape[-2:]
    total = 0
    for scale in scales:
        size = (max(int(h * scale + 0.5), 32), max(int(w * scale + 0.5), 32))
        x = F.interpolate(img, size=size, mode="bilinear", align_corners=False) if scale != 1 else img
        views = [(x, False), (x.flip(-1), True)] if flip else [(x, False)]
        for view, flipped in views:
            logits = model(view)
            logits = logits.flip(-1) if flipped else logits
            total = total + F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(dim=1)
    return total


def predict(model, img, mask, cfg):
    """Class map (B, H', W') and the matching mask for one validation batch under cfg['eval_mode']."""
    mode = cfg["eval_mode"]
    if mode == "sliding_window":
        return sliding_window(model, img, cfg["crop_size"], cfg["nclass"]).argmax(dim=1), mask
    if mode == "center_crop":
        img, mask = center_crop(img, mask, cfg["crop_size"])
    if mode == "multiscale":
        return multiscale(model, img, cfg["eval_scales"], cfg["eval_flip"]).argmax(dim=1), mask
    return model(img).argmax(dim=1), mask


@torch.no_grad()
def evaluate(model, loader, cfg, device, on_prediction=None):
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
        i, u, _ = intersection_and_union(pred, mask, cfg["nclass"], 255)
        inter += i
        union += u
        if on_prediction is not None:
            on_prediction(img, mask, pred, ids)
    all_reduce_sum(inter)
    all_reduce_sum(union)
    model.train(was_training)
    return mean_iou(inter, union)
