"""The AllSpark bottleneck: channel-wise attention that reborns labeled features from unlabeled ones.

Notation in the shapes below: B images per half (labeled / unlabeled), C channels of the stage-4
map, N = h4 * w4 tokens, h attention heads, K classes, S key/value sources (B unlabeled images,
or K memory classes).

Numerics follow the official release step by step (the golden tests compare them with its own tensors);
the state-dict names are the release's (``map_in.0``, ``attn_norm``, ``attn.{q_u, k_u, v_u, q_l2u,
k_l2u, v_l2u, out_u, out_l2u, kv_queue, queue_ptr}``, ``encoder_norm``, ``map_out.0``).
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..compat import autocast_enabled
from .attention import fused_attention, score_std
from .dpt import DPTHead
from .segformer_head import SegFormerHead

__all__ = ["SemanticMemory", "ChannelAttention", "AllSpark", "AllSparkDecoder", "channel_semantic_grouping", "fifo_writes",
           "attention_weights",
           "fused_attention", "score_std", "ATTENTION_PATHS", "DEFAULT_ATTENTION",
           "memory_tokens"]


def attention_weights(q, k):
    """softmax over keys of the instance-normalised scores q @ k (no affine, eps 1e-5, no sqrt(d)
    scale): q (B, M, Q, N), k (..., N, K) -> (B, M, Q, K).

    Under autocast (config ``amp``) the scores, their normalisation and the softmax are computed in
    fp32 and returned in fp32: the unscaled channel scores are sums over all tokens, and instance
    norm reduces over maps of millions of them; the weights' product with the values is autocast's.
    """
    if autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return attention_weights(q.float(), k.float())
    return F.instance_norm(q @ k, eps=1e-5).softmax(dim=-1)


ATTENTION_PATHS = ("exact", "fused")
DEFAULT_ATTENTION = "fused"  # the same function as "exact" (golden tests: both), a fraction of its memory


def _gather_from_all_ranks(tensor):
    """Concatenate ``tensor`` of every process along dim 0, in rank order (itself for one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def channel_semantic_grouping(pseudo_logits, emb_u, size):
    """Channel Semantic Grouping: assign every unlabeled channel to the class whose pseudo logit map
    is most similar to it (cosine similarity over tokens).

    pseudo_logits: (B, K, H, W) raw logits of the unlabeled images; emb_u: (B, N, C) channel maps;
    size: (h4, w4) with h4 * w4 = N. Returns (B, C) int64 class indices. Computed in fp32 under autocast
    too: it is an argmax, and in half precision near-tied classes would resolve otherwise than fp32's.
    """
    with torch.autocast(emb_u.device.type, enabled=False):
        prob = F.interpolate(pseudo_logits.float(), size=size, mode="bilinear", align_corners=False).flatten(2)
        similarity = F.normalize(prob, dim=-1) @ F.normalize(emb_u.float(), dim=1)  # (B, K, C)
    return similarity.argmax(dim=1)


def fifo_writes(classes, queue_ptr, slots):
    """Where the writes of one S-Mem update go, in the release's order.

    classes: (W,) class of each write in write order (flattened (image, channel)); queue_ptr: (K,) next
    slot per class. Classes own disjoint rows, so only the order within a class matters: write j of
    class k goes to row k * slots + (ptr[k] + j) mod slots. When a class gets more writes than slots,
    several writes share a row and the last one must win; so every write carries the source index
    of the last write to its row, and the duplicated targets of one ``index_copy_`` all receive the
    same value whatever order the device applies them in.
    Returns target (W,) flat rows, source (W,) write indices, count (K,) writes per class.
    """
    # a fixed-size count (bincount's size depends on the data, which torch.compile cannot trace)
    count = torch.zeros_like(queue_ptr).scatter_add_(0, classes, torch.ones_like(classes))
    order = torch.sort(classes, stable=True).indices  # writes grouped by class, each group in write order
    start = count.cumsum(0) - count  # first position of each class in `order`
    rank = torch.empty_like(classes)
    rank[order] = torch.arange(classes.numel(), device=classes.device) - start[classes[order]]  # j of each write
    n = count[classes]
    last = rank + slots * torch.div(n - 1 - rank, slots, rounding_mode="floor")  # the last j with this row
    target = classes * slots + (queue_ptr[classes] + rank) % slots
    return target, order[start[classes] + last], count


class SemanticMemory(nn.Module):
    """Class-wise FIFO memory (S-Mem) of unlabeled channel maps.

    Buffers (release names): ``kv_queue`` (K, slots, patch_num), initialised N(0, 1), where
    ``slots`` is the channel count C and ``patch_num`` the token count of a training stage-4 map;
    ``queue_ptr`` (K,) int64, the next slot to write per class.
    """

    def __init__(self, num_class, slots, patch_num):
        super().__init__()
        self.num_class = num_class
        self.patch_num = patch_num
        self.register_buffer("queue_ptr", torch.zeros(num_class, dtype=torch.long))
        self.register_buffer("kv_queue", torch.randn(num_class, slots, patch_num))

    @torch.no_grad()
    def enqueue(self, channels, classes):
        """Write each image's channel maps into the slots of their classes.

        channels: (B, C, N) maps; classes: (B, C) class of each channel. The release's order: images
        in batch order, classes in ascending order, channels in ascending order; a block that runs past
        the last slot wraps to slot 0, later writes overwrite earlier ones; ptr <- (ptr + n) mod slots.
        One ``index_copy_``, no per-class loop, no host synchronisation (see :func:`fifo_writes`).
        """
        if channels.shape[-1] != self.patch_num:
            raise ValueError(
                f"S-Mem stores {self.patch_num} tokens per channel (the deepest map of a training crop of the "
                f"decoder's image_size), but this training map has {channels.shape[-1]} tokens: train with crops "
                f"of the decoder's image_size")
        K, slots, N = self.kv_queue.shape
        target, source, count = fifo_writes(classes.reshape(-1), self.queue_ptr, slots)
        maps = channels.reshape(-1, N)[source].to(self.kv_queue.dtype)
        self.kv_queue.view(K * slots, N).index_copy_(0, target, maps)
        self.queue_ptr.copy_((self.queue_ptr + count) % slots)

    def memory_tokens(self):
        """The memory read as key/value sources: a (K, N, C) view of ``kv_queue``, outside autograd.
        No copy: the next update comes after this step's backward."""
        return self.kv_queue.transpose(1, 2)


class ChannelAttention(SemanticMemory):
    """Channel-wise attention of the AllSpark bottleneck.

    It inherits :class:`SemanticMemory` so that the memory buffers keep the release's names
    (``attn.kv_queue``, ``attn.queue_ptr``). Every linear layer maps C -> h*C (or back) without bias.
    """

    def __init__(self, channels, num_heads, num_class, patch_num, attn_drop=0.1, attention=DEFAULT_ATTENTION):
        super().__init__(num_class, channels, patch_num)
        if attention not in ATTENTION_PATHS:
            raise ValueError(f"AllSpark: attention must be one of {list(ATTENTION_PATHS)}, got {attention!r}")
        self.num_heads = num_heads
        self.attention = attention
        inner = channels * num_heads
        self.q_u = nn.Linear(channels, inner, bias=False)
        self.k_u = nn.Linear(channels, inner, bias=False)
        self.v_u = nn.Linear(channels, inner, bias=False)
        self.q_l2u = nn.Linear(channels, inner, bias=False)
        self.k_l2u = nn.Linear(channels, inner, bias=False)
        self.v_l2u = nn.Linear(channels, inner, bias=False)
        self.out_u = nn.Linear(inner, channels, bias=False)
        self.out_l2u = nn.Linear(inner, channels, bias=False)
        self.attn_dropout = nn.Dropout(attn_drop)
        self.proj_dropout = nn.Dropout(attn_drop)
        # memory_sync: gather. Off (the release): each process enqueues its own unlabeled batch, and DDP's
        # buffer broadcast leaves every process with rank 0's memory plus its own last batch. On: every
        # process enqueues the batches of all processes, in rank order, so the memories stay identical.
        self.gather_memory = False

    def _dropout_p(self):
        return self.attn_dropout.p if self.training else 0.0

    def self_attention(self, emb_u):
        """Multi-head channel self-attention of the unlabeled half: (B, N, C) -> (B, N, C)."""
        B, N, C = emb_u.shape
        h = self.num_heads

        def heads(x):  # (B, N, h*C) -> (B, h, N, C)
            return x.view(B, N, h, C).permute(0, 2, 1, 3)

        q = heads(self.q_u(emb_u)).transpose(-1, -2)  # (B, h, C, N)
        k = heads(self.k_u(emb_u))  # (B, h, N, C)
        v = heads(self.v_u(emb_u)).transpose(-1, -2)  # (B, h, C, N)
        if self.attention == "fused":
            out = fused_attention(q, k, v, self._dropout_p())
        else:
            attn = self.attn_dropout(attention_weights(q, k))  # (B, h, C, C)
            out = attn @ v  # (B, h, C, N)
        # Channel-major flattening (feature index = c * h + head), as the release lays it out.
        out = out.permute(0, 3, 2, 1).reshape(B, N, C * h)
        return self.proj_dropout(self.out_u(out))

    def cross_attention(self, emb_l, source):
        """Labeled queries against the channels of all sources: emb_l (B, N, C), source (S, N, C)
        -> (B, N, C). Keys and values of all S sources are concatenated along the key axis (source
        outer, feature inner) and shared by every labeled image."""
        N = source.shape[1]
        q = self.q_l2u(emb_l).transpose(-1, -2).unsqueeze(1)  # (B, 1, h*C, N)
        # Keys and values stay 2-D: matmul broadcasts them over the labeled images (the release
        # repeats them once per image).
        k = self.k_l2u(source).transpose(0, 1).reshape(N, -1)  # (N, S*h*C)
        v = self.v_l2u(source).transpose(0, 1).reshape(N, -1)
        if self.attention == "fused":
            out = fused_attention(q, k, v.T, self._dropout_p()).squeeze(1).transpose(-1, -2)
        else:
            attn = self.attn_dropout(attention_weights(q, k))  # (B, 1, h*C, S*h*C)
            out = (attn @ v.T).squeeze(1).transpose(-1, -2)  # (B, N, h*C)
        return self.proj_dropout(self.out_l2u(out))

    def forward(self, emb, size, pseudo_logits=None, use_memory=False):
        """emb: (2B, N, C) [labeled; unlabeled] in training, (B, N, C) in eval; size = (h4, w4).

        Training: Channel Semantic Grouping and the S-Mem update come first (without grad); the
        labeled half attends over the unlabeled channels of the whole batch, or over S-Mem when
        ``use_memory``. Eval: the labeled-branch weights attend over the test features themselves
        (the release doubles the batch and keeps the first half; the unlabeled half it also computes
        is discarded, so it is skipped here). Returns a tensor shaped like ``emb``.
        """
        if not self.training:
            return self.cross_attention(emb, emb)
        if emb.shape[0] % 2:
            raise ValueError(f"AllSpark training forward needs equal labeled and unlabeled halves, got batch {emb.shape[0]}")
        if pseudo_logits is None:
            raise ValueError("AllSpark training forward needs pseudo_logits (eval-mode logits of the unlabeled half)")
        emb_l, emb_u = emb.chunk(2)
        if pseudo_logits.shape[0] != emb_u.shape[0]:
            raise ValueError(f"pseudo_logits has {pseudo_logits.shape[0]} images, the unlabeled half {emb_u.shape[0]}")
        classes = channel_semantic_grouping(pseudo_logits.detach(), emb_u.detach(), size)
        channels = emb_u.detach().transpose(1, 2)
        if self.gather_memory:
            channels, classes = _gather_from_all_ranks(channels), _gather_from_all_ranks(classes)
        self.enqueue(channels, classes)
        out_u = self.self_attention(emb_u)
        source = self.memory_tokens() if use_memory else emb_u
        out_l = self.cross_attention(emb_l, source)
        return torch.cat([out_l, out_u])


class AllSpark(nn.Module):
    """The bottleneck on the stage-4 map: map_in (1x1 conv + GELU) -> LayerNorm -> channel attention
    (+ residual) -> LayerNorm -> map_out (1x1 conv + GELU). (2B or B, C, h4, w4) -> same shape."""

    def __init__(self, channels, num_heads, num_class, patch_num, attn_drop=0.1, attention=DEFAULT_ATTENTION):
        super().__init__()
        self.map_in = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1), nn.GELU())
        self.attn_norm = nn.LayerNorm(channels, eps=1e-6)
        self.attn = ChannelAttention(channels, num_heads, num_class, patch_num, attn_drop, attention)
        self.encoder_norm = nn.LayerNorm(channels, eps=1e-6)
        self.map_out = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1), nn.GELU())

    def forward(self, x, pseudo_logits=None, use_memory=False):
        B, C, h, w = x.shape
        en = self.map_in(x).flatten(2).transpose(1, 2)  # (B, N, C)
        emb = self.attn(self.attn_norm(en), (h, w), pseudo_logits, use_memory) + en
        out = self.encoder_norm(emb).transpose(1, 2).contiguous().view(B, C, h, w)  # contiguous, as the release
        return self.map_out(out)


def memory_tokens(image_size, patch_size=None):
    """The token count of the deepest map of a training crop, S-Mem's ``patch_num``: the release's
    (image_size // 32 + 1) ** 2 for MiT (stride 32 with padded convolutions), (image_size / p) ** 2 for a
    patch-p encoder (the crop must be a multiple of p)."""
    if patch_size is None:
        return (image_size // 32 + 1) ** 2
    if image_size % patch_size:
        raise ValueError(f"AllSpark: image_size {image_size} must be a multiple of the encoder's patch size {patch_size}")
    return (image_size // patch_size) ** 2


class AllSparkDecoder(nn.Module):
    """Decoder type ``allspark`` (the release's ``model.semseg.allspark.SemiDecoder``): the AllSpark
    bottleneck on the deepest of the four encoder maps, then the SegFormer head (``head: segformer``, the
    release) or the DPT head (``head: dpt``, with ``features``, ``out_channels``, ``use_bn``).

    ``forward(feats, pseudo_logits, use_memory)`` with four maps (B, in_planes[i], h_i, w_i) returns
    logits at the head's resolution (SegFormer: the first map's size; DPT: 8x a patch encoder's grid).
    ``warmup_epoch`` is kept for the trainer, which turns the memory on from that epoch. ``patch_size``
    (the builder passes the encoder's, None for MiT) sizes S-Mem (:func:`memory_tokens`). ``attention``:
    ``fused`` (the default: the release's function through :func:`fused_attention`, without the score matrix
    kept for backward) or ``exact`` (the release's instance norm, softmax and dropout on the score matrix,
    draw for draw).
    """

    def __init__(self, num_class, in_planes, image_size, warmup_epoch, num_heads=2, embedding_dim=768,
                 attention_dropout=0.1, head="segformer", features=256, out_channels=(256, 512, 1024, 1024),
                 use_bn=False, patch_size=None, attention=DEFAULT_ATTENTION):
        super().__init__()
        if head not in ("segformer", "dpt"):
            raise ValueError(f"AllSpark: head must be 'segformer' or 'dpt', got {head!r}")
        if head == "dpt" and (patch_size is None or len(set(in_planes)) != 1):
            raise ValueError("AllSpark: head 'dpt' needs a patch encoder (dinov2*, dinov3*) whose four maps have one width")
        self.warmup_epoch = warmup_epoch
        self.head_type = head
        self.allspark = AllSpark(in_planes[-1], num_heads, num_class, memory_tokens(image_size, patch_size),
                                 attention_dropout, attention)
        if head == "segformer":
            self.decoder = SegFormerHead(in_planes, embedding_dim, num_class)
        else:
            self.head = DPTHead(num_class, in_planes[0], features, use_bn, out_channels)

    def forward(self, feats, pseudo_logits=None, use_memory=False):
        c1, c2, c3, c4 = feats
        maps = [c1, c2, c3, self.allspark(c4, pseudo_logits, use_memory)]
        if self.head_type == "segformer":
            return self.decoder(maps)  # (the release's module name for the SegFormer head)
        return self.head.decode(maps)
