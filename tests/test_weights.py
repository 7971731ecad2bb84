"""Pretrained encoder loading and checkpoint loading, on files the tests generate."""
import logging

import pytest
import torch

from allspark.models import WeightsError, build_model, load_checkpoint
from allspark.models.mit import mit_b0

from helpers import golden_file, tiny_model_cfg


def b0_cfg(pretrained):
    return {"backbone": {"type": "mit_b0", "kwargs": {"pretrained": pretrained}},
            "decoder": {"type": "segformer", "kwargs": {"num_class": 3, "in_planes": [32, 64, 160, 256],
                                                        "embedding_dim": 16}}}


@pytest.fixture
def imagenet_b0():
    """A state dict shaped like SegFormer's mit_b0.pth: encoder keys plus the ImageNet classifier."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in mit_b0().state_dict().items()}
    state["head.weight"] = torch.randn(1000, 256)
    state["head.bias"] = torch.randn(1000)
    return state


def assert_backbone_equals(model, state):
    own = model.backbone.state_dict()
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_pretrained_path_loads_every_layout(tmp_path, imagenet_b0, wrap, caplog):
    path = tmp_path / "weights.pth"
    torch.save(imagenet_b0 if wrap is None else {wrap: imagenet_b0}, path)
    with caplog.at_level(logging.INFO, logger="allspark"):
        model = build_model(b0_cfg(str(path)))
    assert_backbone_equals(model, imagenet_b0)
    n = len(mit_b0().state_dict())
    assert f"{n} loaded, 0 missing, 0 unexpected" in caplog.text  # the classifier head.* is dropped first


def test_pretrained_true_reads_pretrained_weights_folder(tmp_path, monkeypatch, imagenet_b0):
    (tmp_path / "pretrained_weights").mkdir()
    torch.save(imagenet_b0, tmp_path / "pretrained_weights" / "mit_b0.pth")
    monkeypatch.chdir(tmp_path)
    assert_backbone_equals(build_model(b0_cfg(True)), imagenet_b0)


def test_pretrained_partial_file_reports_missing(tmp_path, imagenet_b0, caplog):
    partial = {k: v for k, v in imagenet_b0.items() if not k.startswith("block4.")}
    partial["dist_token"] = torch.zeros(1, 1, 256)  # a key the encoder does not have
    torch.save(partial, tmp_path / "partial.pth")
    with caplog.at_level(logging.INFO, logger="allspark"):
        build_model(b0_cfg(str(tmp_path / "partial.pth")))
    n_block4 = sum(k.startswith("block4.") for k in imagenet_b0)
    assert f"{n_block4} missing, 1 unexpected" in caplog.text


def test_pretrained_missing_file_says_where_and_what(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError) as info:
        build_model(b0_cfg(True))
    msg = str(info.value)
    assert str(tmp_path / "pretrained_weights" / "mit_b0.pth") in msg
    assert "SegFormer" in msg and "ImageNet" in msg


def test_pretrained_missing_explicit_path(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.pth"):
        build_model(b0_cfg(str(tmp_path / "nowhere.pth")))


def test_pretrained_wrong_shape(tmp_path, imagenet_b0):
    imagenet_b0["patch_embed1.proj.weight"] = torch.randn(32, 3, 5, 5)
    torch.save(imagenet_b0, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"patch_embed1\.proj\.weight: file \(32, 3, 5, 5\) vs model \(32, 3, 7, 7\)"):
        build_model(b0_cfg(str(tmp_path / "w.pth")))


def test_pretrained_zero_matching_keys(tmp_path):
    torch.save({"encoder.layer0.weight": torch.randn(3, 3)}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="no key of .*w.pth matches the backbone"):
        build_model(b0_cfg(str(tmp_path / "w.pth")))


def test_pretrained_true_needs_a_preset():
    cfg = tiny_model_cfg()
    cfg["backbone"]["kwargs"]["pretrained"] = True
    with pytest.raises(WeightsError, match="preset"):
        build_model(cfg)


def test_pretrained_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="w.pth holds a list"):
        build_model(b0_cfg(str(tmp_path / "w.pth")))


# ---- checkpoints ----------------------------------------------------------------------------------

def release_checkpoint(model, path, prefix="module."):
    """The release's format: a DDP state dict under 'model' plus the optimizer and progress."""
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
                "epoch": 3, "best_epoch": 2, "previous_best": 61.5}, path)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_load_checkpoint_release_and_own_format(tmp_path, prefix):
    src = build_model(tiny_model_cfg())
    release_checkpoint(src, tmp_path / "ckpt.pth", prefix)
    dst = build_model(tiny_model_cfg())
    ckpt = load_checkpoint(dst, tmp_path / "ckpt.pth")
    assert ckpt["epoch"] == 3 and ckpt["previous_best"] == 61.5
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_load_checkpoint_from_golden_state_dict(tmp_path):
    golden = torch.load(golden_file("allspark_ref_small.pt"), weights_only=False)
    torch.save({"model": {"module." + k: v for k, v in golden["state_dict"].items()}, "epoch": 0}, tmp_path / "g.pth")
    model = build_model(tiny_model_cfg())
    load_checkpoint(model, tmp_path / "g.pth")
    assert torch.equal(model.decoder.allspark.attn.kv_queue, golden["state_dict"]["decoder.allspark.attn.kv_queue"])


def test_load_checkpoint_other_class_count(tmp_path):
    release_checkpoint(build_model(tiny_model_cfg(num_class=7)), tmp_path / "c.pth")
    with pytest.raises(WeightsError) as info:
        load_checkpoint(build_model(tiny_model_cfg(num_class=5)), tmp_path / "c.pth")
    msg = str(info.value)
    assert "trained for 7 classes, the model has 5" in msg
    assert "linear_pred.weight: file (7, 32, 1, 1) vs model (5, 32, 1, 1)" in msg
    assert len(msg) < 1500


def test_load_checkpoint_published_weights_hint(tmp_path):
    state = build_model(tiny_model_cfg()).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("decoder.allspark.attn.")}
    for i in range(200):
        state[f"decoder.allspark.encoder.layer.0.attn.w{i}"] = torch.zeros(1)
    state["decoder.allspark.embeddings.patch.weight"] = torch.zeros(1)
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, tmp_path / "published.pth")
    with pytest.raises(WeightsError) as info:
        load_checkpoint(build_model(tiny_model_cfg()), tmp_path / "published.pth")
    msg = str(info.value)
    assert "201 unexpected" in msg and "missing" in msg
    assert "published next to the AllSpark release" in msg
    assert len(msg) < 1500, "the error must stay short, not list every key"


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint not found: .*none.pth"):
        load_checkpoint(build_model(tiny_model_cfg()), tmp_path / "none.pth")


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    torch.save({"model": build_model(tiny_model_cfg())}, tmp_path / "pickled.pth")  # a module, not a state dict
    with pytest.raises(WeightsError, match="cannot read weights file .*pickled.pth"):
        load_checkpoint(build_model(tiny_model_cfg()), tmp_path / "pickled.pth")
