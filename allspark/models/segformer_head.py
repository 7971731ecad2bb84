"""SegFormer's all-MLP decoder head, with the release's module names.

The release built ``linear_fuse`` with mmcv's ``ConvModule``; :class:`ConvBNReLU` is the same block
(1x1 conv without bias -> BatchNorm -> ReLU) with the same sub-module names (``conv``, ``bn``,
``activate``), so state dicts load unchanged without mmcv.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .resize import resize_bilinear

__all__ = ["ConvBNReLU", "MLP", "SegFormerHead", "SegFormerDecoder", "folded_segformer_head"]


class ConvBNReLU(nn.Sequential):
    """mmcv ``ConvModule(in, out, kernel_size, norm_cfg=BN)`` equivalent: conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        # mmcv's ConvModule initialises the conv with Kaiming normal (fan_out, ReLU) and the BN to 1 / 0.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class MLP(nn.Module):
    """Linear projection over channels: (B, C_in, H, W) -> (B, H * W, C_out)."""

    def __init__(self, input_dim, embed_dim):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))


class SegFormerHead(nn.Module):
    """All-MLP head. ``forward([c1, c2, c3, c4])`` with c_i (B, in_channels[i], H_i, W_i) returns logits
    (B, num_class, H_1, W_1): every map projected to ``embedding_dim`` (``linear_c*``), c2..c4 resized
    bilinearly to c1's size, concatenated as [c4, c3, c2, c1], fused (``linear_fuse``: 1x1 conv, BN, ReLU),
    dropout, 1x1 classifier (``linear_pred``). With ``folded`` (the default) the same function runs through
    :func:`folded_segformer_head`, which needs a fraction of the memory and time. (The module names are the
    release's, so its checkpoints load unchanged.)"""

    def __init__(self, in_channels, embedding_dim, num_class, dropout=0.1, folded=True):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c4 = MLP(c4, embedding_dim)
        self.linear_c3 = MLP(c3, embedding_dim)
        self.linear_c2 = MLP(c2, embedding_dim)
        self.linear_c1 = MLP(c1, embedding_dim)
        self.linear_fuse = ConvBNReLU(embedding_dim * 4, embedding_dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embedding_dim, num_class, kernel_size=1)
        self.folded = folded

    def forward(self, feats):
        if self.folded:
            return folded_segformer_head(self, feats)
        c1, c2, c3, c4 = feats
        n, _, h, w = c1.shape
        projected = []
        for feat, mlp in ((c4, self.linear_c4), (c3, self.linear_c3), (c2, self.linear_c2), (c1, self.linear_c1)):
            x = mlp(feat).transpose(1, 2).reshape(n, -1, *feat.shape[-2:])
            projected.append(resize_bilinear(x, (h, w)) if feat is not c1 else x)
        x = self.linear_fuse(torch.cat(projected, dim=1))
        return self.linear_pred(self.dropout(x))


def folded_segformer_head(head: SegFormerHead, feats):
    """:class:`SegFormerHead`'s function with the projections folded into the fuse convolution.

    The 1x1 fuse conv over the concatenation [c4, c3, c2, c1] is a sum of four blocks B_i, and bilinear
    resizing is linear per channel with weights summing to 1, so B_i (L_i x + b_i) is computed first, as one
    linear map (B_i L_i, B_i b_i), at the map's own size, and resized after; BatchNorm, ReLU and dropout then
    act on the sum as they act on the conv's output. The same function with its sums in another order (the
    plain head's results to rounding): it saves the 4 x embedding_dim concatenation at stride 4 and three
    quarters of the fuse conv's work. The classifier is one matrix product. It assumes what the head is built
    with: a bias-free 1x1 fuse conv followed by BatchNorm and ReLU, and a 1x1 classifier with a bias."""
    fuse, pred = head.linear_fuse.conv, head.linear_pred
    assert fuse.kernel_size == (1, 1) and fuse.bias is None and fuse.groups == 1 and fuse.stride == (1, 1), fuse
    assert pred.kernel_size == (1, 1) and pred.groups == 1 and pred.bias is not None, pred
    c1 = feats[0]
    n, _, H, W = c1.shape
    embed = head.linear_c1.proj.out_features
    blocks = fuse.weight.flatten(1).split(embed, dim=1)
    fused = None
    for feat, mlp, block in zip(reversed(feats), (head.linear_c4, head.linear_c3, head.linear_c2, head.linear_c1),
                                blocks):
        _, _, h, w = feat.shape
        x = F.linear(feat.flatten(2).transpose(1, 2), block @ mlp.proj.weight, block @ mlp.proj.bias)
        # (n, embed, h, w) as a channels-last view: on the CPU, bilinear resizing (forward + backward) of a
        # batch of two or more images is faster in that layout than of contiguous maps
        # (resize_bilinear makes a single image contiguous)
        x = x.transpose(1, 2).view(n, -1, h, w)
        if (h, w) != (H, W):
            x = resize_bilinear(x, (H, W))
        fused = x if fused is None else fused + x
    x = head.dropout(head.linear_fuse.activate(head.linear_fuse.bn(fused)))
    # the classifier as (K, embed) @ (n, embed, H W), which matmul folds into one product: contiguous logits, as
    # the release's (the loss would copy channels-last ones), and the weight gradient in the parameter's layout.
    # (A baddbmm of the expanded weight is slower forward + backward on the CPU, and torch 2.2's compiler gets
    # its gradients wrong.) The bias is added in place: no second logits-sized tensor, and under autocast the
    # logits stay 16-bit.
    logits = torch.matmul(pred.weight.flatten(1), x.flatten(2)).add_(pred.bias[:, None])
    return logits.view(n, -1, H, W)


class SegFormerDecoder(nn.Module):
    """Decoder type ``segformer`` (the release's ``model.semseg.semidec_base.SemiDecoder``, used by the
    supervised and plain pseudo-labelling baselines): the SegFormer head alone on the four stage maps.

    ``num_heads``, ``image_size`` and ``warmup_epoch`` are accepted and unused, so that the release's
    baseline configs, which share the AllSpark decoder's keywords, build unchanged.
    """

    def __init__(self, num_class, in_planes, embedding_dim=768, num_heads=None, image_size=None, warmup_epoch=None):
        super().__init__()
        self.decoder = SegFormerHead(in_planes, embedding_dim, num_class)  # (the release's module name)

    def forward(self, feats, pseudo_logits=None, use_memory=False):
        if use_memory:
            raise ValueError("use_memory=True needs the 'allspark' decoder; this model has the 'segformer' head only")
        return self.decoder(feats)
