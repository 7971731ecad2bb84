"""UniMatch V2's parts on generated inputs: DINOv2 presets and weights, the DPT model's contract, the
strong views and CutMix boxes of the dataset, patch-14 evaluation, sliding-window edges, and the method's
config, optimizer and EMA."""
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from allspark.config import PROJECT_ROOT, ConfigError, load_training_config
from allspark.data import SemiDataset
from allspark.data.transforms import MEAN, STD, cutmix_box
from allspark.engine.evaluate import logits_at_any_size, multiscale, sliding_window
from allspark.methods import UniMatchV2
from allspark.methods.weak_to_strong import cutmix, ema_ratio
from allspark.models import WeightsError, build_model
from allspark.models.dinov2 import DINOV2_PRESETS, dinov2_giant

from helpers import TINY_DINOV2, make_tree, tiny_dpt_cfg


def dpt_cfg(backbone=None, pretrained=False, backbone_type="dinov2", num_class=5):
    """The tiny DPT model; ``backbone`` (keywords) and ``backbone_type`` replace the tiny DINOv2."""
    cfg = tiny_dpt_cfg(num_class)
    kwargs = dict(TINY_DINOV2["kwargs"] if backbone is None else backbone, pretrained=pretrained)
    cfg["backbone"] = {"type": backbone_type, "kwargs": kwargs}
    return cfg


def test_presets_are_the_releases():
    assert {k: (v["embed_dim"], v["depth"], v["num_heads"], v["layers"]) for k, v in DINOV2_PRESETS.items()} == {
        "dinov2_small": (384, 12, 6, [2, 5, 8, 11]), "dinov2_base": (768, 12, 12, [2, 5, 8, 11]),
        "dinov2_large": (1024, 24, 16, [4, 11, 17, 23]), "dinov2_giant": (1536, 40, 24, [9, 19, 29, 39])}


def test_giant_uses_dinov2s_swiglu_names_and_width():
    vit = dinov2_giant(embed_dim=48, depth=1, num_heads=2, layers=[0])
    names = {k: tuple(v.shape) for k, v in vit.state_dict().items() if ".mlp." in k}
    hidden = (int(4 * 48 * 2 / 3) + 7) // 8 * 8  # DINOv2's SwiGLUFFNFused
    assert names == {"blocks.0.mlp.w12.weight": (2 * hidden, 48), "blocks.0.mlp.w12.bias": (2 * hidden,),
                     "blocks.0.mlp.w3.weight": (48, hidden), "blocks.0.mlp.w3.bias": (48,)}
    assert len(vit(torch.randn(1, 3, 28, 28))) == 1


def test_model_shapes_and_complementary_dropout():
    model = build_model(dpt_cfg()).eval()
    assert model.input_multiple == 14
    x = torch.randn(4, 3, 56, 42)
    with torch.no_grad():
        assert model(x).shape == (4, 5, 56, 42)
        ones = torch.ones(4, 48)
        assert torch.equal(model(x, comp_drop=True, comp_drop_mask=ones), model(x)), "mask 1 changes nothing"
        zero_first = ones.clone()
        zero_first[0] = 0
        out = model(x, comp_drop=True, comp_drop_mask=zero_first)
        assert torch.equal(out[1:], model(x)[1:]) and not torch.equal(out[0], model(x)[0])
        g = torch.Generator().manual_seed(3)
        a = model(x, comp_drop=True, generator=g)
        b = model(x, comp_drop=True, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b), "the draw comes from the generator"
    with pytest.raises(ValueError, match="two views of equal batch"):
        model(torch.randn(3, 3, 28, 28), comp_drop=True)


def test_dpt_needs_a_patch_encoder():
    cfg = dpt_cfg()
    cfg["backbone"] = {"type": "mit_b0", "kwargs": {}}
    with pytest.raises(ConfigError, match="dpt needs a patch encoder"):
        build_model(cfg)


def official_file(tmp_path, **changes):
    """A state dict shaped like the official dinov2_vits14_pretrain.pth (no prefix, mask_token included)."""
    state = {k: torch.randn_like(v) for k, v in build_model(dpt_cfg()).backbone.state_dict().items()}
    state.update(changes)
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    return state


def test_official_weights_load_with_a_report(tmp_path, caplog):
    state = official_file(tmp_path)
    with caplog.at_level("INFO", logger="allspark"):
        model = build_model(dpt_cfg(pretrained=str(tmp_path / "dinov2_vits14_pretrain.pth")))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert f"{len(state)} loaded, 0 missing, 0 unexpected" in caplog.text


def test_weights_report_missing_and_unexpected_and_refuse_shapes(tmp_path, caplog):
    state = official_file(tmp_path)
    del state["mask_token"]
    state["register_tokens"] = torch.zeros(1, 4, 48)
    torch.save(state, tmp_path / "w.pth")
    with caplog.at_level("INFO", logger="allspark"):
        build_model(dpt_cfg(pretrained=str(tmp_path / "w.pth")))
    assert "missing (left at their initialisation) ['mask_token']" in caplog.text
    assert "unexpected (ignored) ['register_tokens']" in caplog.text
    official_file(tmp_path, pos_embed=torch.zeros(1, 257, 48))
    with pytest.raises(WeightsError, match=r"pos_embed: file \(1, 257, 48\) vs model \(1, 1370, 48\)"):
        build_model(dpt_cfg(pretrained=str(tmp_path / "dinov2_vits14_pretrain.pth")))


def test_pretrained_true_looks_for_the_official_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = dict(DINOV2_PRESETS["dinov2_small"], depth=1, layers=[0])
    with pytest.raises(WeightsError) as info:
        build_model(dpt_cfg(small, pretrained=True, backbone_type="dinov2_small"))
    assert "dinov2_vits14_pretrain.pth" in str(info.value) and "DINOv2" in str(info.value)


# ---- data ---------------------------------------------------------------------------------------------

def test_cutmix_box_distribution():
    random.seed(0), np.random.seed(0)
    boxes = [cutmix_box(50, p=1.0) for _ in range(200)]
    for box in boxes:
        ys, xs = torch.nonzero(box, as_tuple=True)
        area = box.sum().item()
        assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == area, "one axis-aligned rectangle"
        assert 0.02 * 2500 * 0.5 <= area <= 0.4 * 2500 + 1
    assert all(cutmix_box(50, p=0.0).sum() == 0 for _ in range(5))
    half = [cutmix_box(20).sum().item() > 0 for _ in range(400)]
    assert 150 < sum(half) < 250, "a box with probability 0.5"


def _seeded(mode, root, lst, seed, size=32):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    return SemiDataset("pascal", root, mode, size=size, id_path=lst)[0]


def test_strong_views_share_the_weak_views_geometry(tmp_path):
    root, lst, _ = make_tree(tmp_path, "pascal", w=30, h=20)
    pad = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None, None]
    differs = 0
    for seed in range(6):
        u = _seeded("train_u_strong", root, lst, seed, size=80)
        w, s1, s2, box1, box2 = u["img_w"], u["img_s1"], u["img_s2"], u["box1"], u["box2"]
        assert w.shape == s1.shape == s2.shape == (3, 80, 80)
        assert u["padded"].any() and torch.equal(u["padded"], torch.isclose(w, pad, atol=1e-5).all(dim=0))
        assert box1.shape == box2.shape == (80, 80) and box1.dtype == torch.float32
        differs += int(not torch.allclose(w, s1)) + int(not torch.allclose(s1, s2))
        img_u = _seeded("train_u", root, lst, seed, size=80)["img_w"]
        assert torch.equal(w, img_u), "the weak view is train_u's crop"
        img_l, _ = _seeded("train_l_weak", root, lst, seed, size=80)
        assert torch.equal(img_l, img_u), "UniMatch V2's labeled view: geometry only"
    assert differs >= 8


# ---- evaluation ----------------------------------------------------------------------------------------

class Recorder(nn.Module):
    """Logits of class 1 everywhere; records the input sizes; takes multiples of ``input_multiple`` only."""

    def __init__(self, multiple=None):
        super().__init__()
        self.input_multiple, self.sizes = multiple, []

    def forward(self, x):
        if self.input_multiple:
            assert x.shape[-2] % self.input_multiple == 0 and x.shape[-1] % self.input_multiple == 0
        self.sizes.append(tuple(x.shape[-2:]))
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        out[:, 1] = 5.0
        return out


def test_logits_at_any_size_resizes_for_patch_models_only():
    model = Recorder(14)
    assert logits_at_any_size(model, torch.zeros(1, 3, 100, 75)).shape == (1, 3, 100, 75)
    assert model.sizes == [(98, 70)]  # int(100 / 14 + 0.5) * 14, int(75 / 14 + 0.5) * 14
    logits_at_any_size(model, torch.zeros(1, 3, 98, 70))
    assert model.sizes[-1] == (98, 70)
    plain = Recorder()
    logits_at_any_size(plain, torch.zeros(1, 3, 100, 75))
    assert plain.sizes == [(100, 75)]


def test_multiscale_gives_a_patch_model_multiples_of_its_patch():
    model = Recorder(14)
    scores = multiscale(model, torch.zeros(1, 3, 100, 75), [0.75, 1.0, 1.5], flip=True)
    assert scores.shape == (1, 3, 100, 75) and torch.allclose(scores.sum(1), torch.full((1, 100, 75), 6.0))
    assert len(model.sizes) == 6 and all(h % 14 == 0 and w % 14 == 0 for h, w in model.sizes)


@pytest.mark.parametrize("h, w, window, expected", [
    (10, 10, 6, [(6, 6)] * 4),  # starts 0 and 4: the last window ends at the border
    (1024, 2048, 798, [(798, 798)] * 8),  # Cityscapes at 798: rows 0, 226; columns 0, 532, 1064, 1250
    (5, 12, 6, [(5, 6), (5, 6), (5, 6)]),  # shorter than the window: one row at 0
])
def test_aligned_sliding_windows_are_whole(h, w, window, expected):
    model = Recorder()
    scores = sliding_window(model, torch.zeros(1, 3, h, w), window, 3, aligned=True)
    assert model.sizes == expected
    assert (scores[0, 1] > 0).all(), "every pixel covered"


# ---- the method ----------------------------------------------------------------------------------------

def test_cutmix_takes_the_flipped_batch_inside_the_box():
    x = torch.arange(3).view(3, 1, 1).expand(3, 2, 2).float()
    box = torch.zeros(3, 2, 2)
    box[0, 0, 0] = box[1, 1, 1] = box[2, 0, 1] = 1
    out = cutmix(x, box)
    assert out[0, 0, 0] == 2 and out[1, 1, 1] == 1 and out[2, 0, 1] == 0  # image i takes image B-1-i
    assert out[0, 1, 1] == 0 and out[2, 1, 1] == 2
    assert torch.equal(cutmix(x.unsqueeze(1).expand(3, 3, 2, 2), box)[:, 2], out)


def test_ema_ratio_and_update():
    assert [ema_ratio(i) for i in (0, 1, 2, 10 ** 6)] == [0.0, 0.5, 1 - 1 / 3, 0.996]
    model = nn.Linear(2, 2)
    method = UniMatchV2(nn.CrossEntropyLoss(), 0.95)
    assert method.setup(model) is method
    ema = method.teacher.module
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.training
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.weight.clone()
    method.after_step(model, 1)
    assert torch.allclose(ema.weight, 0.5 * before + 0.5 * model.weight)
    method.after_step(model, 0)
    assert torch.equal(ema.weight, model.weight), "iteration 0 copies"


def test_lock_backbone_leaves_the_encoder_out_of_adamw():
    model = build_model(dpt_cfg())
    model.backbone.requires_grad_(False)
    opt = UniMatchV2(nn.CrossEntropyLoss()).build_optimizer(model, 1e-5, 40.0)
    assert opt.param_groups[0]["params"] == [] and len(opt.param_groups[1]["params"]) == len(list(model.head.parameters()))


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_method_keys_and_decoders_are_checked(tmp_path):
    text = (PROJECT_ROOT / "configs" / "toy_unimatch_v2.yaml").read_text()
    cfg = load_training_config(write(tmp_path, text))
    assert (cfg["conf_thresh"], cfg["lock_backbone"], cfg["sliding_window_edges"]) == (0.95, False, "cut")
    with pytest.raises(ConfigError, match=r"method 'unimatch_v2' trains the 'dpt' decoder, but model.decoder.type "
                                          r"is 'segformer'"):
        load_training_config(write(tmp_path, text.replace("type: dpt", "type: segformer")))
    with pytest.raises(ConfigError, match=r"conf_thresh must be int or float, got 'high'"):
        load_training_config(write(tmp_path, text.replace("conf_thresh: 0.95", "conf_thresh: high")))
    with pytest.raises(ConfigError, match=r"conf_thresh must be in \[0, 1\], got 1.5"):
        load_training_config(write(tmp_path, text.replace("conf_thresh: 0.95", "conf_thresh: 1.5")))
    sup = (PROJECT_ROOT / "configs" / "toy_baseline_sup.yaml").read_text()
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['conf_thresh', 'strong_aug'\]"):
        load_training_config(write(tmp_path, sup + "conf_thresh: 0.9\nstrong_aug: true\n"))
    allspark = (PROJECT_ROOT / "configs" / "toy_allspark.yaml").read_text()
    with pytest.raises(ConfigError, match=r"conf_thresh must be in \[0, 1\) \(0: every pixel counts\), got 1.5"):
        load_training_config(write(tmp_path, allspark + "conf_thresh: 1.5\n"))
    with pytest.raises(ConfigError, match=r"teacher must be one of \['self', 'ema'\], got 'mean'"):
        load_training_config(write(tmp_path, allspark + "teacher: mean\n"))
    with pytest.raises(ConfigError, match=r"method must be one of \['sup', 'semi', 'allspark', 'unimatch_v2'\], "
                                          r"got 'fixmatch'"):
        load_training_config(write(tmp_path, text), method="fixmatch")


@pytest.mark.parametrize("dataset", ["pascal", "cityscapes", "coco"])
def test_shipped_configs_build_the_releases_model(dataset):
    """configs/<dataset>_unimatch_v2.yaml builds DINOv2-S + the small DPT head with the official file's keys."""
    cfg = load_training_config(PROJECT_ROOT / "configs" / f"{dataset}_unimatch_v2.yaml")
    cfg["model"]["backbone"]["kwargs"]["pretrained"] = False
    model = build_model(cfg["model"])
    state = model.backbone.state_dict()
    assert tuple(state["pos_embed"].shape) == (1, 1370, 384) and tuple(state["mask_token"].shape) == (1, 384)
    assert {k.split(".")[0] for k in state} == {"cls_token", "pos_embed", "mask_token", "patch_embed", "blocks", "norm"}
    assert len(model.backbone.blocks) == 12 and model.backbone.layers == [2, 5, 8, 11]
    assert sum(v.numel() for v in state.values()) == 22_056_576  # ViT-S/14 as DINOv2 publishes it
    assert [m.out_channels for m in model.head.projects] == [48, 96, 192, 384]
    assert model.head.scratch.output_conv[2].out_channels == cfg["nclass"]


def test_a_longer_labeled_list_is_cut_for_allspark_and_kept_for_unimatch_v2(tmp_path):
    root, lst, _ = make_tree(tmp_path, "pascal", n=5)
    cut = SemiDataset("pascal", root, "train_l", size=16, id_path=lst, nsample=3)
    kept = SemiDataset("pascal", root, "train_l_weak", size=16, id_path=lst, nsample=3, cut_longer=False)
    assert (len(cut), len(kept)) == (3, 5)
    tiled = SemiDataset("pascal", root, "train_l_weak", size=16, id_path=lst, nsample=12, cut_longer=False)
    assert [s.image for s in tiled.samples] == [s.image for s in kept.samples] * 2 + [s.image for s in kept.samples][:2]
