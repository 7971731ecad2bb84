"""S-Mem and Channel Semantic Grouping against hand-computed cases (the golden step never wraps)."""
import pytest
import torch

from allspark.models import SemanticMemory, channel_semantic_grouping
from allspark.models.allspark import fifo_writes


def test_enqueue_wraps_and_later_writes_win():
    mem = SemanticMemory(num_class=3, slots=4, patch_num=2)
    mem.queue_ptr.copy_(torch.tensor([0, 3, 1]))
    initial = mem.kv_queue.clone()
    # channel c of image b holds the map [10 * b + c, -(10 * b + c)]
    values = torch.tensor([[0.0, 1, 2, 3], [10, 11, 12, 13]])
    channels = torch.stack([values, -values], dim=-1)  # (B=2, C=4, N=2)
    classes = torch.tensor([[1, 1, 0, 1],   # image 0: class 0 <- ch 2; class 1 <- ch 0, 1, 3 from slot 3
                            [1, 1, 1, 1]])  # image 1: class 1 <- ch 0..3 from slot 2 (overwrites image 0)
    mem.enqueue(channels, classes)

    expected = initial.clone()
    expected[0, 0] = torch.tensor([2.0, -2.0])
    for slot, v in zip([2, 3, 0, 1], [10.0, 11, 12, 13]):
        expected[1, slot] = torch.tensor([v, -v])
    assert torch.equal(mem.kv_queue, expected)
    assert mem.queue_ptr.tolist() == [1, 2, 1]  # class 2 untouched


def test_enqueue_single_wrap_keeps_order():
    mem = SemanticMemory(num_class=1, slots=5, patch_num=1)
    mem.queue_ptr.fill_(3)
    mem.enqueue(torch.arange(4.0).view(1, 4, 1), torch.zeros(1, 4, dtype=torch.long))
    # channels 0, 1 go to slots 3, 4; channels 2, 3 wrap to slots 0, 1
    assert mem.kv_queue[0, :, 0].tolist()[:2] == [2.0, 3.0]
    assert mem.kv_queue[0, 3:, 0].tolist() == [0.0, 1.0]
    assert mem.queue_ptr.tolist() == [2]


def release_enqueue(kv_queue, queue_ptr, channels, classes):
    """The release's S-Mem update, a loop per image and class, as the reference."""
    slots = kv_queue.shape[1]
    for b in range(channels.shape[0]):
        for cls in torch.unique(classes[b]).tolist():
            feats = channels[b, classes[b] == cls]
            n = feats.shape[0]
            ptr = int(queue_ptr[cls])
            for j in range(n):  # one slot at a time: wraps as often as it needs
                kv_queue[cls, (ptr + j) % slots] = feats[j]
            queue_ptr[cls] = (ptr + n) % slots


@pytest.mark.parametrize("B,C,K,slots,seed", [(2, 16, 5, 16, 0), (4, 32, 3, 8, 1), (3, 12, 2, 5, 2), (1, 7, 7, 7, 3),
                                               (8, 16, 1, 3, 4)])
def test_enqueue_matches_the_release_loop(B, C, K, slots, seed):
    # slots below B * C / K make classes wrap once or many times within one step (8 x 16 writes, 3 slots)
    g = torch.Generator().manual_seed(seed)
    mem = SemanticMemory(num_class=K, slots=slots, patch_num=3)
    mem.queue_ptr.copy_(torch.randint(0, slots, (K,), generator=g))
    ref_queue, ref_ptr = mem.kv_queue.clone(), mem.queue_ptr.clone()
    for _ in range(3):
        channels = torch.randn(B, C, 3, generator=g)
        classes = torch.randint(0, K, (B, C), generator=g)
        classes[0, 0] = K - 1  # the last class is always present
        mem.enqueue(channels, classes)
        release_enqueue(ref_queue, ref_ptr, channels, classes)
        assert torch.equal(mem.queue_ptr, ref_ptr)
        assert torch.equal(mem.kv_queue, ref_queue)


def test_fifo_writes_every_duplicate_target_carries_the_last_write():
    # On the CPU index_copy_ applies duplicates in order, which would hide a wrong source; a GPU
    # applies them in any order. So the sources are checked directly: every write to a row must
    # carry the last write to that row, and rows follow ptr + j mod slots.
    g = torch.Generator().manual_seed(0)
    K, slots = 4, 5
    classes = torch.randint(0, K, (60,), generator=g)  # about 15 writes per class: wraps up to 3 times
    ptr = torch.randint(0, slots, (K,), generator=g)
    target, source, count = fifo_writes(classes, ptr, slots)
    assert count.tolist() == [int((classes == k).sum()) for k in range(K)]
    seen = {}
    for k in range(K):
        for j, w in enumerate((classes == k).nonzero().flatten().tolist()):
            assert target[w] == k * slots + (ptr[k] + j) % slots
            seen[int(target[w])] = w  # later writes overwrite
    for w in range(classes.numel()):
        assert source[w] == seen[int(target[w])]


def test_enqueue_rejects_wrong_token_count():
    mem = SemanticMemory(num_class=2, slots=4, patch_num=9)
    with pytest.raises(ValueError, match="9 tokens per channel.*16 tokens"):
        mem.enqueue(torch.zeros(1, 4, 16), torch.zeros(1, 4, dtype=torch.long))


def test_memory_tokens_is_a_transposed_view():
    mem = SemanticMemory(num_class=2, slots=3, patch_num=4)
    tokens = mem.memory_tokens()
    assert tokens.shape == (2, 4, 3)
    assert torch.equal(tokens, mem.kv_queue.transpose(1, 2))
    assert tokens.data_ptr() == mem.kv_queue.data_ptr()  # no copy


def test_channel_semantic_grouping_picks_most_similar_class():
    torch.manual_seed(0)
    K, C, h, w = 3, 6, 4, 4
    logits = torch.randn(1, K, h, w)
    target = torch.tensor([2, 0, 1, 1, 0, 2])
    # channel c is a positively scaled copy of class target[c]'s logit map (cosine similarity 1)
    emb_u = (logits[0, target].flatten(1) * torch.linspace(0.5, 3, C)[:, None]).T.unsqueeze(0)  # (1, N, C)
    assert torch.equal(channel_semantic_grouping(logits, emb_u, (h, w)), target.unsqueeze(0))


def test_channel_semantic_grouping_resizes_logits():
    logits = torch.zeros(1, 2, 8, 8)
    logits[0, 0, :4] = 1.0  # class 0 lives in the top half, class 1 in the bottom half
    logits[0, 1, 4:] = 1.0
    top = torch.zeros(2, 2)
    top[0] = 1.0
    emb_u = torch.stack([top.flatten(), 1 - top.flatten()], dim=1).unsqueeze(0)  # (1, N=4, C=2)
    assert channel_semantic_grouping(logits, emb_u, (2, 2)).tolist() == [[0, 1]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_channel_semantic_grouping_is_fp32_under_autocast(dtype):
    """A near tie: class 1's map is a little closer to the channel than class 0's, closer than half
    precision resolves. Under autocast (config amp) the classes must still be fp32's."""
    gen = torch.Generator().manual_seed(0)
    h = w = 8
    channel = torch.randn(h * w, generator=gen)
    noise = torch.randn(h * w, generator=gen)
    logits = torch.stack([channel + 2e-3 * noise, channel + 1e-3 * noise]).view(1, 2, h, w)
    emb_u = channel.view(1, h * w, 1)
    fp32 = channel_semantic_grouping(logits, emb_u, (h, w))
    assert fp32.tolist() == [[1]]
    with torch.autocast("cpu", dtype=dtype):
        assert torch.equal(channel_semantic_grouping(logits, emb_u, (h, w)), fp32)


def test_channel_semantic_grouping_under_autocast_on_the_golden_case(monkeypatch):
    """The golden model's training forward in fp32: the inputs Channel Semantic Grouping gets, grouped
    again under bf16 autocast, give the same class for every channel."""
    from allspark.models import allspark as allspark_module

    from helpers import golden_allspark_model, golden_file
    golden = torch.load(golden_file("allspark_ref_small.pt"), weights_only=False)
    seen = []
    real = allspark_module.channel_semantic_grouping
    monkeypatch.setattr(allspark_module, "channel_semantic_grouping",
                        lambda *args: seen.append(args) or real(*args))
    model = golden_allspark_model(golden).train()
    model(torch.cat([golden["x_l"], golden["x_u"]]), pseudo_logits=golden["smem_pseudo_logits"], use_memory=True)
    (args,) = seen
    fp32 = real(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(real(*args), fp32)
