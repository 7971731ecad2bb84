"""memory_sync across two gloo processes: 'broadcast' (the release) leaves each process its own writes;
'gather' enqueues every process's unlabeled channels in rank order, so the memories stay identical."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from allspark.models import ChannelAttention, channel_semantic_grouping

from helpers import free_port


def _worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for gather in (True, False):
        torch.manual_seed(0)
        attn = ChannelAttention(channels=8, num_heads=2, num_class=3, patch_num=4).train()
        attn.gather_memory = gather
        emb, pseudo = _inputs(rank)
        attn(emb, (2, 2), pseudo_logits=pseudo)
        out[(gather, rank)] = (attn.kv_queue.clone(), attn.queue_ptr.clone())
    dist.destroy_process_group()


def _run():
    """{(gather, rank): (kv_queue, queue_ptr)} of one step of each mode on two gloo processes."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
        return dict(out)


def _inputs(rank):
    torch.manual_seed(100 + rank)  # different images on each process
    return torch.randn(4, 4, 8), torch.randn(2, 3, 8, 8)


def _expected(ranks):
    """A single memory that enqueued the unlabeled halves of ``ranks`` in that order."""
    torch.manual_seed(0)
    mem = ChannelAttention(channels=8, num_heads=2, num_class=3, patch_num=4)
    chans, classes = [], []
    for rank in ranks:
        emb, pseudo = _inputs(rank)
        chans.append(emb[2:].transpose(1, 2))
        classes.append(channel_semantic_grouping(pseudo, emb[2:], (2, 2)))
    mem.enqueue(torch.cat(chans), torch.cat(classes))
    return mem.kv_queue, mem.queue_ptr


def test_gather_keeps_memories_identical_and_broadcast_does_not():
    memories = _run()
    queue, ptr = _expected([0, 1])
    for rank in (0, 1):
        assert torch.equal(memories[True, rank][0], queue) and torch.equal(memories[True, rank][1], ptr)
    for rank in (0, 1):
        queue, ptr = _expected([rank])
        assert torch.equal(memories[False, rank][0], queue) and torch.equal(memories[False, rank][1], ptr)
    assert not torch.equal(memories[False, 0][0], memories[False, 1][0])
