"""The DPT head and UniMatch V2's segmentation model (encoder + DPT head, complementary dropout).

Module names are the release's (``head.projects``, ``head.resize_layers``, ``head.scratch.layer{1..4}_rn``,
``head.scratch.refinenet{1..4}.{out_conv, resConfUnit{1,2}.conv{1,2}}``, ``head.scratch.output_conv``), so
its checkpoints load unchanged. ``head.scratch.refinenet4.resConfUnit1`` exists but is never used (the
deepest fusion block has one input), as in the release.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DPTHead", "DPT", "complementary_dropout_mask", "tokens_to_maps", "ResidualConvUnit", "FeatureFusionBlock"]


class ResidualConvUnit(nn.Module):
    """x + conv2(act(conv1(act(x)))) with 3x3 convs (bias) and optional BatchNorm after each conv."""

    def __init__(self, features, activation, use_bn):
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)
        self.activation = activation

    def forward(self, x):
        out = self.conv1(self.activation(x))
        if self.use_bn:
            out = self.bn1(out)
        out = self.conv2(self.activation(out))
        if self.use_bn:
            out = self.bn2(out)
        return out + x


class FeatureFusionBlock(nn.Module):
    """out_conv(resize(RCU2(x0 [+ RCU1(x1)]))): bilinear (align_corners True) to ``size``, or x2 without."""

    def __init__(self, features, use_bn):
        super().__init__()
        activation = nn.ReLU(False)  # one instance shared by both units, as in the release
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features, activation, use_bn)
        self.resConfUnit2 = ResidualConvUnit(features, activation, use_bn)

    def forward(self, x, skip=None, size=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        resize = {"size": tuple(size)} if size is not None else {"scale_factor": 2}
        x = F.interpolate(x, **resize, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Decoder type ``dpt``. ``forward(tokens, h, w)`` with four (B, h * w, in_channels) token maps
    returns logits (B, num_class, 8 h, 8 w): each map projected (1x1) to ``out_channels[i]`` and resized
    to strides 4, 8, 16, 32 of the token grid (x4, x2, x1, /2), brought to ``features`` channels by a
    3x3 conv, fused from the deepest up (each fusion doubles the size), then 3x3 conv, ReLU, 1x1 classifier.
    ``in_channels`` is the encoder's width (the builder passes it)."""

    has_unused_parameters = True  # scratch.refinenet4.resConfUnit1 gets no gradient (DDP must be told)

    def __init__(self, num_class, in_channels, features=256, use_bn=False, out_channels=(256, 512, 1024, 1024)):
        super().__init__()
        out_channels = [int(c) for c in out_channels]
        if len(out_channels) != 4:
            raise ValueError(f"DPT head: out_channels needs 4 entries, got {out_channels}")
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, c, 1) for c in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features, use_bn))
        self.scratch.output_conv = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(True),
                                                 nn.Conv2d(features, num_class, 1))


    def forward(self, tokens, h, w):
        return self.decode(tokens_to_maps(tokens, h, w))

    def decode(self, maps):
        """The head on four (B, in_channels, h, w) maps of the token grid -> (B, num_class, 8 h, 8 w)."""
        s = self.scratch
        # each map projected and resized to its stride (the release's layer_1 .. layer_4), then to `features`
        resized = [resize(project(x)) for x, project, resize in zip(maps, self.projects, self.resize_layers)]
        l1, l2, l3, l4 = [getattr(s, f"layer{i}_rn")(x) for i, x in enumerate(resized, start=1)]
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        return s.output_conv(path)


def tokens_to_maps(tokens, h, w):
    """(B, h * w, D) token maps (token n at row n // w, column n % w) -> contiguous (B, D, h, w) maps.

    The release reshaped a transposed view (a channels-last map); made contiguous, every convolution of
    the head returns its weight gradient in the parameter's layout, the one DDP's buckets have."""
    return [t.transpose(1, 2).contiguous().view(t.shape[0], t.shape[-1], h, w) for t in tokens]


def complementary_dropout_mask(batch, dim, generator=None):
    """UniMatch V2's complementary channel dropout for ``batch`` image pairs: (2 batch, dim) float32.

    A channel mask m1 = 2 * Bernoulli(0.5) per pair, m2 = 2 - m1 for its partner (the two sum to 2), and
    int(batch / 2) random pairs exempt (both masks 1). Rows 0..batch-1 are for the first view, the rest
    for the second. Drawn on the CPU (from ``generator``, or torch's global generator) as the release
    draws it, so a seeded run draws the same on any device."""
    m1 = torch.bernoulli(torch.full((batch, dim), 0.5), generator=generator) * 2.0
    m2 = 2.0 - m1
    kept = torch.randperm(batch, generator=generator)[:int(batch * 0.5)]
    m1[kept] = 1.0
    m2[kept] = 1.0
    return torch.cat([m1, m2])


class DPT(nn.Module):
    """UniMatch V2's model: a patch encoder (``backbone``, patch p: 14 for DINOv2, 16 for DINOv3) returning four
    token maps, the DPT ``head``, and a bilinear resize (align_corners True) of the logits to (p h, p w).

    ``forward(x)``: x (B, 3, H, W), H and W multiples of the patch size -> (B, num_class, H, W).
    ``forward(cat(s1, s2), comp_drop=True)``: the two strong views of B images; every token of image i
    of s1 (s2) is multiplied by row i (B + i) of a complementary dropout mask, the same at each layer.
    ``comp_drop_mask`` (2B, D) replaces the random draw (tests feed the release's recorded masks).
    """

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def input_multiple(self):
        """Evaluation resizes images to a multiple of this (the encoder's patch size)."""
        return self.backbone.patch_size

    def forward(self, x, comp_drop=False, comp_drop_mask=None, generator=None):
        p = self.backbone.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        tokens = self.backbone(x)
        if comp_drop:
            if comp_drop_mask is None:
                if x.shape[0] % 2:
                    raise ValueError(f"complementary dropout needs two views of equal batch, got {x.shape[0]} images")
                comp_drop_mask = complementary_dropout_mask(x.shape[0] // 2, tokens[0].shape[-1], generator)
            mask = comp_drop_mask.to(device=x.device, dtype=tokens[0].dtype).unsqueeze(1)  # (2B, 1, D)
            tokens = [t * mask for t in tokens]
        out = self.head(tokens, h, w)
        return F.interpolate(out, size=(h * p, w * p), mode="bilinear", align_corners=True)
