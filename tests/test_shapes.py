"""Output shapes and the forward contract, for every MiT preset."""
import pytest
import torch

from allspark.models import MIT_PRESETS, build_model

from helpers import tiny_model_cfg, zero_dropout


def preset_cfg(preset, decoder="allspark", num_class=4, image_size=65):
    dims = MIT_PRESETS[preset]["embed_dims"]
    return {"backbone": {"type": preset, "kwargs": {}},
            "decoder": {"type": decoder, "kwargs": {"num_class": num_class, "in_planes": dims, "image_size": image_size,
                                                    "warmup_epoch": 1, "embedding_dim": 32}}}


@pytest.mark.parametrize("preset", sorted(MIT_PRESETS))
def test_preset_eval_shapes(preset):
    model = build_model(preset_cfg(preset)).eval()
    dims = MIT_PRESETS[preset]["embed_dims"]
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
        assert [tuple(f.shape) for f in feats] == [(1, d, 64 // s, 96 // s) for d, s in zip(dims, (4, 8, 16, 32))]
        for size in [(64, 64), (65, 97), (97, 33)]:  # square, and non-square eval inputs
            assert model(torch.randn(2, 3, *size)).shape == (2, 4, *size)


@pytest.mark.parametrize("use_memory", [False, True])
def test_allspark_train_forward_shape(use_memory):
    model = build_model(preset_cfg("mit_b0", image_size=65)).train()
    logits = model(torch.randn(4, 3, 65, 65), pseudo_logits=torch.randn(2, 4, 65, 65), use_memory=use_memory)
    assert logits.shape == (4, 4, 65, 65)
    logits.mean().backward()
    assert model.decoder.allspark.attn.q_l2u.weight.grad is not None


def test_segformer_decoder_shapes_and_memory_refused():
    model = build_model(preset_cfg("mit_b0", decoder="segformer")).train()
    assert model(torch.randn(2, 3, 64, 80)).shape == (2, 4, 64, 80)
    with pytest.raises(ValueError, match="use_memory=True needs the 'allspark' decoder"):
        model(torch.randn(2, 3, 64, 64), use_memory=True)


def test_allspark_train_forward_contract_errors():
    model = build_model(tiny_model_cfg(image_size=65)).train()
    with pytest.raises(ValueError, match="needs pseudo_logits"):
        model(torch.randn(4, 3, 65, 65))
    with pytest.raises(ValueError, match="equal labeled and unlabeled halves"):
        model(torch.randn(3, 3, 65, 65), pseudo_logits=torch.randn(1, 5, 65, 65))
    with pytest.raises(ValueError, match="pseudo_logits has 1 images, the unlabeled half 2"):
        model(torch.randn(4, 3, 65, 65), pseudo_logits=torch.randn(1, 5, 65, 65))
    with pytest.raises(ValueError, match="train with crops of the decoder's image_size"):
        model(torch.randn(4, 3, 97, 97), pseudo_logits=torch.randn(2, 5, 97, 97))


def test_dropout_lives_in_dropout_modules():
    """With every nn.Dropout / nn.Dropout2d at p=0 (and drop_path 0) a train-mode forward is deterministic."""
    model = build_model(tiny_model_cfg()).train()
    x, p = torch.randn(4, 3, 65, 65), torch.randn(2, 5, 65, 65)
    assert not torch.equal(model(x, pseudo_logits=p), model(x, pseudo_logits=p))
    zero_dropout(model)
    assert torch.equal(model(x, pseudo_logits=p), model(x, pseudo_logits=p))


def test_eval_ignores_memory_and_pseudo_logits():
    model = build_model(tiny_model_cfg()).eval()
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(model(x, pseudo_logits=torch.randn(2, 5, 65, 65), use_memory=True), ref)
