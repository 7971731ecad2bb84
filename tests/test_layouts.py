"""Memory layouts: every gradient comes back in its parameter's layout and the logits are contiguous; bilinear
resizing in the layout that is fast for it gives the same values; the benchmark counts host reads."""
import pytest
import torch
import torch.nn.functional as F

from allspark.models import build_model
from allspark.models.resize import resize_bilinear
from allspark.tools.benchmark import count_host_syncs

from helpers import tiny_dinov2_allspark_cfg, tiny_dpt_cfg, tiny_model_cfg

MODELS = {  # name: (model section, training crop)
    "allspark": (tiny_model_cfg(), 65),
    "segformer": (tiny_model_cfg(decoder="segformer"), 65),
    "unimatch_v2": (tiny_dpt_cfg(), 70),
    "allspark_dinov2_dpt": (tiny_dinov2_allspark_cfg("dpt"), 70),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_have_their_parameters_layout_and_logits_are_contiguous(name):
    """DDP's gradient buckets have the parameters' layout. A convolution of a channels-last map returns its
    weight gradient channels-last: autograd copies a k x k one into the parameter's layout every step, and
    one whose strides differ on size-1 dimensions only ((O, 1, 3, 3) depth-wise, 1x1) reaches DDP as it is,
    which warns. The 1x1 convolutions see contiguous maps and MiT's depth-wise weights are held channels-last,
    so every gradient has its parameter's strides; the logits are contiguous (the loss copies nothing)."""
    cfg, crop = MODELS[name]
    model = build_model(cfg)
    # weights in the default (contiguous) strides, as a release checkpoint holds them, keep the model's layout
    model.load_state_dict({k: v.clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()})
    x = torch.randn(4, 3, crop, crop)
    if "allspark" in name:
        model.eval()
        with torch.no_grad():
            pseudo = model(x[2:])
        model.train()
        out = model(x, pseudo_logits=pseudo, use_memory=True)
    elif name == "unimatch_v2":
        out = model(x, comp_drop=True)  # the strong views' forward
    else:
        out = model(x)
    assert out.is_contiguous()
    out.square().mean().backward()
    differing = [(n, tuple(p.stride()), tuple(p.grad.stride())) for n, p in model.named_parameters()
                 if p.grad is not None and p.grad.stride() != p.stride()]
    assert not differing
    assert sum(p.grad is not None for p in model.parameters()) > len(list(model.parameters())) // 2


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bilinear_equals_interpolate_of_a_channels_last_view(batch, align_corners):
    tokens = torch.randn(batch, 5 * 7, 12)
    x = tokens.transpose(1, 2).view(batch, 12, 5, 7)  # channels-last view, as the SegFormer head makes
    assert not x.is_contiguous()
    ours = resize_bilinear(x, (17, 23), align_corners)
    assert torch.equal(ours, F.interpolate(x, size=(17, 23), mode="bilinear", align_corners=align_corners))
    assert ours.is_contiguous() == (batch == 1)  # a batch of one goes the contiguous way


def test_host_reads_are_counted_for_the_step_only():
    item = torch.Tensor.item

    def step():
        x = torch.randn(3)
        x.sum().item()
        x.tolist()
        if x[0] > 10:  # a truth value: one more read
            pass

    assert count_host_syncs(step, torch.device("cpu")) == 3
    assert torch.Tensor.item is item, "torch's classes are not patched"
    assert count_host_syncs(lambda: torch.randn(3) * 2, torch.device("cpu")) == 0
