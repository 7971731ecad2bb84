"""Bilinear resizing of feature maps and logits, in the memory layout that is fast for it."""
import torch.nn.functional as F

__all__ = ["resize_bilinear"]


def resize_bilinear(x, size, align_corners=False):
    """``F.interpolate(x, size, mode='bilinear')`` of x (B, C, h, w) -> (B, C, *size), the same values.

    A batch of one image held channels-last (the SegFormer head's projections and the classifier's output
    are channels-last views) takes a slow copy path inside ``upsample_bilinear2d`` on the CPU, slower than
    making it contiguous first. From two images on, channels-last is the faster layout, so only a batch of
    one is made contiguous."""
    if x.shape[0] == 1 and not x.is_contiguous():
        x = x.contiguous()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
