"""activation_checkpointing: the encoder blocks recompute their activations in backward; the loss and every
gradient stay those of the plain model (drop-path's random draws are replayed)."""
import pytest
import torch

from allspark.config import ConfigError, load_training_config
from allspark.models import build_model

from helpers import ROOT, tiny_dinov3_cfg, tiny_dpt_cfg, tiny_model_cfg


def loss_and_grads(cfg, checkpointing, size):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.backbone.set_grad_checkpointing(checkpointing)
    blocks = [m for name, m in model.backbone.named_modules() if name in ("block1.0", "blocks.0")]
    calls = []
    blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # (recomputation may stop early)
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    loss = model(x).square().mean()
    loss.backward()
    assert len(calls) == (2 if checkpointing else 1), "a checkpointed block runs again in backward"
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("encoder", ["mit", "dinov2", "dinov3"])
def test_same_loss_and_gradients(encoder):
    cfg = {"mit": lambda: tiny_model_cfg(num_class=3, decoder="segformer"), "dinov2": lambda: tiny_dpt_cfg(num_class=3),
           "dinov3": lambda: tiny_dinov3_cfg(num_class=3)}[encoder]()
    cfg["backbone"]["kwargs"]["drop_path_rate"] = 0.2  # random draws in every block
    if encoder == "dinov3":
        cfg["backbone"]["kwargs"]["rope_rescale_coords"] = 2.0  # and in every block's RoPE
    size = {"mit": 65, "dinov2": 56, "dinov3": 64}[encoder]
    plain, plain_grads = loss_and_grads(cfg, False, size)
    ckpt, ckpt_grads = loss_and_grads(cfg, True, size)
    assert torch.equal(plain, ckpt)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, g in plain_grads.items():
        assert torch.allclose(g, ckpt_grads[name], rtol=1e-5, atol=1e-7), name


def test_config_key_is_checked():
    assert load_training_config(ROOT / "configs/toy_allspark.yaml")["activation_checkpointing"] is False
    with pytest.raises(ConfigError, match="activation_checkpointing must be bool"):
        load_training_config(ROOT / "configs/toy_allspark.yaml", overrides=["activation_checkpointing=maybe"])
