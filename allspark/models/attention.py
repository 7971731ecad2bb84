"""AllSpark's channel attention without its score matrix: softmax(instance_norm(q @ k)) @ v computed as
scaled dot-product attention with a data-dependent scale, key chunk by key chunk.

Instance norm (no affine) subtracts one mean and divides by one standard deviation per score map; a
softmax over keys ignores the mean, so the weights are softmax(s / sigma), sigma = sqrt(Var(s) + eps)
over the map, and Var(s) needs only two N x N Gram matrices (:func:`score_std`). The attention itself
(:class:`ChunkedAttention`) keeps q, k, v, the output and one log-sum-exp per query for backward and
recomputes each key chunk's weights there, so no fp32 (queries x keys) matrix outlives one chunk (on the
CPU the dropout masks are kept, one byte per weight).
"""
import torch
import torch.nn.functional as F

from ..compat import autocast_enabled

__all__ = ["score_std", "fused_attention", "chunked_attention", "ChunkedAttention", "key_chunks"]

# weights of one key chunk (queries x chunk keys) on the CPU: 2^20 elements, 4 MiB in fp32, so that the
# element-wise passes over a chunk (exp, sums, dropout) stay in the cache; larger chunks leave it, and smaller
# ones add more, smaller matrix products. On a GPU larger chunks (2^24 elements, 64 MiB) keep the kernels few
# and large.
CHUNK_ELEMENTS = 2 ** 20
GPU_CHUNK_ELEMENTS = 2 ** 24


def score_std(q, k, eps=1e-5):
    """sqrt(Var(s) + eps) of each score map s = q @ k, without forming s: q (..., Q, N), k (..., N, K)
    (broadcastable) -> (..., 1, 1), the standard deviation instance norm divides by (biased, over Q x K).

    With q centred over its rows (mean row q0) and k over its columns (mean column k0),
    s - mean(s) = r + c + t: r = q0 (k - k0) varies along keys only, c = (q - q0) k0 along queries only,
    and t = (q - q0)(k - k0) has zero mean along both, so the three are orthogonal and
    Var(s) = (Q |r|^2 + K |c|^2 + |t|^2) / (Q K), with |t|^2 the sum of the product of two N x N Gram
    matrices. Every term is a sum of squares: no cancellation of E[s^2] - E[s]^2 in fp32."""
    nq, nk = q.shape[-2], k.shape[-1]
    q0, k0 = q.mean(-2, keepdim=True), k.mean(-1, keepdim=True)
    qc, kc = q - q0, k - k0
    r2 = (q0 @ kc).pow(2).sum((-2, -1))
    c2 = (qc @ k0).pow(2).sum((-2, -1))
    t2 = ((qc.transpose(-1, -2) @ qc) * (kc @ kc.transpose(-1, -2))).sum((-2, -1))
    var = (nq * r2 + nk * c2 + t2) / (nq * nk)
    return (var + eps).sqrt()[..., None, None]


def key_chunks(num_keys, num_queries, device):
    """[(start, end)] of the key chunks: as many keys as keep a chunk's weights within the device's size."""
    elements = CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS
    size = max(1, min(num_keys, elements // max(num_queries, 1)))
    return [(start, min(start + size, num_keys)) for start in range(0, num_keys, size)]


def _generator(seed, device):
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _drop_mask(shape, p, gen):
    """Which weights of one key chunk dropout zeroes (True with probability p), from ``gen``."""
    return torch.rand(shape, generator=gen, device=gen.device) < p


class ChunkedAttention(torch.autograd.Function):
    """softmax(q k^T) with dropout ``p`` on the weights, times v, over key chunks.
    q (R, N) queries, k (K, N) keys, v (K, D) values -> (R, D). Saves q, k, v, the output and the
    log-sum-exp of each query; backward recomputes each chunk's weights. The dropout masks are drawn in
    chunk order from a generator seeded with ``seed``; ``store_masks`` keeps them for backward (one byte per
    weight, a quarter of an fp32 score matrix: the CPU's generator is slow), else backward draws them again
    from the same seed (cheap on a GPU, and no memory)."""

    @staticmethod
    def forward(ctx, q, k, v, p, seed, store_masks):
        rows = q.shape[0]
        gen = _generator(seed, q.device) if p > 0 else None
        masks = []
        # one pass with an online softmax: a running max m and sum l per query, the (dropped-out)
        # unnormalised weights times the values accumulated and rescaled when the max grows
        m = torch.full((rows, 1), float("-inf"), dtype=q.dtype, device=q.device)
        l = q.new_zeros(rows, 1)
        acc = q.new_zeros(rows, v.shape[1])
        for a, b in key_chunks(k.shape[0], rows, q.device):
            w = q @ k[a:b].T
            m_new = torch.maximum(m, w.amax(dim=-1, keepdim=True))
            rescale = (m - m_new).exp_()
            w.sub_(m_new).exp_()
            l.mul_(rescale).add_(w.sum(-1, keepdim=True))
            if p > 0:
                drop = _drop_mask(w.shape, p, gen)
                w.masked_fill_(drop, 0.0)
                if store_masks:
                    masks.append(drop)
            acc.mul_(rescale).addmm_(w, v[a:b])
            m = m_new
        out = acc.div_(l * (1 - p) if p > 0 else l)  # dropout's 1 / (1 - p) folded in here
        lse = m.add_(l.log_())
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.p, ctx.seed, ctx.masks = p, seed, masks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        p, masks = ctx.p, ctx.masks
        gen = _generator(ctx.seed, q.device) if p > 0 and not masks else None
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(-1, keepdim=True)  # sum_j P_ij dP_ij = dO_i . O_i, dropout or not
        grad_q = torch.zeros_like(q)
        grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        for i, (a, b) in enumerate(key_chunks(k.shape[0], q.shape[0], q.device)):
            w = (q @ k[a:b].T).sub_(lse).exp_()  # P, this chunk
            grad_w = grad_out @ v[a:b].T  # dL / d(the weights after dropout)
            if p > 0:
                drop = masks[i] if masks else _drop_mask(w.shape, p, gen)
                torch.mm(w.masked_fill(drop, 0.0).T, grad_out, out=grad_v[a:b])  # times 1 / (1 - p) below
                grad_w.masked_fill_(drop, 0.0).mul_(1 / (1 - p))
            else:
                torch.mm(w.T, grad_out, out=grad_v[a:b])
            grad_s = grad_w.sub_(delta).mul_(w)
            grad_q.addmm_(grad_s, k[a:b])
            torch.mm(grad_s.T, q, out=grad_k[a:b])
        if p > 0:
            grad_v.mul_(1 / (1 - p))
        ctx.masks = None
        return grad_q, grad_k, grad_v, None, None, None


def chunked_attention(q, k, v, dropout_p=0.0, store_masks=None):
    """:class:`ChunkedAttention` on 2-D q (R, N), k (K, N), v (K, D); the dropout seed is drawn from torch's
    global generator (one draw), so a seeded run repeats its masks. ``store_masks`` defaults to True on the
    CPU, False elsewhere."""
    seed = int(torch.randint(0, 2 ** 62, (1,)).item()) if dropout_p > 0 else 0
    if store_masks is None:
        store_masks = q.device.type == "cpu"
    return ChunkedAttention.apply(q, k, v, float(dropout_p), seed, bool(store_masks))


def fused_attention(q, k, v, dropout_p=0.0):
    """softmax(instance_norm(q @ k)) @ v without the (Q x K) matrix kept for backward: the attention of
    q / sigma (:func:`score_std`; gradients flow through sigma) with scale 1, by key chunks
    (:func:`chunked_attention`) where gradients are needed, by ``scaled_dot_product_attention`` where not.
    ``dropout_p`` drops attention weights, as ``nn.Dropout`` on them does (another random draw).
    q (B, M, Q, N); k (B, M, N, K) or a shared (N, K); v (B, M, K, D) or a shared (K, D) -> (B, M, Q, D).
    Under autocast everything runs in fp32, like the exact path's scores and softmax."""
    if autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return fused_attention(q.float(), k.float(), v.float(), dropout_p)
    q = q / score_std(q, k)
    B, M, Q, N = q.shape
    shared = k.dim() == 2
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (q, k, v)):
        if shared:  # keys and values shared by every query image: one attention over all query rows
            out = F.scaled_dot_product_attention(q.reshape(1, 1, B * M * Q, N), k.T[None, None], v[None, None],
                                                 dropout_p=dropout_p, scale=1.0)
            return out.reshape(B, M, Q, -1)
        return F.scaled_dot_product_attention(q, k.transpose(-1, -2), v, dropout_p=dropout_p, scale=1.0)
    if shared:
        return chunked_attention(q.reshape(B * M * Q, N), k.T, v, dropout_p).reshape(B, M, Q, -1)
    outs = [chunked_attention(q[b, m], k[b, m].T, v[b, m], dropout_p) for b in range(B) for m in range(M)]
    return torch.stack(outs).reshape(B, M, Q, -1)
