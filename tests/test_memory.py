"""S-Mem and Channel Semantic Grouping against hand-computed cases (the golden step never wraps)."""
import pytest
import torch

from allspark.models import SemanticMemory, channel_semantic_grouping


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


def test_enqueue_rejects_wrong_token_count():
    mem = SemanticMemory(num_class=2, slots=4, patch_num=9)
    with pytest.raises(ValueError, match="9 tokens per channel.*16 tokens"):
        mem.enqueue(torch.zeros(1, 4, 16), torch.zeros(1, 4, dtype=torch.long))


def test_memory_tokens_is_a_transposed_copy():
    mem = SemanticMemory(num_class=2, slots=3, patch_num=4)
    tokens = mem.memory_tokens()
    assert tokens.shape == (2, 4, 3)
    assert torch.equal(tokens, mem.kv_queue.transpose(1, 2))
    tokens.zero_()
    assert mem.kv_queue.abs().sum() > 0


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
