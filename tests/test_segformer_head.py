"""The SegFormer head's folded fast path (the one the models run) computes the plain head's function: the
release's projections, resizing, concatenation, fuse conv, BatchNorm, ReLU, dropout and classifier in order."""
import copy

import pytest
import torch

from allspark.models.segformer_head import SegFormerHead

DIMS, SIZES = (16, 32, 40, 64), (17, 9, 5, 3)


@pytest.mark.parametrize("train, batch", [(True, 2), (False, 1)])
def test_the_folded_head_gives_the_plain_heads_output_and_gradients(train, batch):
    folded = SegFormerHead(list(DIMS), 32, 5).train(train)
    plain = copy.deepcopy(folded)
    plain.folded = False
    feats = [torch.randn(batch, c, s, s) for c, s in zip(DIMS, SIZES)]
    outs, grads = [], []
    for head in (folded, plain):
        inputs = [f.clone().requires_grad_() for f in feats]
        torch.manual_seed(1)  # the same dropout draws
        out = head(inputs)
        out.square().mean().backward()
        outs.append(out)
        grads.append([x.grad for x in inputs] + [p.grad for p in head.parameters()])
    assert outs[0].shape == (batch, 5, 17, 17) and outs[0].is_contiguous()
    assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    if train:  # BatchNorm's running statistics come from the same values
        assert torch.allclose(folded.linear_fuse.bn.running_var, plain.linear_fuse.bn.running_var, rtol=1e-5)


def test_the_folded_head_refuses_a_fuse_conv_it_cannot_fold():
    head = SegFormerHead(list(DIMS), 32, 5)
    head.linear_fuse.conv = torch.nn.Conv2d(128, 32, 1, bias=True)
    with pytest.raises(AssertionError):
        head([torch.randn(1, c, s, s) for c, s in zip(DIMS, SIZES)])
