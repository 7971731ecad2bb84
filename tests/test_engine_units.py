"""Engine pieces against hand-computed cases: metric, OHEM, sliding window, launch variables, configs."""
import os
import stat

import pytest
import torch
import torch.nn.functional as F

from allspark.config import PROJECT_ROOT, ConfigError, load_training_config
from allspark.engine.dist import resolve_env
from allspark.engine.evaluate import center_crop, sliding_window
from allspark.engine.loaders import ShardSampler
from allspark.engine.losses import OhemCrossEntropy, build_criterion
from allspark.engine.metrics import intersection_and_union, mean_iou
from allspark.engine.trainer import poly_lr


def test_intersection_and_union_by_hand():
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    target = torch.tensor([[0, 1, 2], [2, 255, 1]])
    inter, union, area = intersection_and_union(pred, target, 4, 255)
    # valid pixels: (0,0) (1,1) (1,2) (2,2) (0,1); the ignored pixel predicted 2 does not count
    assert inter.tolist() == [1, 1, 1, 0]
    assert area.tolist() == [1, 2, 2, 0]
    assert union.tolist() == [2, 3, 2, 0]  # pred areas [2, 2, 1, 0] + target - inter
    miou, ious = mean_iou(inter, union)
    assert ious == pytest.approx([50.0, 100 / 3, 50.0, 0.0])
    assert miou == pytest.approx((50 + 100 / 3 + 50) / 4)


def test_intersection_and_union_matches_the_release_histograms_and_needs_no_host():
    """Against histograms as the release's intersectionAndUnion counts them (valid = target != ignore; a
    target outside [0, K) counts only its prediction), with ignore, out-of-range and every class; and on
    meta tensors, which have no values: an op whose output size depends on the data (boolean indexing,
    bincount, .item()) cannot run there, so the count has no host synchronisation on a GPU."""
    gen = torch.Generator().manual_seed(0)
    K = 6
    pred = torch.randint(0, K, (2, 37, 41), generator=gen)
    target = torch.randint(0, K + 2, (2, 37, 41), generator=gen)  # K, K + 1: out of range
    target[:, :3] = 255
    inter, union, area = intersection_and_union(pred, target, K, 255)
    p, t = pred[target != 255], target[target != 255]
    ref_inter = torch.histc(p[p == t].float(), bins=K, min=0, max=K - 1).long()
    ref_pred = torch.histc(p.float(), bins=K, min=0, max=K - 1).long()
    ref_area = torch.histc(t.float(), bins=K, min=0, max=K - 1).long()
    assert torch.equal(inter, ref_inter) and torch.equal(area, ref_area)
    assert torch.equal(union, ref_pred + ref_area - ref_inter)
    meta = [torch.empty(2, 9, 9, dtype=torch.long, device="meta") for _ in range(2)]
    assert [tuple(x.shape) for x in intersection_and_union(*meta, K, 255)] == [(K,)] * 3


def test_ohem_keeps_all_valid_pixels_when_fewer_than_min_kept():
    pred, target = torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 255]]])
    expected = F.cross_entropy(pred, target, ignore_index=255)
    assert torch.allclose(OhemCrossEntropy(255, thresh=0.7, min_kept=4)(pred, target), expected)


def _logits_with_true_class_probs(probs):
    """Two-class logits whose softmax gives class 0 the probabilities ``probs`` (1, 2, 1, len)."""
    p = torch.tensor(probs)
    return torch.stack([torch.log(p), torch.log(1 - p)]).view(1, 2, 1, -1)


def test_ohem_threshold_and_min_kept_by_hand():
    pred = _logits_with_true_class_probs([0.1, 0.5, 0.8, 0.9, 0.95, 0.3])
    target = torch.tensor([[[0, 0, 0, 0, 0, 255]]])
    # thresh 0.7, min_kept 2: the 2nd smallest true-class probability (0.5) is below the threshold, so
    # the pixels with p <= 0.7 are kept: 0.1 and 0.5.
    kept = torch.tensor([[[0, 0, 255, 255, 255, 255]]])
    assert torch.allclose(OhemCrossEntropy(255, 0.7, 2)(pred, target), F.cross_entropy(pred, kept, ignore_index=255))
    # min_kept 4: the 4th smallest (0.9) is above 0.7 and becomes the threshold: 0.1, 0.5, 0.8, 0.9 kept.
    kept = torch.tensor([[[0, 0, 0, 0, 255, 255]]])
    assert torch.allclose(OhemCrossEntropy(255, 0.7, 4)(pred, target), F.cross_entropy(pred, kept, ignore_index=255))


def release_ohem(pred, target, ignore_index, thresh, min_kept):
    """The release's ProbOhemCrossEntropy2d with its host-side branches, as the reference."""
    b, c, h, w = pred.shape
    target = target.view(-1)
    valid_mask = target.ne(ignore_index)
    target = target * valid_mask.long()
    num_valid = valid_mask.sum()
    prob = F.softmax(pred, dim=1).transpose(0, 1).reshape(c, -1)
    if min_kept > num_valid:
        pass
    elif num_valid > 0:
        prob = prob.masked_fill_(~valid_mask, 1)
        mask_prob = prob[target, torch.arange(len(target), dtype=torch.long)]
        threshold = thresh
        if min_kept > 0:
            index = mask_prob.argsort()
            threshold_index = index[min(len(index), min_kept) - 1]
            if mask_prob[threshold_index] > thresh:
                threshold = mask_prob[threshold_index]
            valid_mask = valid_mask * mask_prob.le(threshold)
    target = target.masked_fill_(~valid_mask, ignore_index).view(b, h, w)
    return F.cross_entropy(pred, target, ignore_index=ignore_index)


@pytest.mark.parametrize("min_kept", [0, 1, 50, 300, 2000])
def test_ohem_matches_the_release(min_kept):
    g = torch.Generator().manual_seed(min_kept)
    pred = torch.randn(2, 4, 16, 16, generator=g) * 3
    target = torch.randint(0, 4, (2, 16, 16), generator=g)
    target[:, :4] = 255  # 448 valid pixels: min_kept 2000 keeps them all
    ours = OhemCrossEntropy(255, 0.7, min_kept)(pred, target)
    assert torch.allclose(ours, release_ohem(pred, target.clone(), 255, 0.7, min_kept), rtol=1e-6, atol=1e-7)


def test_build_criterion_errors():
    assert isinstance(build_criterion({"name": "OHEM", "kwargs": {"thresh": 0.7, "min_kept": 10}}), OhemCrossEntropy)
    with pytest.raises(ConfigError, match=r"unknown loss 'Focal'"):
        build_criterion({"name": "Focal"})
    with pytest.raises(ConfigError, match=r"unknown keyword\(s\) \['thres'\] for OHEM"):
        build_criterion({"name": "OHEM", "kwargs": {"thres": 0.7}})


def test_sliding_window_covers_with_config_class_count():
    calls = []

    def model(x):  # every window votes for class 4 with certainty
        calls.append(tuple(x.shape[-2:]))
        logits = torch.full((x.shape[0], 5, *x.shape[-2:]), -50.0)
        logits[:, 4] = 50.0
        return logits

    scores = sliding_window(model, torch.zeros(1, 3, 10, 10), window=6, num_classes=5)
    assert scores.shape == (1, 5, 10, 10)
    # window 6, stride 4: windows start at 0, 4, 8 and are cut at the border
    assert calls == [(6, 6), (6, 6), (6, 2), (6, 6), (6, 6), (6, 2), (2, 6), (2, 6), (2, 2)]
    cover = torch.tensor([1, 1, 1, 1, 2, 2, 1, 1, 2, 2], dtype=torch.float32)
    assert torch.allclose(scores[0, 4], cover[:, None] * cover[None, :])
    assert torch.allclose(scores[0, :4], torch.zeros(4, 10, 10))


def test_center_crop():
    img, mask = torch.arange(100.0).view(1, 1, 10, 10), torch.arange(100).view(1, 10, 10)
    i, m = center_crop(img, mask, 4)
    assert i[0, 0, 0].tolist() == [33, 34, 35, 36] and m.shape == (1, 4, 4)
    assert center_crop(img, mask, 20)[1].shape == (1, 10, 10), "smaller than the crop: kept whole"


def test_shard_sampler_sees_every_sample_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_poly_lr():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)


def test_resolve_env_torchrun_slurm_and_single(tmp_path, monkeypatch):
    assert resolve_env({}).world_size == 1
    env = resolve_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == \
        ("torchrun", 3, 4, 1, "h", 1234)
    stub = tmp_path / "scontrol"
    stub.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a07\\ngpu-a08\\n"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    env = resolve_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                       "SLURM_NODELIST": "gpu-a[07-08]"}, port=23456)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == \
        ("slurm", 5, 8, 1, "gpu-a07", 23456)


# ---- configs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, values", [
    ("pascal_allspark", dict(crop_size=513, epochs=80, batch_size=2, lr=0.001, lr_multi=10.0, nclass=21,
                             eval_mode="original", criterion={"name": "CELoss", "kwargs": {"ignore_index": 255}})),
    ("cityscapes_allspark", dict(crop_size=801, epochs=240, batch_size=2, lr=0.005, lr_multi=1.0, nclass=19,
                                 eval_mode="sliding_window", criterion={"name": "OHEM", "kwargs": {
                                     "ignore_index": 255, "thresh": 0.7, "min_kept": 200000}})),
    ("coco_allspark", dict(crop_size=513, epochs=10, batch_size=4, lr=0.001, lr_multi=10.0, nclass=81)),
])
def test_release_recipes(name, values):
    cfg = load_training_config(PROJECT_ROOT / "configs" / f"{name}.yaml")
    assert {k: cfg[k] for k in values} == values
    assert cfg["ignore_unlabeled_padding"] is False and cfg["memory_sync"] == "broadcast"


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = load_training_config(path)
    expected = {"allspark": "allspark", "baseline_semi": "semi", "baseline_sup": "sup",
                "unimatch_v2": "unimatch_v2", "allspark_dinov2": "allspark",
                "allspark_weak_to_strong": "allspark", "unimatch_v2_dinov3": "unimatch_v2",
                "allspark_dinov3": "allspark"}[path.stem.split("_", 1)[1]]
    assert cfg["method"] == expected


def write_config(tmp_path, **changes):
    import yaml

    cfg = yaml.safe_load((PROJECT_ROOT / "configs/toy_allspark.yaml").read_text())
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key)
        else:
            cfg[key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("changes, pattern", [
    (dict(learning_rate=0.1), r"unknown key\(s\) \['learning_rate'\]"),
    (dict(crop_size=...), r"missing key 'crop_size'"),
    (dict(epochs="ten"), r"epochs must be int, got 'ten'"),
    (dict(eval_mode="tiles"), r"eval_mode must be one of \['original', 'center_crop', 'sliding_window', 'multiscale'\]"),
    (dict(nclass=6), r"nclass 6 differs from model.decoder.kwargs.num_class 5"),
    (dict(method="semi"), r"method 'semi' trains the 'segformer' decoder, but model.decoder.type is 'allspark'"),
    (dict(crop_size=129), r"image_size \(97\) must equal crop_size \(129\)"),
    (dict(memory_sync="all"), r"memory_sync must be one of \['broadcast', 'gather'\]"),
    (dict(amp="fp8"), r"amp must be one of \['none', 'bf16', 'fp16'\], got 'fp8'"),
    (dict(compile="yes"), r"compile must be bool, got 'yes'"),
    (dict(prefetch_factor=0), r"prefetch_factor must be positive, got 0"),
    (dict(pin_memory=1), r"pin_memory must be bool, got 1"),
])
def test_config_errors(tmp_path, changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_training_config(write_config(tmp_path, **changes))


def test_method_flag_overrides_and_is_required(tmp_path):
    with pytest.raises(ConfigError, match="no method"):
        load_training_config(write_config(tmp_path, method=...))
    assert load_training_config(write_config(tmp_path, method=...), method="allspark")["method"] == "allspark"


def test_seeded_samplers_draw_independent_streams():
    """The labeled and the unlabeled sample at one position must not share their augmentation seed."""
    from allspark.engine.dist import DistEnv
    from allspark.engine.loaders import SeededSampler, epoch_seed

    data = list(range(8))
    lab, unl = SeededSampler(data, DistEnv(), 0, "labeled"), SeededSampler(data, DistEnv(), 0, "unlabeled")
    seeds_l, seeds_u = [s for _, s in lab], [s for _, s in unl]
    assert not set(seeds_l) & set(seeds_u)
    assert epoch_seed(0, 0, 0) not in seeds_l + seeds_u, "the model's dropout stream differs too"
    lab.set_epoch(1)
    assert [s for _, s in lab] != seeds_l and sorted(i for i, _ in lab) == data


def test_loader_settings_come_from_the_config(tmp_path):
    from allspark.data.toy import make_toy_dataset
    from allspark.engine.dist import DistEnv
    from allspark.engine.loaders import build_loaders

    lists = make_toy_dataset(tmp_path / "toy", seed=0, num_train=8, num_val=2, num_labeled=2, min_size=64,
                             max_size=72)
    base = dict(data_root=str(tmp_path / "toy"), val_id_path=str(lists["val"]))
    cfg = load_training_config(write_config(tmp_path, num_workers=..., **base))  # the defaults
    assert (cfg["num_workers"], cfg["pin_memory"], cfg["persistent_workers"], cfg["prefetch_factor"]) == (2, True, True, 2)
    cfg.update(persistent_workers=False, prefetch_factor=5)
    loaders = build_loaders(cfg, DistEnv(), lists["labeled"], lists["unlabeled"], seed=0)
    for key in ("l", "u", "val"):
        loader = loaders[key]
        assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, False, 5), key
        assert loader.pin_memory is False, "nothing to pin for on the CPU"
    cfg.update(num_workers=0)
    loader = build_loaders(cfg, DistEnv(), lists["labeled"], lists["unlabeled"], seed=0)["l"]
    assert loader.num_workers == 0 and loader.prefetch_factor is None


@pytest.mark.parametrize("holds_gil, backend, paused", [(True, "gloo", True), (True, "nccl", False), (False, "gloo", False)])
def test_cleanup_pauses_before_a_gloo_group_whose_destructor_holds_the_gil(monkeypatch, holds_gil, backend, paused):
    """torch < 2.8 joins gloo's workers in the group's destructor with the GIL held (two-process runs hung at
    exit on 2.4.1, 6 of 12): cleanup first sleeps, which releases the GIL, then destroys the group."""
    import allspark.engine.dist as dist_mod

    calls = []
    monkeypatch.setattr(dist_mod.compat, "GLOO_DESTRUCTOR_HOLDS_GIL", holds_gil)
    monkeypatch.setattr(dist_mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist_mod.dist, "get_backend", lambda: backend)
    monkeypatch.setattr(dist_mod.dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(dist_mod.time, "sleep", lambda s: calls.append(("sleep", s)))
    dist_mod.cleanup()
    assert calls == ([("sleep", dist_mod.GLOO_EXIT_PAUSE_S)] if paused else []) + ["destroy"]
