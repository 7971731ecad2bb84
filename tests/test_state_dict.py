"""State-dict keys and shapes identical to the release's checkpoints and SegFormer's encoders (models built on
the meta device: shapes without memory or initialisation)."""
import json

import pytest
import torch

from allspark.config import load_yaml
from allspark.models import build_model
from allspark.models.mit import MixVisionTransformer, mit_b2, mit_b3, mit_b4, mit_b5

from helpers import ROOT, golden_file


@pytest.fixture(scope="module")
def official():
    return json.loads(golden_file("official_state_dict_keys.json").read_text())


def shapes(module, prefix=""):
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def on_meta(build, *args):
    with torch.device("meta"):
        return build(*args)


@pytest.mark.parametrize("dataset", ["pascal", "cityscapes", "coco"])
def test_allspark_configs_match_release_checkpoints(official, dataset):
    model_cfg = load_yaml(ROOT / "configs" / f"{dataset}_allspark.yaml")["model"]
    model_cfg["backbone"]["kwargs"]["pretrained"] = False  # the ImageNet file is not part of the tests
    ours = shapes(on_meta(build_model, model_cfg), prefix="module.")
    ref = official[f"{dataset}_allspark_mit_b5"]
    assert sorted(set(ref) - set(ours)) == [], "keys of the release missing here"
    assert sorted(set(ours) - set(ref)) == [], "keys here the release does not have"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert wrong == {}
    assert list(ours) == list(ref), "same keys, but in another order than the release's"


@pytest.mark.parametrize("factory", [mit_b2, mit_b3, mit_b4, mit_b5], ids=lambda f: f.__name__)
def test_mit_presets_match_segformer_encoders(official, factory):
    assert shapes(on_meta(factory)) == official[f"backbone_{factory.__name__}"]


def test_generic_mit_equals_preset():
    generic = on_meta(lambda: MixVisionTransformer(embed_dims=[64, 128, 320, 512], num_heads=[1, 2, 5, 8],
                                                   depths=[3, 4, 6, 3], sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4],
                                                   drop_path_rate=0.1))
    assert shapes(generic) == shapes(on_meta(mit_b2))
