"""Mix Vision Transformer (MiT), the SegFormer encoder, as used by the AllSpark release.

Module and parameter names follow SegFormer's ``mix_transformer.py`` (``patch_embed{1..4}``,
``block{1..4}.{j}``, ``norm{1..4}``) so that SegFormer's ImageNet weights ``mit_b*.pth`` and the
release's checkpoints load unchanged. The classification head of the ImageNet model is left out,
as in the release.
"""
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch.utils.checkpoint import checkpoint

from .presets import preset_factory

__all__ = ["MixVisionTransformer", "MIT_PRESETS", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5"]


class DWConv(nn.Module):
    """3x3 depth-wise convolution on a token sequence: (B, N, C) -> (B, N, C), N = H * W.

    It convolves the channels-last view of the tokens, where the release copied them to a contiguous map
    first: on the CPU the depth-wise convolution is faster channels-last at the stage-1 sizes, forward and
    backward. Its weight gradient then comes back channels-last, strides (9, 1, 3, 1): the memory order of a
    contiguous (C, 1, 3, 3) weight, but other strides on the size-1 dimension, which DDP's bucket check
    reports. So the weight is held with those strides (the same values and state-dict entry)."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)
        weight = self.dwconv.weight.detach()
        self.dwconv.weight = nn.Parameter(torch.empty_like(weight, memory_format=torch.channels_last).copy_(weight))

    def forward(self, x, H, W):
        B, N, C = x.shape
        x = x.transpose(1, 2).view(B, C, H, W)
        x = self.dwconv(x)
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Mix-FFN: fc1 -> depth-wise 3x3 conv -> GELU -> fc2, on (B, N, C) tokens."""

    def __init__(self, in_features, hidden_features, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x, H, W):
        x = self.act(self.dwconv(self.fc1(x), H, W))
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the token map reduced
    ``sr_ratio`` times per side (a strided conv + LayerNorm). (B, N, C) -> (B, N, C).
    The state-dict name of this module is ``attn`` (q, kv, proj, sr, norm) as in SegFormer."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, sr_ratio=1):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"MiT: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            # SegFormer uses LayerNorm's default eps (1e-5) here, unlike the blocks' 1e-6.
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        head_dim = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, head_dim).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            # a channels-last view, as in the release: the k x k weight gradient comes back channels-last and
            # autograd copies it into the parameter's layout (weight-sized), cheaper than copying the map
            x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
            x_ = self.sr(x_).reshape(B, C, -1).permute(0, 2, 1)
            x = self.norm(x_)
        kv = self.kv(x).reshape(B, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        # softmax(q k^T * scale) v with dropout on the weights, as SegFormer's explicit attention, fused.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                           scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), with stochastic depth."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, sr_ratio, norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, H, W):
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: conv (kernel ``patch_size``, ``stride``, padding patch_size // 2)
    then LayerNorm. (B, C_in, H, W) -> tokens (B, H' * W', C), H', W'."""

    def __init__(self, patch_size, stride, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)  # default eps 1e-5, as in SegFormer

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class MixVisionTransformer(nn.Module):
    """Four-stage hierarchical encoder. ``forward(x)`` with x (B, 3, H, W) returns the list of
    stage maps [(B, C_i, ceil(H / s_i), ceil(W / s_i))] for strides s = 4, 8, 16, 32 (sizes as the
    overlapping convolutions give them)."""

    hub_family = "mit"  # the Hugging Face hub's layout of its weights (nvidia/mit-b*), allspark.models.hub

    def __init__(self, in_chans=3, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(4, 4, 4, 4),
                 qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, depths=(3, 4, 6, 3),
                 sr_ratios=(8, 4, 2, 1)):
        super().__init__()
        for name, value in (("embed_dims", embed_dims), ("num_heads", num_heads), ("mlp_ratios", mlp_ratios),
                            ("depths", depths), ("sr_ratios", sr_ratios)):
            if len(value) != 4:
                raise ValueError(f"MiT: {name} must have 4 entries (one per stage), got {list(value)}")
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.sr_ratios = list(sr_ratios)
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        # Registration order (all patch embeddings, then blocks and norms per stage) is SegFormer's,
        # so state-dict keys come out in the release's order.
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(
                7 if i == 0 else 3, 4 if i == 0 else 2, in_chans if i == 0 else embed_dims[i - 1], embed_dims[i]))
        cur = 0
        for i in range(4):
            setattr(self, f"block{i + 1}", nn.ModuleList([
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], qkv_bias, drop_rate, attn_drop_rate,
                      dpr[cur + j], sr_ratios[i], norm_layer)
                for j in range(depths[i])]))
            setattr(self, f"norm{i + 1}", norm_layer(embed_dims[i]))
            cur += depths[i]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # SegFormer's initialisation (only matters when no pretrained weights are loaded).
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()

    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing of every block (timm's name): a block's activations are recomputed in
        backward instead of kept, with the same random draws (drop-path), so the numbers do not change."""
        self.grad_checkpointing = enable

    @property
    def min_input_size(self):
        """The shortest image side the encoder takes: at every stage the map must be at least as large as
        that stage's spatial-reduction kernel (``sr_ratio``); MiT's defaults need 29 px."""
        side = 1
        while True:
            size, ok = side, True
            for i, sr in enumerate(self.sr_ratios):
                k, stride = (7, 4) if i == 0 else (3, 2)  # the patch embeddings' kernels and strides
                size = (size + 2 * (k // 2) - k) // stride + 1
                ok = ok and size >= sr
            if ok:
                return side
            side += 1

    def forward(self, x):
        B = x.shape[0]
        outs = []
        for i in range(1, 5):
            x, H, W = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(blk, x, H, W, use_reentrant=False)
                else:
                    x = blk(x, H, W)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()  # as the release
            outs.append(x)
        return outs


_B1_B5_DIMS = [64, 128, 320, 512]
MIT_PRESETS = {
    "mit_b0": dict(embed_dims=[32, 64, 160, 256], depths=[2, 2, 2, 2]),
    "mit_b1": dict(embed_dims=_B1_B5_DIMS, depths=[2, 2, 2, 2]),
    "mit_b2": dict(embed_dims=_B1_B5_DIMS, depths=[3, 4, 6, 3]),
    "mit_b3": dict(embed_dims=_B1_B5_DIMS, depths=[3, 4, 18, 3]),
    "mit_b4": dict(embed_dims=_B1_B5_DIMS, depths=[3, 8, 27, 3]),
    "mit_b5": dict(embed_dims=_B1_B5_DIMS, depths=[3, 6, 40, 3]),
}
_COMMON = dict(num_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4], qkv_bias=True,
               drop_path_rate=0.1)
for _preset in MIT_PRESETS.values():
    for _k, _v in _COMMON.items():
        _preset.setdefault(_k, _v)


mit_b0 = preset_factory(MixVisionTransformer, MIT_PRESETS, "mit_b0")
mit_b1 = preset_factory(MixVisionTransformer, MIT_PRESETS, "mit_b1")
mit_b2 = preset_factory(MixVisionTransformer, MIT_PRESETS, "mit_b2")
mit_b3 = preset_factory(MixVisionTransformer, MIT_PRESETS, "mit_b3")
mit_b4 = preset_factory(MixVisionTransformer, MIT_PRESETS, "mit_b4")
mit_b5 = preset_factory(MixVisionTransformer, MIT_PRESETS, "mit_b5")
