"""End to end on the CPU: train.py under torchrun (gloo) and SLURM variables, resume after a kill,
eval.py on our and the release's checkpoints, and the errors a user meets first."""
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import yaml

from allspark.data.toy import make_toy_dataset

from conftest import ROOT, golden_file

TINY_MODEL = {
    "backbone": {"type": "mit", "kwargs": {"embed_dims": [16, 32, 40, 64], "num_heads": [1, 2, 5, 8],
                                           "depths": [1, 1, 1, 1]}},
    "decoder": {"type": "allspark", "kwargs": {"num_heads": 2, "num_class": 5, "in_planes": [16, 32, 40, 64],
                                               "image_size": 65, "warmup_epoch": 1, "embedding_dim": 32}},
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    lists = make_toy_dataset(root, seed=1, num_train=20, num_val=4, num_labeled=4, min_size=64, max_size=80)
    return SimpleNamespace(root=root, **{k: str(v) for k, v in lists.items()})


# UniMatch V2's model at the golden file's size: a 4-block DINOv2 layout of width 48 and a small DPT head.
TINY_DPT = {
    "backbone": {"type": "dinov2", "kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 2, "layers": [0, 1, 2, 3]}},
    "decoder": {"type": "dpt", "kwargs": {"num_class": 5, "features": 16, "out_channels": [8, 16, 32, 32]}},
}


def write_config(path, toy, method="allspark", **changes):
    model = yaml.safe_load(yaml.safe_dump(TINY_DPT if method == "unimatch_v2" else TINY_MODEL))
    if method in ("semi", "sup"):
        model["decoder"] = {"type": "segformer", "kwargs": {"num_class": 5, "in_planes": [16, 32, 40, 64],
                                                            "embedding_dim": 32}}
    cfg = {"method": method, "dataset": "toy", "data_root": str(toy.root), "val_id_path": toy.val, "nclass": 5,
           "crop_size": 65, "epochs": 2, "batch_size": 2, "lr": 0.005, "lr_multi": 10.0,
           "criterion": {"name": "CELoss", "kwargs": {"ignore_index": 255}}, "num_workers": 0, "model": model}
    if method == "unimatch_v2":
        cfg.update(crop_size=70, lr=0.0002, conf_thresh=0.5)
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_",
                                                                     "SLURM_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run(args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=kwargs.pop("env", clean_env()),
                          capture_output=True, text=True, timeout=300, **kwargs)


def train_args(cfg, toy, save, *extra):
    return ["train.py", "--config", str(cfg), "--labeled-id-path", toy.labeled, "--unlabeled-id-path", toy.unlabeled,
            "--save-path", str(save), *extra]


def mious(log):
    return [float(v) for v in re.findall(r"MeanIoU: ([0-9.]+)", log)]


@pytest.mark.parametrize("method", ["allspark", "semi", "sup", "unimatch_v2"])
def test_torchrun_two_processes(tmp_path, toy, method):
    cfg = write_config(tmp_path / "c.yaml", toy, method)
    save = tmp_path / "run"
    out = run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", *train_args(cfg, toy, save)])
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "launcher torchrun, world size 2, device cpu, backend gloo" in log
    assert "SyncBatchNorm: off on CPU" in log
    assert "Grad strides do not match" not in log and "FutureWarning" not in log
    assert log.count("===========> Epoch:") == 2
    ckpt = torch.load(save / "latest.pth", weights_only=True)
    if method == "unimatch_v2":  # the model and the EMA teacher are evaluated every epoch, both bests kept
        assert len(mious(log)) == 4 and log.count("Evaluation original (EMA) ***** >>>> MeanIoU") == 2
        assert re.search(r"Iters: 0/\d+, Total loss: [0-9.]+, Loss x: [0-9.]+, Loss s: [0-9.]+, Mask ratio: "
                         r"[0-9.]+, Pseudo acc: [0-9.]+, lr: [0-9.]+, [0-9.]+ img/s, ETA", log)
        assert set(ckpt) == {"model", "model_ema", "optimizer", "epoch", "best_epoch", "previous_best",
                             "best_epoch_ema", "previous_best_ema", "provenance"}
        assert round(ckpt["previous_best"], 2) == max(mious(log)[0::2])
        assert round(ckpt["previous_best_ema"], 2) == max(mious(log)[1::2])
        assert set(ckpt["model_ema"]) == set(ckpt["model"])
        assert not torch.equal(ckpt["model_ema"]["module.head.scratch.output_conv.2.weight"],
                               ckpt["model"]["module.head.scratch.output_conv.2.weight"])
        assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} == {0.01}, "AdamW"
        for flag, expected in (([], mious(log)[-2]), (["--ema"], mious(log)[-1])):  # the last epoch's scores
            out = run(["eval.py", "--config", str(cfg), "--checkpoint", str(save / "latest.pth"), *flag])
            assert out.returncode == 0, out.stdout + out.stderr
            assert mious(out.stdout) == [expected], (flag, out.stdout[-500:])
    else:
        assert len(mious(log)) == 2
        pseudo_acc = "" if method == "sup" else r"Pseudo acc: [0-9.]+, "  # the toy's unlabeled masks are there
        assert re.search(r"Iters: 0/\d+, Total loss: [0-9.]+, Loss x: [0-9.]+, Loss u: [0-9.]+, " + pseudo_acc +
                         r"lr: [0-9.]+, [0-9.]+ img/s, ETA", log)
        assert set(ckpt) == {"model", "optimizer", "epoch", "best_epoch", "previous_best", "provenance"}
        assert round(ckpt["previous_best"], 2) == max(mious(log))
    assert ckpt["epoch"] == 1
    assert all(k.startswith("module.") for k in ckpt["model"])
    assert (save / "best.pth").is_file()
    assert list(save.glob("events.out.tfevents.*")), "TensorBoard scalars"
    assert not list(save.glob(".*.tmp")), "no temporary checkpoint left behind"
    if method == "allspark":
        ptr = ckpt["model"]["module.decoder.allspark.attn.queue_ptr"]
        assert ptr.sum() > 0, "the semantic memory was written"


# AllSpark with UniMatch V2's parts: EMA teacher, CutMixed strong views, confidence threshold, AdamW
WEAK_TO_STRONG = dict(teacher="ema", strong_aug=True, conf_thresh=0.5, optimizer="adamw", lr=0.0005)


TINY_DINOV2_ALLSPARK = {
    "backbone": TINY_DPT["backbone"],
    "decoder": {"type": "allspark", "kwargs": {"num_class": 5, "in_planes": [48] * 4, "image_size": 70,
                                               "warmup_epoch": 1, "embedding_dim": 32, "head": "dpt", "features": 16,
                                               "out_channels": [8, 16, 32, 32]}},
}


@pytest.mark.parametrize("options", [WEAK_TO_STRONG, dict(model=TINY_DINOV2_ALLSPARK, crop_size=70)],
                         ids=["weak_to_strong", "dinov2_dpt"])
def test_torchrun_allspark_options(tmp_path, toy, options):
    """Two option sets of method allspark under torchrun: UniMatch V2's parts on MiT, and the bottleneck
    on a (tiny) DINOv2 with the DPT head."""
    cfg = write_config(tmp_path / "c.yaml", toy, "allspark", **options)
    save = tmp_path / "run"
    out = run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", *train_args(cfg, toy, save)])
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    ckpt = torch.load(save / "latest.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["model"]["module.decoder.allspark.attn.queue_ptr"].sum() > 0
    if "teacher" in options:
        assert len(mious(log)) == 4 and "model_ema" in ckpt and "previous_best_ema" in ckpt
        assert re.search(r"Loss u: [0-9.]+, Mask ratio: [0-9.]+, Pseudo acc: [0-9.]+, lr", log)
        assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} == {0.01}, "AdamW"
    else:
        assert len(mious(log)) == 2 and "model_ema" not in ckpt
        assert ckpt["model"]["module.decoder.allspark.attn.kv_queue"].shape == (5, 48, 25)
        assert "module.decoder.head.projects.0.weight" in ckpt["model"]


@pytest.mark.parametrize("method, options", [("allspark", {}), ("unimatch_v2", {}), ("allspark", WEAK_TO_STRONG)],
                         ids=["allspark", "unimatch_v2", "allspark_weak_to_strong"])
def test_killed_run_resumes_where_it_stopped(tmp_path, toy, method, options):
    """A run killed in its second epoch and restarted ends exactly where an uninterrupted run ends
    (with an EMA teacher: the teacher and AdamW's state too)."""
    lists = make_toy_dataset(tmp_path / "data", seed=2, num_train=44, num_val=2, num_labeled=4, min_size=64,
                             max_size=72)
    data = SimpleNamespace(root=tmp_path / "data", **{k: str(v) for k, v in lists.items()})
    cfg = write_config(tmp_path / "c.yaml", data, method, num_workers=1, **options)  # persistent workers
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run(train_args(cfg, data, whole)).returncode == 0

    proc = subprocess.Popen([sys.executable, *train_args(cfg, data, broken)], cwd=ROOT, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (broken / "latest.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    first = torch.load(broken / "latest.pth", weights_only=True)
    assert first["epoch"] == 0, "the kill must land in the second epoch"
    saved_lr = first["optimizer"]["param_groups"][0]["lr"]

    out = run(train_args(cfg, data, broken))
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"resumed from {broken / 'latest.pth'}: epoch 0 done, lr {saved_lr:.8f}" in out.stdout
    assert out.stdout.count("===========> Epoch:") == 1 and "Epoch: 1," in out.stdout
    a = torch.load(whole / "latest.pth", weights_only=True)
    b = torch.load(broken / "latest.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    assert ("model_ema" in a) == (method == "unimatch_v2" or "teacher" in options)
    for entry in [e for e in ("model", "model_ema") if e in a]:
        assert set(a[entry]) == set(b[entry])
        for key, value in a[entry].items():
            assert torch.equal(value, b[entry][key]), (entry, key)
    assert a["optimizer"]["param_groups"][1]["lr"] == b["optimizer"]["param_groups"][1]["lr"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for idx, state in a["optimizer"]["state"].items():
        for key, value in state.items():  # SGD's momentum buffers, AdamW's step and moments
            assert torch.equal(value, b["optimizer"]["state"][idx][key]), (idx, key)


def test_fp16_run_keeps_its_loss_scale_across_a_resume(tmp_path, toy):
    cfg = write_config(tmp_path / "c.yaml", toy, amp="fp16", epochs=1)
    save = tmp_path / "run"
    out = run(train_args(cfg, toy, save))
    if not hasattr(torch.amp, "GradScaler"):  # torch 2.2: no loss scaler off CUDA; one line and status 2
        assert out.returncode == 2 and "error: amp: fp16 on cpu needs torch >= 2.3" in out.stdout, out.stdout[-3000:]
        assert "Traceback" not in out.stderr and not (save / "latest.pth").exists()
        return
    assert out.returncode == 0, out.stdout[-3000:]
    assert "mixed precision: fp16 autocast in the training step with loss scaling; evaluation in fp32" in out.stdout
    ckpt = torch.load(save / "latest.pth", weights_only=True)
    assert ckpt["scaler"]["scale"] == 65536.0  # GradScaler's initial scale, no overflow in one tiny epoch
    ckpt["scaler"]["scale"] = 1024.0  # as if it had backed off
    torch.save(ckpt, save / "latest.pth")
    out = run(train_args(write_config(tmp_path / "c.yaml", toy, amp="fp16", epochs=2), toy, save))
    assert out.returncode == 0, out.stdout[-3000:]
    assert "epoch 0 done" in out.stdout and ", loss scale 1024" in out.stdout
    assert torch.load(save / "latest.pth", weights_only=True)["scaler"]["scale"] <= 1024.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy):
    tmp = tmp_path_factory.mktemp("trained")
    cfg = write_config(tmp / "c.yaml", toy)
    out = run(train_args(cfg, toy, tmp / "run"))
    assert out.returncode == 0, out.stdout[-3000:]
    return SimpleNamespace(cfg=cfg, save=tmp / "run", log=out.stdout)


def test_eval_py_scores_the_best_checkpoint(trained, tmp_path):
    out = run(["eval.py", "--config", str(trained.cfg), "--checkpoint", str(trained.save / "best.pth"),
               "--save-vis", str(tmp_path / "vis")])
    assert out.returncode == 0, out.stdout + out.stderr
    assert mious(out.stdout) == [max(mious(trained.log))], "eval.py reproduces the training's best score"
    assert len(re.findall(r"Class \[\d+ [a-z ]+\] IoU", out.stdout)) == 5
    panels = sorted((tmp_path / "vis").glob("*.png"))
    assert len(panels) == 4
    from PIL import Image
    with Image.open(panels[0]) as im:
        assert im.size[0] % 3 == 0 and im.size[0] // 3 >= 64


def test_eval_py_modes_and_torchrun(trained):
    # (sliding_window is covered in test_engine_units: the release cuts edge windows at the border, and on
    # these 64-80 px images a cut window is smaller than MiT's stage-1 reduction accepts)
    for mode in ("multiscale", "center_crop"):
        out = run(["eval.py", "--config", str(trained.cfg), "--checkpoint", str(trained.save / "latest.pth"),
                   "--mode", mode])
        assert out.returncode == 0 and f"Evaluation {mode}" in out.stdout, out.stdout + out.stderr
    single = run(["eval.py", "--config", str(trained.cfg), "--checkpoint", str(trained.save / "latest.pth")])
    double = run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "eval.py",
                  "--config", str(trained.cfg), "--checkpoint", str(trained.save / "latest.pth")])
    assert double.returncode == 0, double.stdout + double.stderr
    assert mious(double.stdout) == mious(single.stdout), "every val image counted once over two processes"


def test_eval_py_on_release_checkpoint_from_golden(tmp_path, toy):
    golden = torch.load(golden_file("allspark_ref_small.pt"), weights_only=False)
    ckpt = {"model": {f"module.{k}": v for k, v in golden["state_dict"].items()},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 79, "best_epoch": 70, "previous_best": 80.1}
    torch.save(ckpt, tmp_path / "release.pth")
    cfg = write_config(tmp_path / "c.yaml", toy)
    out = run(["eval.py", "--config", str(cfg), "--checkpoint", str(tmp_path / "release.pth")])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "epoch 79" in out.stdout and len(mious(out.stdout)) == 1


def test_slurm_launch_with_stub_scontrol(tmp_path, toy):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "scontrol"
    stub.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\nprintf "127.0.0.1\\nnode2\\n"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    cfg = write_config(tmp_path / "c.yaml", toy, "sup", epochs=1)
    port = free_port()
    procs = []
    for rank in range(2):
        env = clean_env(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                        SLURM_NODELIST="node[1-2]", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        procs.append(subprocess.Popen([sys.executable, *train_args(cfg, toy, tmp_path / "run", "--port", str(port))],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "launcher slurm, world size 2" in logs[0]
    assert "show hostnames node[1-2]" in (bin_dir / "calls").read_text()
    assert (tmp_path / "run" / "latest.pth").is_file()


def test_non_finite_loss_stops_and_keeps_latest(tmp_path, toy, monkeypatch):
    from allspark.engine import trainer

    cfg = write_config(tmp_path / "c.yaml", toy, epochs=1)
    args = SimpleNamespace(config=str(cfg), labeled_id_path=toy.labeled, unlabeled_id_path=toy.unlabeled,
                           save_path=str(tmp_path / "run"), method=None, port=None, seed=0)
    trainer.main(args)
    before = (tmp_path / "run" / "latest.pth").read_bytes()
    write_config(tmp_path / "c.yaml", toy, epochs=2)

    real = trainer.build_criterion

    def poisoned(spec):
        crit = real(spec)
        calls = []

        def nan_on_second_call(pred, target):
            calls.append(1)
            loss = crit(pred, target)
            return loss * float("nan") if len(calls) == 2 else loss
        return nan_on_second_call
    monkeypatch.setattr(trainer, "build_criterion", lambda spec: _Wrap(poisoned(spec)))
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at epoch 1, iteration 1 "):
        trainer.main(args)
    assert (tmp_path / "run" / "latest.pth").read_bytes() == before


class _Wrap(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, pred, target):
        return self.fn(pred, target)


def test_cli_errors(tmp_path, toy, trained):
    bad = write_config(tmp_path / "bad.yaml", toy, warmup=3)
    out = run(train_args(bad, toy, tmp_path / "x"))
    assert out.returncode == 2 and "unknown key(s) ['warmup']" in out.stdout + out.stderr
    good = write_config(tmp_path / "good.yaml", toy)
    out = run(["train.py", "--config", str(good), "--labeled-id-path", str(tmp_path / "missing.txt"),
               "--unlabeled-id-path", toy.unlabeled, "--save-path", str(tmp_path / "x")])
    assert out.returncode == 2 and f"split list not found: {tmp_path / 'missing.txt'}" in out.stdout + out.stderr
    other = write_config(tmp_path / "seven.yaml", toy, nclass=7)
    other_cfg = yaml.safe_load(other.read_text())
    other_cfg["model"]["decoder"]["kwargs"]["num_class"] = 7
    other.write_text(yaml.safe_dump(other_cfg))
    out = run(["eval.py", "--config", str(other), "--checkpoint", str(trained.save / "best.pth")])
    assert out.returncode == 2
    assert "It was trained for 5 classes, the model has 7" in out.stdout + out.stderr
