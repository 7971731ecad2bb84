"""End to end on the CPU: train.py under torchrun (gloo) and SLURM's variables, every method and option set,
resume after a kill, eval.py on our and the release's checkpoints, and the errors a user meets first.

One run per launcher path (torchrun: the shared reference run and UniMatch V2's; SLURM: two processes);
the methods' other runs go through the entry points in this process (``helpers.call``)."""
import os
import re
import signal
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers import (ROOT, assert_same_run, call, clean_env, free_port, golden_file, mious, run,
                     tiny_dinov2_allspark_cfg, torchrun, train_args, write_config)

# AllSpark with UniMatch V2's parts: EMA teacher, CutMixed strong views, confidence threshold, AdamW
WEAK_TO_STRONG = dict(teacher="ema", strong_aug=True, conf_thresh=0.5, optimizer="adamw", lr=0.0005)


def assert_a_whole_run(save, log, epochs=2):
    """What every finished run leaves: its checkpoints, TensorBoard scalars, no temporary file."""
    ckpt = torch.load(save / "latest.pth", weights_only=True)
    assert ckpt["epoch"] == epochs - 1 and log.count("===========> Epoch:") == epochs
    assert all(k.startswith("module.") for k in ckpt["model"])
    assert (save / "best.pth").is_file() and list(save.glob("events.out.tfevents.*")), "checkpoints, TensorBoard"
    assert not list(save.glob(".*.tmp")), "no temporary checkpoint left behind"
    return ckpt


def test_torchrun_runs_allspark_on_two_processes(torchrun_run, reference_config, long_toy):
    log, save = torchrun_run.log, torchrun_run.save
    assert "launcher torchrun, world size 2, device cpu, backend gloo" in log
    assert "SyncBatchNorm: off on CPU" in log
    assert "Grad strides do not match" not in log and "FutureWarning" not in log
    assert re.search(r"Iters: 0/10, Total loss: [0-9.]+, Loss x: [0-9.]+, Loss u: [0-9.]+, Pseudo acc: [0-9.]+, "
                     r"lr: [0-9.]+, [0-9.]+ img/s, ETA", log)
    ckpt = assert_a_whole_run(save, log)
    assert set(ckpt) == {"model", "optimizer", "epoch", "best_epoch", "previous_best", "provenance"}
    assert len(mious(log)) == 2 and round(ckpt["previous_best"], 2) == max(mious(log))
    assert ckpt["model"]["module.decoder.allspark.attn.queue_ptr"].sum() > 0, "the semantic memory was written"
    # eval.py under torchrun: every val image counted once over the two processes
    single = call("eval", ["--config", reference_config, "--checkpoint", save / "latest.pth"])
    double = run(torchrun("eval.py", "--config", str(reference_config), "--checkpoint", str(save / "latest.pth")))
    assert double.returncode == 0, double.stdout + double.stderr
    assert mious(double.stdout) == mious(single.log) == [mious(log)[-1]]


def test_torchrun_runs_unimatch_v2_on_two_processes(tmp_path, toy):
    """The model and the EMA teacher are evaluated every epoch and both bests kept; DINOv2's unused mask token
    and the DPT head's unused unit under DDP; eval.py scores either."""
    cfg = write_config(tmp_path / "c.yaml", toy, "unimatch_v2")
    save = tmp_path / "run"
    out = run(torchrun(*train_args(cfg, toy, save)))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "Grad strides do not match" not in log and "FutureWarning" not in log
    assert len(mious(log)) == 4 and log.count("Evaluation original (EMA) ***** >>>> MeanIoU") == 2
    assert re.search(r"Iters: 0/\d+, Total loss: [0-9.]+, Loss x: [0-9.]+, Loss s: [0-9.]+, Mask ratio: "
                     r"[0-9.]+, Pseudo acc: [0-9.]+, lr: [0-9.]+, [0-9.]+ img/s, ETA", log)
    ckpt = assert_a_whole_run(save, log)
    assert set(ckpt) == {"model", "model_ema", "optimizer", "epoch", "best_epoch", "previous_best",
                         "best_epoch_ema", "previous_best_ema", "provenance"}
    assert round(ckpt["previous_best"], 2) == max(mious(log)[0::2])
    assert round(ckpt["previous_best_ema"], 2) == max(mious(log)[1::2])
    assert set(ckpt["model_ema"]) == set(ckpt["model"])
    assert not torch.equal(ckpt["model_ema"]["module.head.scratch.output_conv.2.weight"],
                           ckpt["model"]["module.head.scratch.output_conv.2.weight"])
    assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} == {0.01}, "AdamW"
    for flag, expected in (([], mious(log)[-2]), (["--ema"], mious(log)[-1])):  # the last epoch's scores
        scored = call("eval", ["--config", cfg, "--checkpoint", save / "latest.pth", *flag])
        assert scored.status == 0 and mious(scored.log) == [expected], (flag, scored.log[-500:])


@pytest.mark.parametrize("method, options", [
    ("sup", {}), ("semi", {}), ("semi", WEAK_TO_STRONG), ("allspark", WEAK_TO_STRONG),
    ("allspark", dict(model=tiny_dinov2_allspark_cfg("dpt"), crop_size=70)),
], ids=["sup", "semi", "semi_weak_to_strong", "allspark_weak_to_strong", "allspark_dinov2_dpt"])
def test_every_method_and_option_set_trains(tmp_path, toy, method, options):
    """The baselines, the weak-to-strong options (on semi and allspark) and the bottleneck on a (tiny) DINOv2
    with the DPT head, in one process."""
    cfg = write_config(tmp_path / "c.yaml", toy, method, **options)
    save = tmp_path / "run"
    out = call("train", train_args(cfg, toy, save)[1:])
    assert out.status == 0, out.log[-3000:]
    ckpt = assert_a_whole_run(save, out.log)
    ema = "teacher" in options
    assert len(mious(out.log)) == (4 if ema else 2) and ("model_ema" in ckpt) == ema
    pseudo_acc = "" if method == "sup" else r"(Mask ratio: [0-9.]+, )?Pseudo acc: [0-9.]+, "
    assert re.search(r"Iters: 0/\d+, Total loss: [0-9.]+, Loss x: [0-9.]+, Loss u: [0-9.]+, " + pseudo_acc +
                     r"lr: [0-9.]+, [0-9.]+ img/s, ETA", out.log)
    assert round(ckpt["previous_best"], 2) == max(mious(out.log)[0::2] if ema else mious(out.log))
    if ema:
        assert "previous_best_ema" in ckpt and re.search(r"Loss u: [0-9.]+, Mask ratio: [0-9.]+, Pseudo acc", out.log)
        assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} == {0.01}, "AdamW"
    if method == "allspark":
        assert ckpt["model"]["module.decoder.allspark.attn.queue_ptr"].sum() > 0
    if "model" in options:
        assert ckpt["model"]["module.decoder.allspark.attn.kv_queue"].shape == (5, 48, 25)
        assert "module.decoder.head.projects.0.weight" in ckpt["model"]


def killed_in_its_second_epoch(argv, save):
    """train.py started with ``argv`` and SIGKILLed (with its loader workers) once its first latest.pth is there."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (save / "latest.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    first = torch.load(save / "latest.pth", weights_only=True)
    assert first["epoch"] == 0, "the kill must land in the second epoch"
    return first


@pytest.mark.parametrize("method, options", [("allspark", {}), ("unimatch_v2", {}), ("allspark", WEAK_TO_STRONG)],
                         ids=["allspark", "unimatch_v2", "allspark_weak_to_strong"])
def test_killed_run_resumes_where_it_stopped(tmp_path, toy, long_toy, reference_config, single_run, method, options):
    """A run killed in its second epoch and restarted ends exactly where an uninterrupted run ends
    (with an EMA teacher: the teacher and AdamW's state too)."""
    if method == "allspark" and not options:
        cfg, data, whole = reference_config, long_toy, single_run.save
    else:
        data = toy
        cfg = write_config(tmp_path / "c.yaml", data, method, num_workers=1, **options)  # persistent workers
        whole = tmp_path / "whole"
        assert call("train", train_args(cfg, data, whole)[1:]).status == 0
    broken = tmp_path / "broken"
    first = killed_in_its_second_epoch(train_args(cfg, data, broken), broken)
    out = call("train", train_args(cfg, data, broken)[1:])
    assert out.status == 0, out.log[-3000:]
    saved_lr = first["optimizer"]["param_groups"][0]["lr"]
    assert f"resumed from {broken / 'latest.pth'}: epoch 0 done, lr {saved_lr:.8f}" in out.log
    assert out.log.count("===========> Epoch:") == 1 and "Epoch: 1," in out.log
    assert_same_run(whole / "latest.pth", broken / "latest.pth")


def test_fp16_run_keeps_its_loss_scale_across_a_resume(tmp_path, toy):
    cfg = write_config(tmp_path / "c.yaml", toy, amp="fp16", epochs=1)
    save = tmp_path / "run"
    out = call("train", train_args(cfg, toy, save)[1:])
    if not hasattr(torch.amp, "GradScaler"):  # torch 2.2: no loss scaler off CUDA; one line and status 2
        assert out.status == 2 and "error: amp: fp16 on cpu needs torch >= 2.3" in out.log, out.log[-3000:]
        assert not (save / "latest.pth").exists()
        return
    assert out.status == 0, out.log[-3000:]
    assert "mixed precision: fp16 autocast in the training step with loss scaling; evaluation in fp32" in out.log
    ckpt = torch.load(save / "latest.pth", weights_only=True)
    assert ckpt["scaler"]["scale"] == 65536.0  # GradScaler's initial scale, no overflow in one tiny epoch
    ckpt["scaler"]["scale"] = 1024.0  # as if it had backed off
    torch.save(ckpt, save / "latest.pth")
    out = call("train", train_args(write_config(tmp_path / "c.yaml", toy, amp="fp16", epochs=2), toy, save)[1:])
    assert out.status == 0, out.log[-3000:]
    assert "epoch 0 done" in out.log and ", loss scale 1024" in out.log
    assert torch.load(save / "latest.pth", weights_only=True)["scaler"]["scale"] <= 1024.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy):
    tmp = tmp_path_factory.mktemp("trained")
    cfg = write_config(tmp / "c.yaml", toy)
    out = call("train", train_args(cfg, toy, tmp / "run")[1:])
    assert out.status == 0, out.log[-3000:]
    return SimpleNamespace(cfg=cfg, save=tmp / "run", log=out.log)


def test_eval_py_scores_the_best_checkpoint(trained, tmp_path):
    out = call("eval", ["--config", trained.cfg, "--checkpoint", trained.save / "best.pth",
                        "--save-vis", tmp_path / "vis"])
    assert out.status == 0, out.log
    assert mious(out.log) == [max(mious(trained.log))], "eval.py reproduces the training's best score"
    assert len(re.findall(r"Class \[\d+ [a-z ]+\] IoU", out.log)) == 5
    panels = sorted((tmp_path / "vis").glob("*.png"))
    assert len(panels) == 4
    from PIL import Image
    with Image.open(panels[0]) as im:
        assert im.size[0] % 3 == 0 and im.size[0] // 3 >= 64


def test_eval_py_modes(trained):
    # (sliding_window is covered in test_engine_units: the release cuts edge windows at the border, and on
    # these 64-80 px images a cut window is smaller than MiT's stage-1 reduction accepts)
    for mode in ("multiscale", "center_crop"):
        out = call("eval", ["--config", trained.cfg, "--checkpoint", trained.save / "latest.pth", "--mode", mode])
        assert out.status == 0 and f"Evaluation {mode}" in out.log, out.log


def test_eval_py_on_release_checkpoint_from_golden(tmp_path, toy):
    golden = torch.load(golden_file("allspark_ref_small.pt"), weights_only=False)
    ckpt = {"model": {f"module.{k}": v for k, v in golden["state_dict"].items()},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 79, "best_epoch": 70, "previous_best": 80.1}
    torch.save(ckpt, tmp_path / "release.pth")
    cfg = write_config(tmp_path / "c.yaml", toy)
    out = call("eval", ["--config", cfg, "--checkpoint", tmp_path / "release.pth"])
    assert out.status == 0, out.log
    assert "epoch 79" in out.log and len(mious(out.log)) == 1


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
    argv = train_args(cfg, toy, tmp_path / "run")[1:]
    assert call("train", argv).status == 0
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
    out = call("train", argv)
    assert out.status == 2 and re.search(r"error: non-finite loss \(nan\) at epoch 1, iteration 1 ", out.log)
    assert (tmp_path / "run" / "latest.pth").read_bytes() == before


class _Wrap(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, pred, target):
        return self.fn(pred, target)


def test_cli_errors(tmp_path, toy, trained):
    bad = write_config(tmp_path / "bad.yaml", toy, warmup=3)
    out = call("train", train_args(bad, toy, tmp_path / "x")[1:])
    assert out.status == 2 and "unknown key(s) ['warmup']" in out.log
    good = write_config(tmp_path / "good.yaml", toy)
    out = call("train", ["--config", good, "--labeled-id-path", tmp_path / "missing.txt", "--unlabeled-id-path",
                         toy.unlabeled, "--save-path", tmp_path / "x"])
    assert out.status == 2 and f"split list not found: {tmp_path / 'missing.txt'}" in out.log
    other = write_config(tmp_path / "seven.yaml", toy, nclass=7)
    other_cfg = yaml.safe_load(other.read_text())
    other_cfg["model"]["decoder"]["kwargs"]["num_class"] = 7
    other.write_text(yaml.safe_dump(other_cfg))
    out = call("eval", ["--config", other, "--checkpoint", trained.save / "best.pth"])
    assert out.status == 2 and "It was trained for 5 classes, the model has 7" in out.log
    assert "Traceback" not in out.log
