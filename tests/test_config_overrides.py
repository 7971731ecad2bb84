"""Config overrides (--opts), the releases' own config files, a dataset described in the config, OHEM's warning."""
import logging

import pytest
import torch

from allspark.config import PROJECT_ROOT, ConfigError, load_training_config
from allspark.engine.losses import OhemCrossEntropy

TOY = PROJECT_ROOT / "configs" / "toy_allspark.yaml"

# The AllSpark release's configs/cityscapes_allspark.yaml, key for key (its paths and no val_id_path).
ALLSPARK_RELEASE = """
dataset: cityscapes
nclass: 19
crop_size: 801
data_root: ./cityscapes
epochs: 240
batch_size: 2
lr: 0.005
lr_multi: 1.0
criterion: {name: OHEM, kwargs: {ignore_index: 255, thresh: 0.7, min_kept: 200000}}
criterion_u: {name: CELoss, kwargs: {ignore_index: 255}}
model:
  backbone: {type: model.backbone.mit.mit_b5, kwargs: {embed_dims: [64, 128, 320, 512], pretrained: True}}
  decoder:
    type: model.semseg.allspark.SemiDecoder
    kwargs: {num_heads: 2, num_class: 19, in_planes: [64, 128, 320, 512], image_size: 801, warmup_epoch: 15,
             embedding_dim: 768}
"""
# UniMatch V2's configs/pascal.yaml, key for key.
UNIMATCH_V2_RELEASE = """
dataset: pascal
data_root: Your/Pascal/Path
nclass: 21
crop_size: 518
epochs: 60
batch_size: 4
lr: 0.000005
lr_multi: 40.0
criterion: {name: CELoss, kwargs: {ignore_index: 255}}
conf_thresh: 0.95
model: dpt
backbone: dinov2_base
lock_backbone: False
"""


def test_opts_are_typed_and_checked():
    cfg = load_training_config(TOY, overrides=["lr=0.01", "epochs=2", "amp=bf16", "eval_scales=[1.0, 1.5]",
                                               "criterion.kwargs.ignore_index=255", "eval_flip=false"])
    assert (cfg["lr"], cfg["epochs"], cfg["amp"], cfg["eval_scales"], cfg["eval_flip"]) == (0.01, 2, "bf16", [1.0, 1.5], False)
    with pytest.raises(ConfigError, match=r"epochs must be int, got 'two'"):
        load_training_config(TOY, overrides=["epochs=two"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        load_training_config(TOY, overrides=["learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"expected key=value, got 'lr'"):
        load_training_config(TOY, overrides=["lr"])
    with pytest.raises(ConfigError, match=r"lr is not a section, cannot set lr.x"):
        load_training_config(TOY, overrides=["lr.x=1"])
    assert load_training_config(TOY, overrides=["method=semi", "model.decoder.type=segformer"])["method"] == "semi"


def test_exponents_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 5e-6 as a string; a config's lr: 5e-6 (or --opts lr=5e-6) is the number it looks like."""
    assert load_training_config(TOY, overrides=["lr=5e-6"])["lr"] == 5e-6
    text = TOY.read_text().replace("lr: 0.0025", "lr: 2.5e-3\nlr_multi: 1E+1")
    assert "2.5e-3" in text and "lr_multi: 10.0" in text
    (tmp_path / "c.yaml").write_text(text.replace("lr_multi: 10.0\n", ""))
    cfg = load_training_config(tmp_path / "c.yaml")
    assert (cfg["lr"], cfg["lr_multi"]) == (0.0025, 10.0)
    with pytest.raises(ConfigError, match=r"lr must be int or float, got 'e5'"):
        load_training_config(TOY, overrides=["lr=e5"])


def test_allspark_release_config_loads_with_a_note(tmp_path, caplog):
    path = tmp_path / "cityscapes_allspark.yaml"
    path.write_text(ALLSPARK_RELEASE)
    with caplog.at_level(logging.WARNING, logger="allspark"):
        cfg = load_training_config(path, method="allspark")
    assert "criterion_u" not in cfg and "key 'criterion_u' (from the release's configs) has no effect" in caplog.text
    assert cfg["val_id_path"] == "splits/cityscapes/val.txt"  # where the release reads it
    ours = load_training_config(PROJECT_ROOT / "configs" / "cityscapes_allspark.yaml")
    for key in ("nclass", "crop_size", "epochs", "batch_size", "lr", "lr_multi", "criterion", "val_id_path"):
        assert cfg[key] == ours[key], key


def test_unimatch_v2_release_config_loads(tmp_path):
    path = tmp_path / "pascal.yaml"
    path.write_text(UNIMATCH_V2_RELEASE)
    cfg = load_training_config(path)
    assert cfg["method"] == "unimatch_v2" and cfg["conf_thresh"] == 0.95
    assert cfg["model"]["backbone"] == {"type": "dinov2_base", "kwargs": {"pretrained": True}}
    assert cfg["model"]["decoder"]["kwargs"] == {"num_class": 21, "features": 128, "out_channels": [96, 192, 384, 768],
                                                 "use_bn": False}
    path.write_text(UNIMATCH_V2_RELEASE.replace("dinov2_base", "resnet101"))
    with pytest.raises(ConfigError, match=r"backbone must be one of \['dinov2_small'.*got 'resnet101'"):
        load_training_config(path)


@pytest.mark.parametrize("opts, pattern", [
    (["classes=[a, b]"], r"classes must be a list of 5 names"),
    (["palette=[[0, 0, 0]]"], r"palette must be a list of at least 5 colours"),
    (["palette=[[0,0,0],[1,1,1],[2,2,2],[3,3,3],[4,4,300]]"], r"palette must be"),
    (["ignore_index=3"], r"ignore_index must be a mask value that is not a class \(0..4\), got 3"),
    (["ignore_index=5", "reduce_zero_label=true"], r"not a class \(1..5\), got 5"),
])
def test_dataset_description_errors(opts, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_training_config(TOY, overrides=opts)


def test_ade20k_masks_store_classes_from_1_unless_told_otherwise():
    ade = PROJECT_ROOT / "configs" / "ade20k_allspark.yaml"
    assert load_training_config(ade, overrides=["ignore_index=0"])["ignore_index"] == 0  # "other": not a class
    with pytest.raises(ConfigError, match=r"not a class \(1..150\), got 150"):
        load_training_config(ade, overrides=["ignore_index=150"])
    assert load_training_config(ade, overrides=["reduce_zero_label=false", "ignore_index=150"])["ignore_index"] == 150


def test_list_defaults_are_each_configs_own():
    a, b = load_training_config(TOY), load_training_config(TOY)
    a["eval_scales"].append(3.0)
    assert b["eval_scales"] == [0.75, 1.0, 1.25, 1.5]


def test_ohem_warns_when_the_batch_is_smaller_than_min_kept(caplog):
    loss = OhemCrossEntropy(min_kept=1000)
    pred, target = torch.randn(2, 3, 10, 10), torch.randint(0, 3, (2, 10, 10))
    with caplog.at_level(logging.WARNING, logger="allspark"):
        value = loss(pred, target)
        loss(pred, target)
    assert caplog.text.count("OHEM: min_kept 1000 exceeds the 200 pixels of a batch (2 x 10 x 10)") == 1
    assert torch.allclose(value, torch.nn.functional.cross_entropy(pred, target))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="allspark"):
        OhemCrossEntropy(min_kept=100)(pred, target)
    assert "OHEM" not in caplog.text
