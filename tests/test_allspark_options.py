"""AllSpark on any encoder (a tiny DINOv2 with the SegFormer or DPT head) and the weak-to-strong options of
method allspark (teacher, strong_aug, conf_thresh, optimizer): each changes what it should and nothing else."""
import copy

import pytest
import torch
import torch.nn as nn

from allspark.config import PROJECT_ROOT, load_training_config
from allspark.engine.trainer import Trainer
from allspark.methods import AllSparkMethod
from allspark.methods.weak_to_strong import cutmix
from allspark.models import build_model
from allspark.models.allspark import memory_tokens

from helpers import tiny_dinov2_allspark_cfg, tiny_model_cfg, training_config, zero_dropout


def test_memory_tokens_follow_the_encoders_stride():
    assert memory_tokens(513) == 17 ** 2 and memory_tokens(801) == 26 ** 2  # the release's MiT sizes
    assert memory_tokens(518, 14) == 37 ** 2 and memory_tokens(798, 14) == 57 ** 2
    with pytest.raises(ValueError, match="image_size 513 must be a multiple of the encoder's patch size 14"):
        memory_tokens(513, 14)


@pytest.mark.parametrize("head", ["segformer", "dpt"])
def test_allspark_on_dinov2_trains_and_evaluates(head):
    model = build_model(tiny_dinov2_allspark_cfg(head))
    attn = model.decoder.allspark.attn
    assert tuple(attn.kv_queue.shape) == (5, 48, 25)  # (70 / 14) ** 2 tokens of the deepest map
    model.eval()
    with torch.no_grad():
        pseudo = model(torch.randn(2, 3, 70, 70))
        assert pseudo.shape == (2, 5, 70, 70)
        assert model(torch.randn(1, 3, 56, 84)).shape == (1, 5, 56, 84), "evaluation takes other sizes"
    model.train()
    seen = {}
    hook = attn.register_forward_hook(lambda m, a, out: seen.update(use_memory=a[3]))
    before = attn.kv_queue.clone()
    for use_memory in (False, True):
        out = model(torch.randn(4, 3, 70, 70), pseudo_logits=pseudo, use_memory=use_memory)
        assert out.shape == (4, 5, 70, 70) and seen["use_memory"] is use_memory
    hook.remove()
    assert attn.queue_ptr.sum() > 0 and not torch.equal(attn.kv_queue, before)
    with pytest.raises(ValueError, match="S-Mem stores 25 tokens"):
        model(torch.randn(4, 3, 84, 84), pseudo_logits=torch.randn(2, 5, 84, 84))


def test_dpt_head_needs_a_patch_encoder():
    from allspark.config import ConfigError

    cfg = tiny_model_cfg()
    cfg["decoder"]["kwargs"]["head"] = "dpt"
    with pytest.raises(ConfigError, match="head 'dpt' needs a patch encoder"):
        build_model(cfg)


def batch(seed=0, strong=False, box=None):
    g = torch.Generator().manual_seed(seed)
    img_x, img_u = torch.randn(2, 3, 65, 65, generator=g), torch.randn(2, 3, 65, 65, generator=g)
    mask_x = torch.randint(0, 5, (2, 65, 65), generator=g)
    padded = torch.zeros(2, 65, 65, dtype=torch.bool)
    padded[1, -9:] = True
    if not strong:
        return (img_x, mask_x), {"img_w": img_u, "padded": padded}
    box = torch.zeros(2, 65, 65) if box is None else box
    return (img_x, mask_x), {"img_w": img_u, "img_s1": img_u.clone(), "img_s2": img_u.clone(), "padded": padded,
                             "box1": box, "box2": box.clone()}


def trainer_of(model, **options):
    """The trainer of method allspark with ``options`` on ``model`` (lr 0.01), stepping in epoch 1 (S-Mem on)."""
    cfg = training_config(lr=0.01, **options)
    return Trainer(cfg, model=model, loaders={"l": [None], "u": [None], "val": []})


def step(model, data, epoch=1, **options):
    """One trainer step of method allspark with ``options`` on ``model``: its log values."""
    return trainer_of(model, **options).step(data, epoch, 0)


def fresh_pair():
    model = zero_dropout(build_model(training_config()["model"]))
    return model, copy.deepcopy(model)


def test_ema_teacher_reproduces_the_self_teacher_on_the_first_step():
    a, b = fresh_pair()
    self_taught, ema_taught = trainer_of(a), trainer_of(b, teacher="ema")
    assert torch.equal(self_taught.step(batch(), 1, 0), ema_taught.step(batch(), 1, 0))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(b.parameters(), ema_taught.method.teacher.module.parameters()):
        assert not torch.equal(p, q), "the teacher followed the step half-way (EMA ratio 0.5 at iteration 1)"
    ema_taught.method.after_step(b, 0)  # ratio 0: the teacher becomes the stepped model
    for p, q in zip(b.parameters(), ema_taught.method.teacher.module.parameters()):
        assert torch.equal(p, q)
    method = ema_taught.method
    assert [t for t, _ in method.eval_models(b)] == ["", "ema"] and "model_ema" in method.extra_modules()
    assert [t for t, _ in self_taught.method.eval_models(a)] == [""] and not self_taught.method.extra_modules()


def test_conf_thresh_masks_the_unconfident_pixels_and_is_logged():
    a, b = fresh_pair()
    c = copy.deepcopy(a)
    plain = step(a, batch())
    tiny = trainer_of(b, conf_thresh=1e-6)
    assert list(tiny.log_keys) == ["loss", "loss_x", "loss_u", "mask_ratio"]
    masked = tiny.step(batch(), 1, 0)
    assert torch.allclose(plain, masked[:3], rtol=1e-5, atol=0), "every pixel confident: the plain CE"
    assert masked[3] == 1.0
    high = step(c, batch(), conf_thresh=0.9)
    assert high[3] < 1.0 and high[2] < plain[2], "unconfident pixels count with 0"
    assert high[1] == plain[1], "the labeled loss is untouched"


def test_strong_aug_without_a_box_is_the_plain_step_and_cutmixes_the_pseudo_logits_with_one():
    a, b = fresh_pair()
    c = copy.deepcopy(a)
    plain = step(a, batch(), ignore_unlabeled_padding=True)
    strong = trainer_of(b, ignore_unlabeled_padding=True, strong_aug=True)
    assert strong.method.unlabeled_mode == "train_u_strong"
    assert torch.equal(plain, strong.step(batch(strong=True), 1, 0)), "identical views and no box: nothing changes"
    box = torch.zeros(2, 65, 65)
    box[0, 10:30, 5:50] = 1
    seen = {}
    strong = trainer_of(c, ignore_unlabeled_padding=True, strong_aug=True)
    real = strong.method.forward_kwargs
    strong.method.forward_kwargs = lambda pseudo, epoch: seen.update(pseudo=pseudo) or real(pseudo, epoch)
    c.eval()
    with torch.no_grad():
        teacher = c(batch(strong=True)[1]["img_w"])
    strong.step(batch(strong=True, box=box), 1, 0)
    assert torch.equal(seen["pseudo"], cutmix(teacher, box)), "CSG and S-Mem see the mixed layout"


def test_adamw_option():
    model, _ = fresh_pair()
    opt = AllSparkMethod(nn.CrossEntropyLoss(), 1, optimizer="adamw").build_optimizer(model, 1e-4, 10.0)
    assert isinstance(opt, torch.optim.AdamW) and [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]
    assert opt.param_groups[0]["weight_decay"] == 0.01
    sgd = AllSparkMethod(nn.CrossEntropyLoss(), 1).build_optimizer(model, 1e-4, 10.0)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("dataset, crop, classes", [("pascal", 518, 21), ("cityscapes", 798, 19), ("coco", 518, 81)])
def test_shipped_allspark_dinov2_configs_build(dataset, crop, classes):
    cfg = load_training_config(PROJECT_ROOT / "configs" / f"{dataset}_allspark_dinov2.yaml")
    assert (cfg["method"], cfg["optimizer"], cfg["teacher"], cfg["strong_aug"], cfg["conf_thresh"]) == \
        ("allspark", "adamw", "self", False, 0.0)
    cfg["model"]["backbone"]["kwargs"]["pretrained"] = False
    model = build_model(cfg["model"])
    assert tuple(model.decoder.allspark.attn.kv_queue.shape) == (classes, 384, (crop // 14) ** 2)
    assert model.input_multiple == 14 and model.decoder.head_type == "dpt"
