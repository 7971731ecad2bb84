"""DINOv3 encoders (ViT-S/16, S+/16, B/16, L/16, H+/16, 7B/16): the official release's function on timm's
layers, returning the normed patch tokens (and class tokens) of the chosen blocks.

Parameter and buffer names are those of the released weight files (``dinov3_vits16_pretrain_lvd1689m-*.pth``
and the others): ``cls_token``, ``storage_tokens``, ``mask_token``, ``patch_embed.proj``, ``rope_embed.periods``,
``blocks.{i}.{norm1, attn.qkv.{weight, bias, bias_mask}, attn.proj, ls1.gamma, norm2, mlp.{fc1, fc2} (or
mlp.{w1, w2, w3}), ls2.gamma}``, ``norm``. timm's ``PatchEmbed``, ``Mlp``, ``LayerScale`` and ``DropPath`` build
the blocks; what differs from timm's own DINOv3 port (``timm.models.eva``) is written here:

- the release's names (timm renames the tokens, LayerScale and SwiGLU weights and splits the qkv bias);
- the qkv bias times the persistent ``bias_mask`` buffer (ones for q and v, zeros for k), as released;
- RoPE with the persistent ``periods`` buffer, computed for every block as the release computes it, and its
  train-mode coordinate rescaling (``rope_rescale_coords``) drawn once per block from torch's generator on the
  model's device (timm draws once per forward, on the CPU);
- the class token carrying ``0 * mask_token``, the release's way of giving the mask token a (zero) gradient:
  DDP needs no search for unused parameters.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed
from torch.utils.checkpoint import checkpoint

from .presets import preset_factory

__all__ = ["DINOv3", "DINOV3_PRESETS", "MaskedBiasLinear", "RopeEmbedding", "SwiGLUFFN", "dinov3_small",
           "dinov3_small_plus", "dinov3_base", "dinov3_large", "dinov3_huge_plus", "dinov3_7b", "FFN_ALIGN"]

# the released FFN kinds: (SwiGLU or not, the SwiGLU hidden width's multiple)
FFN_ALIGN = {"mlp": None, "swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}


class MaskedBiasLinear(nn.Linear):
    """The release's q/k/v projection: ``F.linear(x, W, b * bias_mask)`` with ``bias_mask`` a persistent buffer,
    1 on the q and v thirds and 0 on the k third (the released files hold it: :mod:`allspark.models.weights`
    checks it against this one). Without a bias it is a plain linear layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if bias:
            mask = torch.ones(out_features)
            mask[out_features // 3:2 * out_features // 3] = 0
            self.register_buffer("bias_mask", mask)

    def forward(self, x):
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None
        return F.linear(x, self.weight, bias)


class RopeEmbedding(nn.Module):
    """Axial RoPE of the release: for an h x w grid, patch centres normalised per axis to [-1, 1], angles
    2 pi coord / period for periods base ** (2 k / (head_dim / 2)), k < head_dim / 4, laid out [h angles, w
    angles] twice. ``forward(h, w)`` -> (sin, cos), each (h w, head_dim), in fp32. In train mode with
    ``rescale_coords`` R the coordinates are multiplied by one log-uniform factor in [1/R, R], drawn from
    torch's generator on ``periods``' device at every call (the release calls it once per block)."""

    def __init__(self, head_dim: int, base: float = 100.0, rescale_coords: Optional[float] = None):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"DINOv3: the head width {head_dim} must be a multiple of 4 (axial RoPE)")
        self.rescale_coords = rescale_coords
        exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)
        self.register_buffer("periods", base ** exponents)

    @property
    def draws(self) -> bool:
        """Whether a call draws a random factor (train mode with rescaling)."""
        return self.training and self.rescale_coords is not None

    def forward(self, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
        dd = {"device": self.periods.device, "dtype": torch.float32}
        coords_h = torch.arange(0.5, h, **dd) / h
        coords_w = torch.arange(0.5, w, **dd) / w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0
        if self.draws:
            log_r = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, **dd).uniform_(-log_r, log_r).exp()
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # (h w, 2, head_dim / 4)
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


def rope_apply(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """x cos + rotate_half(x) sin, rotate_half([a, b]) = [-b, a] over the last dimension."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


class RopeAttention(nn.Module):
    """Multi-head self-attention with RoPE on the patch tokens (the prefix tokens, class and storage, are not
    rotated), computed in the RoPE's fp32 and cast back, as the release. (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MaskedBiasLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, N, head_dim)
        sin, cos = rope
        prefix = N - sin.shape[0]
        rotated = []
        for t in (q, k):
            dtype = t.dtype
            t = t.to(sin.dtype)
            t = torch.cat((t[:, :, :prefix], rope_apply(t[:, :, prefix:], sin, cos)), dim=-2)
            rotated.append(t.to(dtype))
        x = F.scaled_dot_product_attention(*rotated, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SwiGLUFFN(nn.Module):
    """The release's SwiGLU feed-forward under its names: w3(silu(w1 x) * w2 x), the hidden width
    int(2/3 hidden) rounded up to a multiple of ``align_to``. (B, N, C) -> (B, N, C)."""

    def __init__(self, in_features: int, hidden_features: int, align_to: int = 8, bias: bool = True):
        super().__init__()
        d = int(hidden_features * 2 / 3)
        hidden = d + (-d % align_to)
        self.w1 = nn.Linear(in_features, hidden, bias=bias)
        self.w2 = nn.Linear(in_features, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x))), with stochastic depth (timm's ``DropPath``)."""

    def __init__(self, dim, num_heads, ffn_ratio, ffn, qkv_bias, layerscale_init, norm_eps, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = RopeAttention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, init_values=layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * ffn_ratio)
        self.mlp = Mlp(dim, hidden) if FFN_ALIGN[ffn] is None else SwiGLUFFN(dim, hidden, FFN_ALIGN[ffn])
        self.ls2 = LayerScale(dim, init_values=layerscale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, rope):
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class DINOv3(nn.Module):
    """A DINOv3 ViT returning the normed patch tokens of ``layers``.

    ``forward(x)`` with x (B, 3, H, W), H and W multiples of the patch size (16), returns a list of len(layers)
    tensors (B, h * w, embed_dim), h = H / 16, w = W / 16 (token n at row n // w, column n % w);
    :meth:`intermediate_layers` also returns the normed class tokens (B, embed_dim). ``embed_dim``,
    ``embed_dims`` and ``patch_size`` tell the decoder what it gets.

    ``rope_rescale_coords``: None (the default for fine-tuning, see docs/models.md) or the release's 2.0, its
    pretraining augmentation: in train mode every block's RoPE coordinates are scaled by a factor drawn
    log-uniformly in [1/2, 2], the release's draws in its order.
    """

    hub_family = "dinov3"  # the Hugging Face hub's layout of its weights (facebook/dinov3-*), allspark.models.hub

    def __init__(self, embed_dim: int, depth: int, num_heads: int, layers: Sequence[int], ffn_ratio: float = 4.0,
                 ffn: str = "mlp", qkv_bias: bool = True, n_storage_tokens: int = 4, layerscale_init: float = 1e-5,
                 norm_eps: float = 1e-5, rope_base: float = 100.0, rope_rescale_coords: Optional[float] = None,
                 drop_path_rate: float = 0.0, patch_size: int = 16, in_chans: int = 3):
        super().__init__()
        layers = [int(i) for i in layers]
        if not layers or any(not 0 <= i < depth for i in layers):
            raise ValueError(f"DINOv3: layers must be block indices in 0..{depth - 1}, got {layers}")
        if ffn not in FFN_ALIGN:
            raise ValueError(f"DINOv3: ffn must be one of {list(FFN_ALIGN)}, got {ffn!r}")
        if embed_dim % num_heads:
            raise ValueError(f"DINOv3: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.patch_size, self.layers = embed_dim, patch_size, layers
        self.n_storage_tokens = n_storage_tokens
        self.grad_checkpointing = False
        # registration order: the release's, so that parameters() lists them as its model does
        self.patch_embed = PatchEmbed(img_size=None, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                                      output_fmt="NHWC", strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        self.rope_embed = RopeEmbedding(embed_dim // num_heads, rope_base, rope_rescale_coords)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, ffn_ratio, ffn, qkv_bias, layerscale_init, norm_eps,
                  drop_path_rate * i / max(depth - 1, 1))
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self._init_weights()

    def _init_weights(self):
        """The release's initialisation (only used when no pretrained weights are loaded)."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def patch_size_for(kwargs: dict) -> int:
        """The patch size a model built with ``kwargs`` has."""
        return int(kwargs.get("patch_size", 16))

    @property
    def embed_dims(self) -> List[int]:
        """The widths of the maps it returns (one per chosen layer), as MiT's ``embed_dims``."""
        return [self.embed_dim] * len(self.layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block (timm's name): recomputed in backward, same numbers."""
        self.grad_checkpointing = enable

    def intermediate_layers(self, x: torch.Tensor, return_class_token: bool = False):
        """The normed patch tokens (B, h w, D) of ``layers``; with ``return_class_token`` a list of pairs
        (patch tokens, class token (B, D)). As the release's ``get_intermediate_layers(x, n=layers, norm=True)``."""
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"DINOv3 takes inputs whose sides are multiples of {self.patch_size}, got {H}x{W}: "
                             f"crop to a multiple (e.g. 512 = 32 x 16) or resize (evaluation does)")
        tokens = self.patch_embed(x)  # (B, h, w, D)
        B, h, w, D = tokens.shape
        cls_token = self.cls_token + 0 * self.mask_token
        x = torch.cat([cls_token.expand(B, -1, -1), self.storage_tokens.expand(B, -1, -1), tokens.reshape(B, h * w, D)],
                      dim=1)
        rope = None if self.rope_embed.draws else self.rope_embed(h, w)  # without draws every block's is the same
        wanted, outs = set(self.layers), []
        last = max(self.layers)
        for i, block in enumerate(self.blocks[:last + 1]):
            block_rope = rope if rope is not None else self.rope_embed(h, w)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, block_rope, use_reentrant=False)
            else:
                x = block(x, block_rope)
            if i in wanted:
                outs.append(x)
        if self.rope_embed.draws:  # the release runs every block: the same generator draws as it, in its order
            for _ in self.blocks[last + 1:]:
                self.rope_embed(h, w)
        outs = [self.norm(out) for out in outs]
        patches = [out[:, 1 + self.n_storage_tokens:] for out in outs]
        if return_class_token:
            return [(p, out[:, 0]) for p, out in zip(patches, outs)]
        return patches

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.intermediate_layers(x)


# The released sizes (the official hub's dinov3_vit*16 builders) and the blocks the DPT head taps: DINOv2's
# choices where the depth is DINOv2's (S, S+ and B: 12 blocks; L: 24), evenly spaced ends of quarters for
# H+ (32 blocks) and 7B (40 blocks, DINOv2-g's).
_RELEASED = dict(n_storage_tokens=4, layerscale_init=1e-5, norm_eps=1e-5, rope_base=100.0, patch_size=16)
DINOV3_PRESETS = {
    "dinov3_small": dict(embed_dim=384, depth=12, num_heads=6, layers=[2, 5, 8, 11], **_RELEASED),
    "dinov3_small_plus": dict(embed_dim=384, depth=12, num_heads=6, ffn_ratio=6.0, ffn="swiglu",
                              layers=[2, 5, 8, 11], **_RELEASED),
    "dinov3_base": dict(embed_dim=768, depth=12, num_heads=12, layers=[2, 5, 8, 11], **_RELEASED),
    "dinov3_large": dict(embed_dim=1024, depth=24, num_heads=16, layers=[4, 11, 17, 23], **_RELEASED),
    "dinov3_huge_plus": dict(embed_dim=1280, depth=32, num_heads=20, ffn_ratio=6.0, ffn="swiglu",
                             layers=[7, 15, 23, 31], **_RELEASED),
    "dinov3_7b": dict(embed_dim=4096, depth=40, num_heads=32, ffn_ratio=3.0, ffn="swiglu64", qkv_bias=False,
                      layers=[9, 19, 29, 39], **_RELEASED),
}

dinov3_small = preset_factory(DINOv3, DINOV3_PRESETS, "dinov3_small")
dinov3_small_plus = preset_factory(DINOv3, DINOV3_PRESETS, "dinov3_small_plus")
dinov3_base = preset_factory(DINOv3, DINOV3_PRESETS, "dinov3_base")
dinov3_large = preset_factory(DINOv3, DINOV3_PRESETS, "dinov3_large")
dinov3_huge_plus = preset_factory(DINOv3, DINOV3_PRESETS, "dinov3_huge_plus")
dinov3_7b = preset_factory(DINOv3, DINOV3_PRESETS, "dinov3_7b")
