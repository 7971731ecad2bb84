"""build_model's config handling: aliases, and an error that names the key for every bad section."""
import copy

import pytest
import yaml

from allspark.config import ConfigError, load_yaml
from allspark.models import build_model

from helpers import ROOT, tiny_model_cfg

RELEASE_STYLE = """
model:
  backbone:
    type: model.backbone.mit.mit_b0
    kwargs:
      embed_dims: [32, 64, 160, 256]
      pretrained: False
  decoder:
    type: model.semseg.allspark.SemiDecoder
    kwargs:
      num_heads: 2
      num_class: 3
      in_planes: [32, 64, 160, 256]
      image_size: 65
      warmup_epoch: 5
      embedding_dim: 16
"""


def test_release_type_names_build():
    cfg = yaml.safe_load(RELEASE_STYLE)["model"]
    model = build_model(cfg)
    assert model.decoder.warmup_epoch == 5
    assert model.decoder.allspark.attn.kv_queue.shape == (3, 256, 9)
    cfg["decoder"]["type"] = "model.semseg.semidec_base.SemiDecoder"
    assert not hasattr(build_model(cfg).decoder, "allspark")


@pytest.mark.parametrize("name", ["pascal", "cityscapes", "coco"])
def test_shipped_configs_describe_the_release_model(name):
    model_cfg = load_yaml(ROOT / "configs" / f"{name}_allspark.yaml")["model"]
    assert model_cfg["backbone"] == {"type": "mit_b5", "kwargs": {"pretrained": True}}
    kwargs = model_cfg["decoder"]["kwargs"]
    expected = {"pascal": (21, 513, 5), "cityscapes": (19, 801, 15), "coco": (81, 513, 2)}[name]
    assert (kwargs["num_class"], kwargs["image_size"], kwargs["warmup_epoch"]) == expected
    assert (kwargs["num_heads"], kwargs["embedding_dim"]) == (2, 768)


def broken(path, value):
    """tiny_model_cfg with the entry at ``path`` (a tuple of keys) replaced, or deleted when value is ...."""
    cfg = copy.deepcopy(tiny_model_cfg())
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


@pytest.mark.parametrize("path, value, pattern", [
    (("backbone", "type"), "mit_b9", r"model\.backbone\.type: unknown type 'mit_b9'; valid types: \['dinov2', .*'mit', 'mit_b0'"),
    (("decoder", "type"), "deeplab", r"model\.decoder\.type: unknown type 'deeplab'; valid types: \['allspark', 'dpt', 'segformer'\]"),
    (("backbone", "kwargs", "embed_dim"), 3, r"model\.backbone\.kwargs: unknown keyword\(s\) \['embed_dim'\].*valid keywords: \[.*'embed_dims'"),
    (("decoder", "kwargs", "num_classes"), 3, r"model\.decoder\.kwargs: unknown keyword\(s\) \['num_classes'\].*'num_class'"),
    (("decoder", "kwargs", "warmup_epoch"), ..., r"model\.decoder\.kwargs: missing keyword\(s\) \['warmup_epoch'\]"),
    (("decoder", "kwargs", "in_planes"), [16, 32, 40, 128], r"in_planes \[16, 32, 40, 128\] differs from the backbone's embed_dims \[16, 32, 40, 64\]"),
    (("decoder",), ..., r"model\.decoder must be a mapping"),
    (("backbone", "kwarg"), {}, r"model\.backbone: unknown key\(s\) \['kwarg'\]"),
    (("backbone", "kwargs", "depths"), [1, 1, 1], r"depths must have 4 entries"),
    (("backbone", "kwargs"), [1], r"model\.backbone\.kwargs must be a mapping"),
    (("head",), {}, r"model: unknown key\(s\) \['head'\]"),
])
def test_config_errors_name_the_key(path, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_model(broken(path, value))


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
