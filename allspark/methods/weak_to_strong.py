"""Parts of weak-to-strong pseudo-labelling shared by methods (UniMatch V2, AllSpark's options): the EMA
teacher, CutMix by the flipped batch, and the confidence-masked unlabeled loss."""
import copy

import torch

__all__ = ["EMATeacher", "cutmix", "ema_ratio", "masked_unlabeled_loss"]


def cutmix(x, box):
    """Inside ``box`` (B, H, W, 1 = mixed) image i takes the values of image B-1-i (the batch flipped),
    computed from the unmixed batch. x: (B, H, W) or (B, C, H, W)."""
    box = box.bool()
    if x.dim() == 4:
        box = box.unsqueeze(1)
    return torch.where(box, x.flip(0), x)


def ema_ratio(iters):
    """UniMatch V2's EMA ratio at global iteration ``iters``: 0 at iteration 0 (a copy), then 1 - 1 / (iters
    + 1) up to 0.996."""
    return min(1 - 1 / (iters + 1), 0.996)


def masked_unlabeled_loss(pixel_loss, conf, thresh, valid):
    """UniMatch's unlabeled loss: the pixel losses (B, H, W) of the confident (conf >= thresh) valid
    pixels, summed and divided by the count of all valid pixels (unconfident ones count, with 0)."""
    return (pixel_loss * ((conf >= thresh) & valid)).sum() / valid.sum()


class EMATeacher:
    """A frozen copy of a model (bare, on its device, in eval mode) that follows it by an exponential
    moving average of every parameter and buffer, updated after each optimizer step."""

    def __init__(self, model):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model, iters):
        """ema <- ema * r + model * (1 - r), r = :func:`ema_ratio` (iters), for parameters and buffers."""
        ratio = ema_ratio(iters)
        for p, e in zip(model.parameters(), self.module.parameters()):
            e.copy_(e * ratio + p.detach() * (1 - ratio))
        for b, e in zip(model.buffers(), self.module.buffers()):
            e.copy_(e * ratio + b.detach() * (1 - ratio))

    @torch.no_grad()
    def predict(self, x):
        """The teacher's eval-mode logits (no grad)."""
        self.module.eval()
        return self.module(x).detach()
