"""Bilinear resizing of feature maps and logits, in the memory layout that is fast for it."""
import torch.nn.functional as F

__all__ = ["resize_bilinear"]


def resize_bilinear(x, size, align_corners=False):
    """``F.interpolate(x, size, mode='bilinear')`` of x (B, C, h, w) -> (B, C, *size), the same values.

    A batch of one image held channels-last (the SegFormer head's projections and the classifier's output
    are channels-last views) takes a slow copy path inside ``upsample_bilinear2d`` on the CPU: measured on
    the 2-core CPU, 768 channels 17 x 17 -> 129 x 129: 197 ms channels-last vs 35 ms made contiguous first;
    21 channels 129 -> 513: 33 vs 8 ms. From two images on, channels-last is the faster one (batch 2: 42 vs
    71 ms; batch 4: 66 vs 123 ms), so only a batch of one is made contiguous."""
    if x.shape[0] == 1 and not x.is_contiguous():
        x = x.contiguous()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
