"""DINOv2 encoders (ViT-S/B/L/g, patch 14) on timm's VisionTransformer, as UniMatch V2 uses them.

timm's blocks, norms and LayerScale compute DINOv2's function and carry its parameter names
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma,
norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``), so the official DINOv2 files and the release's
checkpoints load unchanged. What differs from timm is added here:

- the position embedding at another grid than the 37 x 37 it was trained at: DINOv2 resizes it with
  ``scale_factor = ((h + 0.1) / 37, (w + 0.1) / 37)`` (bicubic, no antialias), which samples other points
  than timm's ``resample_abs_pos_embed`` (``size=(h, w)``, antialias): up to ~2 apart on the features;
- ``mask_token`` (unused in segmentation, kept so that state dicts have the release's keys);
- ViT-g's SwiGLU feed-forward under DINOv2's names (``mlp.w12``, ``mlp.w3``);
- the output: the final-normed patch tokens of the chosen blocks (``get_intermediate_layers``).
"""
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint

from .presets import preset_factory

__all__ = ["DINOv2", "DINOV2_PRESETS", "SwiGLU", "dinov2_small", "dinov2_base", "dinov2_large", "dinov2_giant",
           "PATCH_SIZE"]

PATCH_SIZE = 14


class SwiGLU(nn.Module):
    """DINOv2's fused SwiGLU feed-forward (ViT-g): w3(silu(a) * b) with [a | b] = w12(x); the hidden
    width is DINOv2's (int(2/3 hidden) + 7) // 8 * 8. (B, N, C) -> (B, N, C)."""

    def __init__(self, in_features, hidden_features, bias=True, **_):
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class DINOv2(VisionTransformer):
    """A DINOv2 ViT returning the normed patch tokens of ``layers``.

    ``forward(x)`` with x (B, 3, H, W), H and W multiples of 14, returns a list of len(layers) tensors
    (B, h * w, embed_dim) with h = H / 14, w = W / 14 (token n at row n // w, column n % w); the class
    token is dropped. ``embed_dim`` and ``patch_size`` tell the decoder what it gets.
    """

    has_unused_parameters = True  # mask_token gets no gradient (DDP must be told)
    hub_family = "dinov2"  # the Hugging Face hub's layout of its weights (facebook/dinov2-*), allspark.models.hub

    def __init__(self, embed_dim, depth, num_heads, layers, mlp_ratio=4.0, ffn="mlp", img_size=518,
                 init_values=1.0, drop_path_rate=0.0, interpolate_offset=0.1, interpolate_antialias=False):
        layers = [int(i) for i in layers]
        if not layers or any(not 0 <= i < depth for i in layers):
            raise ValueError(f"DINOv2: layers must be block indices in 0..{depth - 1}, got {layers}")
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"DINOv2: ffn must be 'mlp' or 'swiglu', got {ffn!r}")
        if embed_dim % num_heads:
            raise ValueError(f"DINOv2: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        extra = {"mlp_layer": SwiGLU} if ffn == "swiglu" else {}
        super().__init__(img_size=img_size, patch_size=PATCH_SIZE, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, init_values=init_values,
                         class_token=True, reg_tokens=0, no_embed_class=False, dynamic_img_size=True,
                         num_classes=0, global_pool="token", drop_path_rate=drop_path_rate,
                         norm_layer=partial(nn.LayerNorm, eps=1e-6), **extra)
        # Registered after cls_token and pos_embed, as in DINOv2, so parameters() has the release's order.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.layers = layers
        self.patch_size = PATCH_SIZE
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias

    @staticmethod
    def patch_size_for(kwargs):
        """The patch size a model built with ``kwargs`` has (DINOv2's is fixed)."""
        return PATCH_SIZE

    @property
    def embed_dims(self):
        """The widths of the maps it returns (one per chosen layer), as MiT's ``embed_dims``."""
        return [self.embed_dim] * len(self.layers)

    def interpolate_pos_encoding(self, h, w):
        """DINOv2's position embedding for an h x w patch grid: (1, 1 + h * w, D). At the trained grid
        (square, same size) the parameter itself; otherwise the class row as it is and the grid rows
        resized in fp32 by ``scale_factor`` ((h + offset) / M, (w + offset) / M), M the trained side."""
        grid = self.pos_embed.shape[1] - 1
        if h * w == grid and h == w:
            return self.pos_embed
        side = math.sqrt(grid)
        pos = self.pos_embed.float()
        dim = pos.shape[-1]
        patch = pos[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=((h + self.interpolate_offset) / side,
                                                   (w + self.interpolate_offset) / side),
                              mode="bicubic", antialias=self.interpolate_antialias)
        if patch.shape[-2:] != (h, w):  # the offset keeps floor((h + 0.1) / M * M) at h
            raise RuntimeError(f"DINOv2 position embedding resized to {tuple(patch.shape[-2:])}, expected {(h, w)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat([pos[:, :1], patch], dim=1).to(self.pos_embed.dtype)

    def _pos_embed(self, x):
        """(B, h, w, D) patch tokens -> (B, 1 + h w, D) with the class token and DINOv2's position embedding."""
        B, h, w, D = x.shape
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, h * w, D)], dim=1)
        return self.pos_drop(x + self.interpolate_pos_encoding(h, w))

    def forward(self, x):
        H, W = x.shape[-2:]
        if H % PATCH_SIZE or W % PATCH_SIZE:
            raise ValueError(f"DINOv2 takes inputs whose sides are multiples of {PATCH_SIZE}, got {H}x{W}: "
                             f"crop to a multiple (e.g. 518 = 37 x 14) or resize (evaluation does)")
        x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        wanted, outs = set(self.layers), []
        for i, block in enumerate(self.blocks[:max(self.layers) + 1]):
            if self.grad_checkpointing and torch.is_grad_enabled():  # timm's set_grad_checkpointing()
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in wanted:
                outs.append(x)
        return [self.norm(out)[:, 1:] for out in outs]


DINOV2_PRESETS = {
    "dinov2_small": dict(embed_dim=384, depth=12, num_heads=6, layers=[2, 5, 8, 11]),
    "dinov2_base": dict(embed_dim=768, depth=12, num_heads=12, layers=[2, 5, 8, 11]),
    "dinov2_large": dict(embed_dim=1024, depth=24, num_heads=16, layers=[4, 11, 17, 23]),
    "dinov2_giant": dict(embed_dim=1536, depth=40, num_heads=24, layers=[9, 19, 29, 39], ffn="swiglu"),
}


dinov2_small = preset_factory(DINOv2, DINOV2_PRESETS, "dinov2_small")
dinov2_base = preset_factory(DINOv2, DINOV2_PRESETS, "dinov2_base")
dinov2_large = preset_factory(DINOv2, DINOV2_PRESETS, "dinov2_large")
dinov2_giant = preset_factory(DINOv2, DINOV2_PRESETS, "dinov2_giant")
