"""Encoder weights in the Hugging Face hub's layout: files written by the hub library's own model classes
(transformers' save_pretrained of small, randomly filled DINOv3, DINOv2 and SegFormer models: an independent
producer) load through ``pretrained:`` into this project's encoders, which then compute the hub models' outputs."""
import logging

import pytest
import torch

from allspark.models import WeightsError, build_model

transformers = pytest.importorskip("transformers")  # (in requirements.txt: CI has it)


def fill(model, seed=0):
    """Every parameter drawn at random (norm weights and layer scales around 1), so that a mapping that mixes
    up two tensors shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if name.endswith(("lambda1", "norm1.weight", "norm2.weight", "norm.weight", "layernorm.weight",
                                           "layer_norm.weight", "layer_norm_1.weight", "layer_norm_2.weight")) else 0.0
            p.copy_(centre + torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.1))
    return model.eval()


def encoder(backbone_type, kwargs, pretrained):
    """The encoder of a model section with ``pretrained`` (a DPT head: any patch encoder takes it)."""
    decoder = ({"type": "dpt", "kwargs": {"num_class": 2, "features": 8, "out_channels": [8] * 4}}
               if backbone_type != "mit" else
               {"type": "segformer", "kwargs": {"num_class": 2, "in_planes": kwargs["embed_dims"], "embedding_dim": 8}})
    model = build_model({"backbone": {"type": backbone_type, "kwargs": {**kwargs, "pretrained": str(pretrained)}},
                         "decoder": decoder})
    return model.backbone.eval()


def assert_close(ours, theirs, name, atol=1e-5):
    err = (ours - theirs).abs().max().item()
    print(f"{name}: max abs error {err:.3g}")
    assert ours.shape == theirs.shape and err <= atol, f"{name}: {err:.3g}"


@pytest.mark.parametrize("gated", [False, True], ids=["mlp", "swiglu"])
def test_dinov3_from_the_hub_layout(tmp_path, caplog, gated):
    """facebook/dinov3-* (DINOv3ViTModel): the MLP of ViT-S/B/L/7B's layout, or the SwiGLU of S+ / H+."""
    ratio = 6 if gated else 4
    hidden = int(64 * ratio * 2 / 3) if gated else 64 * ratio  # the release's SwiGLU width (a multiple of 8 here)
    config = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                          intermediate_size=hidden, num_register_tokens=4, patch_size=16, image_size=64,
                                          use_gated_mlp=gated, hidden_act="silu" if gated else "gelu")
    hub = fill(transformers.DINOv3ViTModel(config))
    hub.save_pretrained(tmp_path / "hub")
    with caplog.at_level(logging.INFO, logger="allspark"):
        ours = encoder("dinov3", {"embed_dim": 64, "depth": 3, "num_heads": 4, "layers": [0, 1, 2],
                                  "ffn_ratio": float(ratio), "ffn": "swiglu" if gated else "mlp"}, tmp_path / "hub")
    assert "(the Hugging Face hub's layout)" in caplog.text and "0 unexpected" in caplog.text
    # the hub files hold neither RoPE's periods nor the bias mask: the model's own are kept
    assert "2 missing" not in caplog.text or "bias_mask" in caplog.text
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        out = hub(x, output_hidden_states=True)
        mine = ours.intermediate_layers(x, return_class_token=True)
    prefix = 1 + config.num_register_tokens
    for i, (patches, cls) in enumerate(mine):
        normed = hub.norm(out.hidden_states[i + 1] if len(out.hidden_states) > 3 else out.hidden_states[i])
        assert_close(patches, normed[:, prefix:], f"dinov3 block {i} patch tokens")
        assert_close(cls, normed[:, 0], f"dinov3 block {i} class token")
    assert_close(mine[-1][0], out.last_hidden_state[:, prefix:], "dinov3 last hidden state")
    # a single .safetensors file loads the same
    ours2 = encoder("dinov3", {"embed_dim": 64, "depth": 3, "num_heads": 4, "layers": [0, 1, 2],
                               "ffn_ratio": float(ratio), "ffn": "swiglu" if gated else "mlp"},
                    tmp_path / "hub" / "model.safetensors")
    for (k, a), b in zip(ours.state_dict().items(), ours2.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_dinov2_from_the_hub_layout(tmp_path, caplog, swiglu):
    """facebook/dinov2-* (Dinov2Model), the MLP of ViT-S/B/L or the SwiGLU of ViT-g."""
    config = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=70,
                                       patch_size=14, mlp_ratio=4, use_swiglu_ffn=swiglu)
    hub = fill(transformers.Dinov2Model(config))
    hub.save_pretrained(tmp_path / "hub")
    with caplog.at_level(logging.INFO, logger="allspark"):
        ours = encoder("dinov2", {"embed_dim": 48, "depth": 3, "num_heads": 2, "layers": [0, 1, 2], "img_size": 70,
                                  "ffn": "swiglu" if swiglu else "mlp"}, tmp_path / "hub")
    assert "(the Hugging Face hub's layout)" in caplog.text and "0 missing, 0 unexpected" in caplog.text
    x = torch.randn(2, 3, 70, 70)  # the grid the position embedding was made for
    with torch.no_grad():
        out = hub(x, output_hidden_states=True)
        mine = ours(x)
    for i, patches in enumerate(mine):
        assert_close(patches, hub.layernorm(out.hidden_states[i + 1])[:, 1:], f"dinov2 block {i} patch tokens")


def test_mit_from_the_hub_layout(tmp_path, caplog):
    """nvidia/mit-b* (SegformerForImageClassification: the encoder under 'segformer.', an ImageNet classifier)."""
    dims, depths = [16, 32, 40, 64], [1, 2, 1, 1]
    config = transformers.SegformerConfig(hidden_sizes=dims, depths=depths, num_attention_heads=[1, 2, 5, 8],
                                          sr_ratios=[8, 4, 2, 1], num_labels=10)
    hub = fill(transformers.SegformerForImageClassification(config))
    hub.save_pretrained(tmp_path / "hub")
    with caplog.at_level(logging.INFO, logger="allspark"):
        ours = encoder("mit", {"embed_dims": dims, "depths": depths, "num_heads": [1, 2, 5, 8]}, tmp_path / "hub")
    assert "(the Hugging Face hub's layout)" in caplog.text and "0 missing, 0 unexpected" in caplog.text
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        theirs = hub.segformer(x, output_hidden_states=True).hidden_states
        mine = ours(x)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        # transformers' SegFormer layer norms use eps 1e-5 where SegFormer's own (and this project's) use 1e-6
        assert_close(a, b, f"mit stage {i + 1}", atol=1e-3)


def test_a_hub_folder_without_weights_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"empty holds no model.safetensors"):
        encoder("dinov3", {"embed_dim": 64, "depth": 1, "num_heads": 4, "layers": [0]}, tmp_path / "empty")
