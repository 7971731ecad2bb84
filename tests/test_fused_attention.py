"""AllSpark's attention through the instance-norm identity (``attention: fused``): the same function and
gradients as the exact path, with and without S-Mem, by key chunks, with dropout, under autocast."""
import pytest
import torch

from allspark.models import attention as A
from allspark.models import build_model
from allspark.models.allspark import attention_weights
from helpers import tiny_model_cfg, zero_dropout


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(A, "CHUNK_ELEMENTS", 16)  # several key chunks even for tiny inputs


def grads(out, inputs, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("shared", [False, True], ids=["self-attention", "shared keys (S-Mem)"])
def test_equal_to_instance_norm_softmax_in_float64(small_chunks, shared):
    t = dict(dtype=torch.float64, requires_grad=True)
    q = (torch.randn(2, 2, 6, 9, dtype=torch.float64) + 3).requires_grad_()  # a large mean: no cancellation
    k = (torch.randn(9, 11, **t) if shared else (torch.randn(2, 2, 9, 7, dtype=torch.float64) + 2).requires_grad_())
    v = torch.randn(11, 9, **t) if shared else torch.randn(2, 2, 7, 9, **t)
    exact = attention_weights(q, k) @ v
    fused = A.fused_attention(q, k, v)
    assert (exact - fused).abs().max() < 1e-13
    for a, b in zip(grads(exact, (q, k, v)), grads(fused, (q, k, v))):
        assert (a - b).abs().max() < 1e-13
    with torch.no_grad():  # the no-grad path (scaled_dot_product_attention)
        assert (A.fused_attention(q, k, v) - exact).abs().max() < 1e-13


def test_score_std_is_accurate_in_float32_when_the_mean_is_large():
    q = torch.randn(1, 1, 64, 49) + 50.0
    k = torch.randn(1, 1, 49, 64) + 50.0
    s = q.double() @ k.double()  # scores of mean ~ 1.2e5, spread ~ 5e3
    ref = (s.var(dim=(-2, -1), unbiased=False) + 1e-5).sqrt()
    naive = ((q @ k).pow(2).mean() - (q @ k).mean().pow(2)).sqrt()  # E[s^2] - E[s]^2 in fp32
    ours = A.score_std(q, k).squeeze()
    assert abs(ours.double() - ref.squeeze()) / ref.squeeze() < 1e-5
    assert abs(naive.double() - ref.squeeze()) / ref.squeeze() > abs(ours.double() - ref.squeeze()) / ref.squeeze()


@pytest.mark.parametrize("store_masks", [True, False], ids=["masks kept", "masks drawn again"])
def test_chunked_attention_with_dropout_has_exact_gradients(small_chunks, store_masks):
    q, k, v = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((4, 3), (10, 3), (10, 2)))
    assert len(A.key_chunks(10, 4, q.device)) == 3
    assert torch.autograd.gradcheck(lambda a, b, c: A.ChunkedAttention.apply(a, b, c, 0.3, 123, store_masks), (q, k, v))
    kept = A.ChunkedAttention.apply(q, k, v, 0.5, 7, store_masks)
    assert torch.equal(kept, A.ChunkedAttention.apply(q, k, v, 0.5, 7, store_masks)), "the mask repeats from its seed"
    assert not torch.equal(kept, A.ChunkedAttention.apply(q, k, v, 0.5, 8, store_masks))
    assert torch.equal(kept, A.ChunkedAttention.apply(q, k, v, 0.5, 7, not store_masks)), "one draw either way"


def test_dropout_keeps_its_rate_and_scale():
    """Dropout on the weights as nn.Dropout: about p of them zeroed, the rest scaled by 1 / (1 - p), so the
    output's expectation is the undropped attention's (v = 1: every output is 1 without dropout)."""
    q, k = torch.randn(64, 5), torch.randn(4096, 5)
    outs = torch.stack([A.chunked_attention(q, k, torch.ones(4096, 1), 0.1) for _ in range(20)])
    assert abs(outs.mean().item() - 1.0) < 0.01
    one_key = A.chunked_attention(torch.zeros(20000, 1), torch.zeros(1, 1), torch.ones(1, 1), 0.1)
    assert torch.equal(one_key.unique(), torch.tensor([0.0, 1 / 0.9]))
    assert abs((one_key == 0).float().mean().item() - 0.1) < 0.01


def test_model_training_step_equal_to_exact_path():
    """A training forward with S-Mem of the tiny AllSpark model in float64: the same logits and gradients
    (dropout off), to float64 rounding."""
    results = []
    for attention in ("exact", "fused"):
        cfg = tiny_model_cfg(num_class=3, image_size=65)
        cfg["decoder"]["kwargs"]["attention"] = attention
        torch.manual_seed(0)
        model = zero_dropout(build_model(cfg)).double().train()
        torch.manual_seed(1)
        x = torch.randn(4, 3, 65, 65, dtype=torch.float64)
        pseudo = torch.randn(2, 3, 65, 65, dtype=torch.float64)
        logits = model(x, pseudo_logits=pseudo, use_memory=True)
        loss = logits.square().mean()
        loss.backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = results
    assert (a - b).abs().max() < 1e-12
    for name in ga:
        assert (ga[name] - gb[name]).abs().max() <= 1e-9 * ga[name].abs().max() + 1e-15, name


def test_fused_under_bf16_autocast_runs_in_fp32():
    q, k, v = torch.randn(1, 2, 8, 5), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 8, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = A.fused_attention(q, k, v)
    assert out.dtype == torch.float32 and (out - attention_weights(q, k) @ v).abs().max() < 1e-5


def test_unknown_attention_path_is_refused():
    cfg = tiny_model_cfg()
    cfg["decoder"]["kwargs"]["attention"] = "flash"
    with pytest.raises(Exception, match=r"attention must be one of \['exact', 'fused'\], got 'flash'"):
        build_model(cfg)
