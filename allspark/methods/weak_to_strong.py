"""Weak-to-strong pseudo-labelling, written once for the methods that use it (UniMatch V2, and the
pseudo-labelling methods' options): the EMA teacher, the pseudo labels of a weak view, CutMix by the flipped
batch, and UniMatch's confidence-masked unlabeled loss."""
import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import IGNORE_INDEX

__all__ = ["EMATeacher", "PseudoLabels", "cutmix", "ema_ratio", "masked_unlabeled_loss", "pseudo_labels"]


def cutmix(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Inside ``box`` (B, H, W, 1 = mixed) image i takes the values of image B-1-i (the batch flipped),
    computed from the unmixed batch. x: (B, H, W) or (B, C, H, W)."""
    box = box.bool()
    if x.dim() == 4:
        box = box.unsqueeze(1)
    return torch.where(box, x.flip(0), x)


def ema_ratio(iters: int) -> float:
    """UniMatch V2's EMA ratio at global iteration ``iters``: 0 at iteration 0 (a copy), then 1 - 1 / (iters
    + 1) up to 0.996."""
    return min(1 - 1 / (iters + 1), 0.996)


def masked_unlabeled_loss(pixel_loss: torch.Tensor, conf: torch.Tensor, thresh: float,
                          counted: torch.Tensor) -> torch.Tensor:
    """UniMatch's unlabeled loss: the pixel losses (B, H, W) of the confident (conf >= thresh) counted
    pixels, summed and divided by the count of all counted pixels (unconfident ones count, with 0)."""
    return (pixel_loss * ((conf >= thresh) & counted)).sum() / counted.sum()


class EMATeacher:
    """A frozen copy of a model (bare, on its device, in eval mode) that follows it by an exponential
    moving average of every parameter and buffer, updated after each optimizer step."""

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, iters: int) -> None:
        """ema <- ema * r + model * (1 - r), r = :func:`ema_ratio` (iters), for parameters and buffers."""
        ratio = ema_ratio(iters)
        for p, e in zip(model.parameters(), self.module.parameters()):
            e.copy_(e * ratio + p.detach() * (1 - ratio))
        for b, e in zip(model.buffers(), self.module.buffers()):
            e.copy_(e * ratio + b.detach() * (1 - ratio))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's eval-mode logits (no grad)."""
        self.module.eval()
        return self.module(x).detach()


@dataclass
class PseudoLabels:
    """What the teacher says of an unlabeled batch, pixel by pixel, and which pixels count in the loss.

    ``logits`` (B, K, H, W) the teacher's; ``labels`` (B, H, W) their argmax; ``conf`` (B, H, W) the largest
    softmax probability (None where no confidence threshold is used); ``counted`` (B, H, W) bool, the
    pixels the unlabeled loss counts (not padded, or all of them)."""
    logits: torch.Tensor
    labels: torch.Tensor
    conf: Optional[torch.Tensor]
    counted: torch.Tensor

    def cutmix(self, box: torch.Tensor) -> "PseudoLabels":
        """The same pseudo labels laid out as a view CutMixed with ``box`` is (:func:`cutmix`)."""
        return PseudoLabels(cutmix(self.logits, box), cutmix(self.labels, box),
                            None if self.conf is None else cutmix(self.conf, box), cutmix(self.counted, box))

    def confident_share(self, thresh: float) -> torch.Tensor:
        """The share of the counted pixels whose confidence reaches ``thresh`` (UniMatch's ``mask_ratio``)."""
        return ((self.conf >= thresh) & self.counted).sum() / self.counted.sum()

    def loss(self, pred: torch.Tensor, thresh: float) -> torch.Tensor:
        """UniMatch's confidence-masked cross-entropy of ``pred`` (B, K, H, W) against the labels
        (:func:`masked_unlabeled_loss`)."""
        pixel = F.cross_entropy(pred, self.labels, ignore_index=IGNORE_INDEX, reduction="none")
        return masked_unlabeled_loss(pixel, self.conf, thresh, self.counted)


@torch.no_grad()
def pseudo_labels(logits: torch.Tensor, counted: torch.Tensor, with_conf: bool) -> PseudoLabels:
    """:class:`PseudoLabels` from a teacher's ``logits`` (B, K, H, W): argmax labels and, ``with_conf``,
    the max-softmax confidences."""
    conf = logits.softmax(dim=1).max(dim=1)[0] if with_conf else None
    return PseudoLabels(logits, logits.argmax(dim=1), conf, counted)
