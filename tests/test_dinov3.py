"""DINOv3 under both recipes: the released sizes, the shipped configs, weights found by pretrained: true, the
trainer's step under bf16, with a frozen encoder, and AllSpark's S-Mem on the patch-16 grid; a whole run of
the toy config through train.py and eval.py. (Equality with the official code: test_golden_dinov3.py.)"""
import copy
import math

import pytest
import torch
import yaml

from allspark.config import DPT_HEADS, load_training_config
from allspark.engine.trainer import Trainer
from allspark.models import WeightsError, build_model
from allspark.models.dinov3 import DINOV3_PRESETS, DINOv3
from allspark.tools.benchmark import model_section, synthetic_batch

from helpers import (DINOV3_CROP, ROOT, call, mious, tiny_dinov3_cfg, train_args, training_config,
                     zero_dropout)

# Parameter counts of the official builders (facebookresearch/dinov3, hubconf's dinov3_vit*16, built on the
# meta device). The 7B file's local_cls_norm (2 x 4096, pretraining's second class-token norm) is not built.
RELEASED_PARAMETERS = {"dinov3_small": 21_601_152, "dinov3_small_plus": 28_697_472, "dinov3_base": 85_669_632,
                       "dinov3_large": 303_154_176, "dinov3_huge_plus": 840_633_600,
                       "dinov3_7b": 6_716_043_264 - 2 * 4096}


@pytest.mark.parametrize("preset", sorted(DINOV3_PRESETS))
def test_presets_have_the_released_sizes(preset):
    with torch.device("meta"):
        model = DINOv3(**DINOV3_PRESETS[preset])
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAMETERS[preset]
    assert model.patch_size == 16 and model.rope_embed.rescale_coords is None, "rescaling off for fine-tuning"
    assert len(model.layers) == 4 and model.layers[-1] == len(model.blocks) - 1, "the DPT head taps 4, the last last"


CONFIGS = [(d, m) for d in ("pascal", "cityscapes", "coco", "ade20k") for m in ("unimatch_v2", "allspark")]


@pytest.mark.parametrize("dataset, method", CONFIGS, ids=[f"{d}_{m}" for d, m in CONFIGS])
def test_shipped_dinov3_configs_build(dataset, method):
    cfg = load_training_config(ROOT / "configs" / f"{dataset}_{method}_dinov3.yaml")
    crop, classes = cfg["crop_size"], cfg["nclass"]
    assert cfg["method"] == method and crop % 16 == 0 and crop == {"cityscapes": 800}.get(dataset, 512)
    backbone = cfg["model"]["backbone"]
    assert backbone["type"] == "dinov3_small" and backbone["kwargs"]["pretrained"] is True
    backbone["kwargs"]["pretrained"] = False
    model = build_model(cfg["model"])
    assert model.input_multiple == 16 and model.backbone.layers == [2, 5, 8, 11]
    head = model.head if method == "unimatch_v2" else model.decoder.head
    features, out_channels = DPT_HEADS["dinov3_small"]
    assert [p.out_channels for p in head.projects] == out_channels
    if method == "allspark":
        assert tuple(model.decoder.allspark.attn.kv_queue.shape) == (classes, 384, (crop // 16) ** 2)


def test_benchmark_gives_a_dinov3_preset_its_head():
    cfg = load_training_config(ROOT / "configs" / "pascal_unimatch_v2_dinov3.yaml")
    section = model_section(cfg, 512, "dinov3_large")
    assert section["backbone"] == {"type": "dinov3_large", "kwargs": {"pretrained": False}}
    assert (section["decoder"]["kwargs"]["features"], section["decoder"]["kwargs"]["out_channels"]) == (256, [256, 512, 1024, 1024])
    cfg = load_training_config(ROOT / "configs" / "pascal_allspark_dinov3.yaml")
    kwargs = model_section(cfg, 256, "dinov3_base")["decoder"]["kwargs"]
    assert (kwargs["in_planes"], kwargs["features"], kwargs["image_size"]) == ([768] * 4, 128, 256)


def one_block_small(pretrained):
    """A one-block ViT-S/16 (the preset's widths) with ``pretrained``, under a DPT head."""
    cfg = {"type": "dinov3_small", "kwargs": {"pretrained": pretrained, "depth": 1, "layers": [0]}}
    return build_model({"backbone": cfg, "decoder": {"type": "dpt", "kwargs": {"num_class": 3}}}).backbone


def test_pretrained_true_finds_the_official_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = one_block_small(False).state_dict()
    (tmp_path / "pretrained_weights").mkdir()
    torch.save(source, tmp_path / "pretrained_weights" / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    loaded = one_block_small(True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())


def test_pretrained_true_finds_the_hub_folder(tmp_path, monkeypatch, caplog):
    """pretrained_weights/dinov3-vits16-pretrain-lvd1689m, as huggingface-cli download --local-dir writes it
    (here by transformers' own DINOv3 model; test_hub_weights.py compares the outputs)."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    config = transformers.DINOv3ViTConfig(hidden_size=384, num_hidden_layers=1, num_attention_heads=6,
                                          intermediate_size=1536, num_register_tokens=4, patch_size=16)
    hub = transformers.DINOv3ViTModel(config)
    hub.save_pretrained(tmp_path / "pretrained_weights" / "dinov3-vits16-pretrain-lvd1689m")
    with caplog.at_level("INFO", logger="allspark"):
        loaded = one_block_small(True).state_dict()
    assert "dinov3-vits16-pretrain-lvd1689m" in caplog.text and "(the Hugging Face hub's layout)" in caplog.text
    assert torch.equal(loaded["blocks.0.attn.proj.weight"], hub.state_dict()["model.layer.0.attention.o_proj.weight"])


def test_pretrained_true_names_every_place_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {"type": "dinov3_large", "kwargs": {"pretrained": True, "depth": 1, "layers": [0]}}
    with pytest.raises(WeightsError) as info:
        build_model({"backbone": cfg, "decoder": {"type": "dpt", "kwargs": {"num_class": 3}}})
    message = str(info.value)
    for name in ("dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth",
                 "dinov3-vitl16-pretrain-lvd1689m", "DINOv3 License"):
        assert name in message


# ---- the trainer's step -----------------------------------------------------------------------------------

def dinov3_trainer(method="unimatch_v2", amp="none", **changes):
    section = tiny_dinov3_cfg(decoder="dpt" if method == "unimatch_v2" else "allspark")
    cfg = training_config(method=method, crop_size=DINOV3_CROP, model=section, amp=amp, lr=0.001, **changes)
    torch.manual_seed(0)
    model = zero_dropout(build_model(cfg["model"]))
    return Trainer(cfg, model=model, loaders={"l": [None], "u": [None], "val": []})


def batch_for(trainer):
    torch.manual_seed(1)
    return synthetic_batch(trainer.method, 2, DINOV3_CROP, 5, torch.device("cpu"))


def trained_parameters(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("method", ["unimatch_v2", "allspark"])
def test_bf16_steps_train_what_fp32_trains(method):
    """Under bf16 autocast the step learns, every weight fp32 trains gets its gradient, and parameters and
    buffers (RoPE periods, bias masks, S-Mem) keep their dtype."""
    trained = {}
    for amp in ("none", "bf16"):
        trainer = dinov3_trainer(method, amp)
        batch, epoch = batch_for(trainer), 1
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        losses = [float(trainer.step(batch, epoch, 0)[0]) for _ in range(3)]
        assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], (amp, losses)
        trained[amp] = trained_parameters(trainer.model)
        for key, value in trainer.model.state_dict().items():
            assert value.dtype == before[key].dtype, key
    assert "backbone.blocks.0.attn.qkv.weight" in trained["none"] and "backbone.storage_tokens" in trained["none"]
    assert trained["bf16"] == trained["none"]


def test_lock_backbone_keeps_the_dinov3_encoder():
    trainer = dinov3_trainer(lock_backbone=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = batch_for(trainer)
    for _ in range(2):
        trainer.step(batch, 1, 0)
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("backbone."))
    assert not torch.equal(after["head.scratch.output_conv.2.weight"], before["head.scratch.output_conv.2.weight"])
    assert not any(p.requires_grad for p in trainer.model.backbone.parameters())


def test_allspark_reads_and_writes_smem_on_the_patch_16_grid():
    trainer = dinov3_trainer("allspark")
    queue = trainer.model.decoder.allspark.attn.kv_queue
    assert tuple(queue.shape) == (5, 48, (DINOV3_CROP // 16) ** 2)
    trainer.step(batch_for(trainer), 1, 0)
    assert trainer.model.decoder.allspark.attn.queue_ptr.sum() > 0 and queue.abs().sum() > 0


# ---- a whole run --------------------------------------------------------------------------------------------

def test_the_toy_config_trains_and_scores(tmp_path, toy):
    """configs/toy_unimatch_v2_dinov3.yaml (scripts/demo.sh unimatch_v2_dinov3) on the small toy set for 2
    epochs at crop 64: both bests kept, eval.py scores the last checkpoint as the run did."""
    raw = yaml.safe_load((ROOT / "configs" / "toy_unimatch_v2_dinov3.yaml").read_text())
    raw.update(data_root=str(toy.root), val_id_path=toy.val, crop_size=DINOV3_CROP, epochs=2, batch_size=2,
               num_workers=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    save = tmp_path / "run"
    out = call("train", train_args(cfg, toy, save)[1:])
    assert out.status == 0, out.log[-3000:]
    assert len(mious(out.log)) == 4, "the model and the EMA teacher, every epoch"
    ckpt = torch.load(save / "latest.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and "module.backbone.rope_embed.periods" in ckpt["model"]
    mask = ckpt["model"]["module.backbone.blocks.0.attn.qkv.bias_mask"]
    width = raw["model"]["backbone"]["kwargs"]["embed_dim"]
    assert torch.equal(mask, torch.cat([torch.ones(width), torch.zeros(width), torch.ones(width)]))
    scored = call("eval", ["--config", cfg, "--checkpoint", save / "latest.pth"])
    assert scored.status == 0 and mious(scored.log) == [mious(out.log)[-2]], scored.log[-500:]
