"""Losses: cross-entropy and the release's online hard example mining (OHEM) cross-entropy."""
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import IGNORE_INDEX, ConfigError

__all__ = ["OhemCrossEntropy", "build_criterion"]

logger = logging.getLogger("allspark")


class OhemCrossEntropy(nn.Module):
    """The release's ``ProbOhemCrossEntropy2d``: cross-entropy over the pixels whose probability of
    the true class is at most ``thresh``, raised to the ``min_kept``-th smallest probability when
    fewer pixels than that would remain; all valid pixels when fewer than ``min_kept`` are valid, or
    when ``min_kept`` is 0 (the release mines only with a positive min_kept).

    forward(pred (B, K, H, W) logits, target (B, H, W) int64) -> scalar mean over the kept pixels."""

    def __init__(self, ignore_index=IGNORE_INDEX, thresh=0.7, min_kept=100000):
        super().__init__()
        self.ignore_index = ignore_index
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self._warned = False

    def forward(self, pred, target):
        b, c, h, w = pred.shape
        if 0 < self.min_kept and target.numel() < self.min_kept and not self._warned:
            # (fewer valid pixels than min_kept in a larger batch is not reported: counting them would sync)
            self._warned = True
            logger.warning(f"OHEM: min_kept {self.min_kept} exceeds the {target.numel()} pixels of a batch "
                           f"({b} x {h} x {w}): no pixel is mined, the loss is plain cross-entropy over the valid "
                           f"pixels (as the release computes it). Lower criterion.kwargs.min_kept (e.g. --opts "
                           f"criterion.kwargs.min_kept={max(1, target.numel() // 4)}) to mine at this crop / batch")
        target = target.reshape(-1)
        keep = target != self.ignore_index
        if self.min_kept > 0:  # the release mines only with min_kept > 0
            with torch.no_grad():  # its branches as tensor selections: no host synchronisation
                prob = F.softmax(pred, dim=1).transpose(0, 1).reshape(c, -1)
                mask_prob = prob.gather(0, (target * keep).unsqueeze(0)).squeeze(0).masked_fill(~keep, 1.0)
                # the min_kept-th smallest probability (the release sorts them all) if above thresh
                kth = mask_prob.kthvalue(min(mask_prob.numel(), self.min_kept)).values
                threshold = torch.clamp(kth, min=self.thresh)
                mine = keep.sum() >= self.min_kept  # else every valid pixel is kept
                keep = keep & ((mask_prob <= threshold) | ~mine)
        target = target.masked_fill(~keep, self.ignore_index).view(b, h, w)
        return F.cross_entropy(pred, target, ignore_index=self.ignore_index)


def build_criterion(spec):
    """``{name: CELoss | OHEM, kwargs: {...}}`` from a config -> loss module."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"criterion must be a mapping with 'name' and 'kwargs', got {spec!r}")
    kwargs = dict(spec.get("kwargs") or {})
    builders = {"CELoss": (nn.CrossEntropyLoss, {"ignore_index"}),
                "OHEM": (OhemCrossEntropy, {"ignore_index", "thresh", "min_kept"})}
    if spec["name"] not in builders:
        raise ConfigError(f"criterion.name: unknown loss {spec['name']!r}; valid: {sorted(builders)}")
    cls, accepted = builders[spec["name"]]
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"criterion.kwargs: unknown keyword(s) {unknown} for {spec['name']}; valid: {sorted(accepted)}")
    return cls(**kwargs)
