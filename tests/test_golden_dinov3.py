"""The DINOv3 encoder against tensors produced by the official DINOv3 code (../shared/golden/dinov3_ref_small.pt;
DINOV3.md beside it describes them): eval features and class tokens, train-mode features, loss and every
gradient without and with the release's RoPE coordinate rescaling, and the released files' key layout loaded
with its report. Every size comes from the file. Tolerances are those the release meets against itself:
features, class tokens and losses 1e-5 absolute, gradients 1e-4 relative to each tensor's largest value.
`python -m pytest tests/test_golden_dinov3.py -rP` prints every measured error."""
import logging

import pytest
import torch

from allspark.models import WeightsError, build_model

from helpers import golden_file

ATOL = 1e-5
GRAD_RTOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return torch.load(golden_file("dinov3_ref_small.pt"), weights_only=False)


def backbone_section(golden, rescale=None, pretrained=False):
    """The ``model.backbone`` section of the file's model (its sizes and choices)."""
    c = golden["config"]
    assert c["rope_normalize_coords"] == "separate" and c["rope_dtype"] == "fp32" and c["mask_k_bias"], c
    kwargs = {"embed_dim": c["embed_dim"], "depth": c["depth"], "num_heads": c["num_heads"], "layers": golden["layers"],
              "ffn_ratio": c["ffn_ratio"], "ffn": c.get("ffn_layer", "mlp"), "qkv_bias": c["qkv_bias"],
              "n_storage_tokens": c["n_storage_tokens"], "layerscale_init": c["layerscale_init"],
              "norm_eps": c["norm_eps"], "rope_base": c["rope_base"], "patch_size": c["patch_size"],
              "rope_rescale_coords": rescale, "pretrained": pretrained}
    return {"type": "dinov3", "kwargs": kwargs}


def encoder(golden, tmp_path, rescale=None):
    """The file's encoder, its weights loaded from the released files' layout through the pretrained loader."""
    path = tmp_path / "dinov3_ref.pth"
    torch.save(golden["state_dict"], path)
    model = build_model({"backbone": backbone_section(golden, rescale, pretrained=str(path)),
                         "decoder": {"type": "dpt", "kwargs": {"num_class": 2, "features": 8,
                                                               "out_channels": [8, 8, 8, 8]}}})
    return model.backbone


def maps_and_class_tokens(model, x):
    """The release's get_intermediate_layers(x, n=layers, reshape=True, return_class_token=True, norm=True)."""
    B, _, H, W = x.shape
    p = model.patch_size
    out = model.intermediate_layers(x, return_class_token=True)
    return [t.reshape(B, H // p, W // p, -1).permute(0, 3, 1, 2).contiguous() for t, _ in out], [c for _, c in out]


def max_err(ours, ref, name, atol=ATOL):
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs().max().item()
    print(f"{name}: max abs error {err:.3g}")
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


def test_the_released_layout_loads_exactly(golden, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="allspark"):
        model = encoder(golden, tmp_path)
    n = len(golden["state_dict"])
    assert f"{n} loaded, 0 missing, 0 unexpected" in caplog.text, caplog.text
    assert set(model.state_dict()) == set(golden["state_dict"]), "the release's parameter and buffer names"
    assert [name for name, _ in model.named_parameters()] == [k for k in golden["state_dict"]
                                                              if k not in dict(model.named_buffers())]


def test_eval_features_and_class_tokens(golden, tmp_path):
    model = encoder(golden, tmp_path).eval()
    with torch.no_grad():
        feats, cls = maps_and_class_tokens(model, golden["x"])
    for i, (f, c) in enumerate(zip(feats, cls)):
        max_err(f, golden["eval"]["feats"][i], f"eval feats[{i}]")
        max_err(c, golden["eval"]["cls"][i], f"eval cls[{i}]")


@pytest.mark.parametrize("tag", ["train_norescale", "train"])
def test_train_features_loss_and_gradients(golden, tmp_path, tag):
    """Train mode, without and with the release's RoPE rescaling (its draws, after torch.manual_seed(train_seed))."""
    rescale = golden["config"]["rope_rescale_coords"] if tag == "train" else None
    model = encoder(golden, tmp_path, rescale).train()
    ref = golden[tag]
    if tag == "train":
        torch.manual_seed(golden["train_seed"])
    feats, cls = maps_and_class_tokens(model, golden["x"])
    loss = sum((f * p).sum() for f, p in zip(feats, golden["proj"])) + 0.01 * sum(c.square().sum() for c in cls)
    loss.backward()
    max_err(loss, ref["loss"], f"{tag} loss")
    for i, (f, c) in enumerate(zip(feats, cls)):
        max_err(f, ref["feats"][i], f"{tag} feats[{i}]")
        max_err(c, ref["cls"][i], f"{tag} cls[{i}]")
    params = dict(model.named_parameters())
    assert set(ref["grads"]) == set(params), "every parameter's gradient, by the release's name"
    worst = 0.0
    for name, r in ref["grads"].items():
        g = params[name].grad
        assert g is not None, f"{name}: no gradient"
        rel = ((g.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-30)).item()
        worst = max(worst, rel)
        assert rel <= GRAD_RTOL, f"{tag} grad {name}: relative error {rel:.3g}"
    print(f"{tag} gradients ({len(ref['grads'])}): worst relative error {worst:.3g}")


def test_the_rescaling_draws_the_releases_numbers_once_per_block(golden, tmp_path):
    """With rescaling, a forward draws one number per block (all of them, whatever the layers taken), as the
    release; in eval mode, or without rescaling, none."""
    model = encoder(golden, tmp_path, rescale=2.0).train()
    torch.manual_seed(0)
    model(golden["x"])
    after = torch.rand(1)
    torch.manual_seed(0)
    torch.empty(golden["config"]["depth"]).uniform_()  # one draw per block
    assert torch.equal(torch.rand(1), after)
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model(golden["x"])
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after), "eval mode draws nothing"


@pytest.mark.parametrize("buffer", ["rope_embed.periods", "blocks.0.attn.qkv.bias_mask"])
def test_a_file_whose_buffers_differ_is_refused(golden, tmp_path, buffer):
    state = dict(golden["state_dict"])
    state[buffer] = state[buffer].flip(0) * 1.5 if "periods" in buffer else 1 - state[buffer]
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=rf"{path}: the buffer {buffer} differs from the model's"):
        build_model({"backbone": backbone_section(golden, pretrained=str(path)),
                     "decoder": {"type": "dpt", "kwargs": {"num_class": 2, "features": 8, "out_channels": [8] * 4}}})


def test_periods_stored_in_bf16_load_and_are_used(golden, tmp_path):
    """A file may hold the periods rounded to bf16: accepted, and its values used, as the release uses them."""
    state = dict(golden["state_dict"])
    state["rope_embed.periods"] = state["rope_embed.periods"].bfloat16().float()
    path = tmp_path / "bf16.pth"
    torch.save(state, path)
    model = build_model({"backbone": backbone_section(golden, pretrained=str(path)),
                         "decoder": {"type": "dpt", "kwargs": {"num_class": 2, "features": 8, "out_channels": [8] * 4}}})
    assert torch.equal(model.backbone.rope_embed.periods, state["rope_embed.periods"])
