"""Bilinear resizing in the layout that is fast for it gives the same values; the benchmark counts host reads."""
import pytest
import torch
import torch.nn.functional as F

from allspark.benchmark import count_host_syncs
from allspark.models.resize import resize_bilinear


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bilinear_equals_interpolate_of_a_channels_last_view(batch, align_corners):
    tokens = torch.randn(batch, 5 * 7, 12)
    x = tokens.transpose(1, 2).view(batch, 12, 5, 7)  # channels-last view, as the SegFormer head makes
    assert not x.is_contiguous()
    ours = resize_bilinear(x, (17, 23), align_corners)
    assert torch.equal(ours, F.interpolate(x, size=(17, 23), mode="bilinear", align_corners=align_corners))
    assert ours.is_contiguous() == (batch == 1)  # a batch of one goes the contiguous way


def test_host_reads_are_counted_and_torch_restored():
    item = torch.Tensor.item

    def step():
        x = torch.randn(3)
        x.sum().item()
        x.tolist()
        if x[0] > 10:  # a truth value: one more read
            pass

    assert count_host_syncs(step, torch.device("cpu")) == 3
    assert torch.Tensor.item is item
    assert count_host_syncs(lambda: torch.randn(3) * 2, torch.device("cpu")) == 0
