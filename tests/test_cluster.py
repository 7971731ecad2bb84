"""Runs that survive a cluster: one run per save path, no orphaned workers, nothing non-finite saved, a
stop on SLURM's signals with a mid-epoch checkpoint that resumes bitwise, provenance, and clear errors
for a full disk, a file as save path and 16-bit images."""
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.data import DataError, read_rgb
from allspark.engine.checkpoint import save_checkpoint
from allspark.engine.cluster import EXIT_PREEMPTED, RunLock, RunLockedError, StopRequest, parse_duration
from allspark.files import WriteError, current_umask
from helpers import (ROOT, assert_same_run, call, children, processes_with, rank_of, run, start, torchrun,
                     train_args, wait_for_line, write_config)


# ---- one run per save path -------------------------------------------------------------------------------

def _hold(path, locked):
    lock = RunLock(path).acquire()
    locked.set()
    time.sleep(60)
    lock.release()


def test_lock_names_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # a holder of its own that is cheap to start
    locked = context.Event()
    holder = context.Process(target=_hold, args=(tmp_path, locked), daemon=True)
    holder.start()
    assert locked.wait(30)
    with pytest.raises(RunLockedError, match=rf"another run is using {tmp_path} \(host .*, pid {holder.pid}, since "):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.join()
    assert (tmp_path / ".lock").exists(), "the stale file stays"
    RunLock(tmp_path).acquire().release()  # and does not block


def test_the_trainer_releases_its_lock_however_it_ends(tmp_path, toy):
    """close() releases the save path's lock, and so does a constructor that fails after taking it."""
    from allspark.data import DataError
    from allspark.engine.trainer import Trainer

    from helpers import training_config

    lists = dict(labeled_list=toy.labeled, unlabeled_list=toy.unlabeled)
    trainer = Trainer(training_config(toy), save_path=tmp_path / "a", **lists)
    with pytest.raises(RunLockedError):
        RunLock(tmp_path / "a").acquire()
    trainer.close()
    RunLock(tmp_path / "a").acquire().release()
    with pytest.raises(DataError, match="fewer than batch_size 64"):  # the loaders come after the lock
        Trainer(training_config(toy, batch_size=64), save_path=tmp_path / "b", **lists)
    RunLock(tmp_path / "b").acquire().release()


def test_lock_on_a_file_system_without_locks_warns_and_runs(tmp_path, monkeypatch, caplog):
    import fcntl
    import logging

    def no_locks(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="allspark"):
        RunLock(tmp_path).acquire()
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text


def test_second_run_on_the_same_save_path_stops_at_once(tmp_path, toy):
    """A run on a save path another run holds stops at once, naming the holder, and leaves that path's files
    alone; once the lock is free the next run takes it and removes what a killed run left mid-write. (The
    holder is this process: fcntl locks belong to the open file, so the run's own open conflicts with it.)"""
    cfg = write_config(tmp_path / "c.yaml", toy, epochs=1)
    save = tmp_path / "run"
    save.mkdir()
    holder = RunLock(save).acquire()
    try:
        (save / ".latest.pth.x1y2.tmp").write_bytes(b"half")  # as a SIGKILL mid-write leaves it
        second = call("train", train_args(cfg, toy, save)[1:])
        assert second.status == 2
        assert f"error: another run is using {save} (host " in second.log and f"pid {os.getpid()}" in second.log
        assert "Epoch:" not in second.log and (save / ".latest.pth.x1y2.tmp").exists(), "not the second run's to remove"
    finally:
        holder.release()
    third = call("train", train_args(cfg, toy, save)[1:])  # the lock is free again
    assert third.status == 0 and "removed .latest.pth.x1y2.tmp" in third.log
    assert not (save / ".latest.pth.x1y2.tmp").exists()


# ---- no orphans -----------------------------------------------------------------------------------------

def test_killed_torchrun_leaves_no_worker(tmp_path, toy):
    save = tmp_path / "orphans"
    cfg = write_config(tmp_path / "c.yaml", toy, num_workers=1, epochs=20)
    proc = start(torchrun(*train_args(cfg, toy, save)))
    try:
        wait_for_line(proc, "===========> Epoch: 1")
        workers = processes_with(str(save))
        assert len([p for p in workers if p != proc.pid]) >= 2
        proc.stdout.close()  # whoever read the launcher's output is gone too: the workers' stderr is a broken pipe
        proc.send_signal(signal.SIGKILL)  # the launcher alone, as a node's OOM killer or a lost shell would
        proc.wait()
        deadline = time.time() + 10
        while processes_with(str(save)) and time.time() < deadline:
            time.sleep(0.2)
        assert processes_with(str(save)) == [], "workers outlived their launcher"
        ckpt = torch.load(save / "latest.pth", weights_only=True)  # the last complete one
        assert ckpt["epoch"] >= 0 and "interrupted" not in ckpt
    finally:
        for pid in processes_with(str(save)):
            os.kill(pid, signal.SIGKILL)


# ---- nothing non-finite is saved -------------------------------------------------------------------------

def test_non_finite_buffer_is_never_saved(tmp_path, toy, monkeypatch):
    from allspark.engine.trainer import Trainer

    cfg = write_config(tmp_path / "c.yaml", toy, epochs=2)
    save = tmp_path / "run"
    validate = Trainer.validate

    def validate_then_break(trainer, epoch):  # as if the weights had blown up during epoch 1
        scores = validate(trainer, epoch)
        if epoch == 1:
            trainer.model.decoder.allspark.attn.kv_queue[0, 0, 0] = float("nan")
        return scores

    monkeypatch.setattr(Trainer, "validate", validate_then_break)
    out = call("train", train_args(cfg, toy, save)[1:])
    assert out.status == 2
    assert ("error: epoch 1: model decoder.allspark.attn.kv_queue holds NaN or infinite values; nothing was saved"
            in out.log)
    kept = torch.load(save / "latest.pth", weights_only=True)
    assert kept["epoch"] == 0 and torch.isfinite(kept["model"]["module.decoder.allspark.attn.kv_queue"]).all()


def test_non_finite_optimizer_state_is_named(tmp_path):
    from allspark.engine.checkpoint import checkpoint_tensors, first_non_finite

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert first_non_finite(checkpoint_tensors(model, opt)) is None
    opt.state[model[0].bias]["momentum_buffer"][0] = float("inf")
    assert first_non_finite(checkpoint_tensors(model, opt)) == "optimizer momentum_buffer of 0.bias"


# ---- preemption: stop on a signal, checkpoint mid-epoch, resume bitwise --------------------------------------

@pytest.mark.parametrize("processes", [1, 2])
def test_signal_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, long_toy, reference_config, single_run,
                                                                  torchrun_run, processes):
    """Stopped by a signal in its second epoch (persistent loader workers), checkpointed, resumed: the same
    run as the uninterrupted reference, in one process and in two (the signal to one of them)."""
    broken = tmp_path / "broken"
    argv = train_args(reference_config, long_toy, broken)
    proc = start(torchrun(*argv) if processes > 1 else argv)
    wait_for_line(proc, "===========> Epoch: 1")
    wait_for_line(proc, "Iters: 0/")
    if processes == 1:
        proc.send_signal(signal.SIGUSR1)
    else:  # SLURM signals every task; here one only: the other must stop at the same step
        target = next(pid for pid in children(proc.pid) if rank_of(pid) == 1)
        os.kill(target, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == (EXIT_PREEMPTED if processes == 1 else 1), out[-3000:]  # torchrun reports 1
    assert "stopping (" in out and "run the same command again to continue" in out
    ckpt = torch.load(broken / "latest.pth", weights_only=True)
    stopped = ckpt["interrupted"]
    steps = 20 // processes
    assert stopped["epoch"] == 1 and 0 < stopped["iteration"] < steps and ckpt["epoch"] == 0
    assert len(stopped["ranks"]) == processes and "kv_queue" in "".join(stopped["ranks"][-1]["buffers"]["model"])

    if processes == 1:
        resumed = call("train", argv[1:])
        log, status, whole = resumed.log, resumed.status, single_run.save
    else:
        again = run(torchrun(*argv))
        log, status, whole = again.stdout, again.returncode, torchrun_run.save
    assert status == 0, log[-3000:]
    assert f"epoch 1, step {stopped['iteration']} of {steps}" in log
    assert_same_run(whole / "latest.pth", broken / "latest.pth")


def test_stop_request_on_signals_and_time_budget():
    saved = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    try:
        stop = StopRequest().install()
        assert stop.reason() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason() == "SIGTERM"
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    budget = StopRequest(time_limit=100, min_margin=10)
    assert budget.reason() is None
    budget.took(40)
    assert budget.reason() is None, "100 s left, 80 s of margin"
    budget.took(51)  # a step as long as this needs 2 x 51 s of margin: more than is left
    assert budget.reason() == "time limit"
    assert [parse_duration(t) for t in ("3600", "90m", "12h", "1-12:00:00", "12:00:00", "45:00")] == \
        [3600, 5400, 43200, 129600, 43200, 2700]


def test_slurm_script_requeues_a_stopped_run(tmp_path):
    (tmp_path / "srun").write_text("#!/usr/bin/env bash\nexit 3\n")
    (tmp_path / "scontrol").write_text(f"#!/usr/bin/env bash\necho \"$@\" > {tmp_path}/scontrol.args\n")
    for tool in ("srun", "scontrol"):
        (tmp_path / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    out = subprocess.run(["bash", str(ROOT / "scripts/slurm_train.sh"), "1", "29500", "toy", "--save-path",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 3 and "training stopped with a checkpoint" in out.stderr
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]


# ---- provenance -----------------------------------------------------------------------------------------

def test_provenance_in_checkpoints_logs_and_eval(tmp_path, torchrun_run, reference_config):
    import yaml

    assert "provenance: commit " in torchrun_run.log and "world size 2" in torchrun_run.log
    checkpoint = torchrun_run.save / "latest.pth"
    prov = torch.load(checkpoint, weights_only=True)["provenance"]
    assert prov["config"]["crop_size"] == 65 and prov["world_size"] == 2 and "train.py" in prov["command"]
    assert prov["torch"] == torch.__version__ and len(prov["git_commit"]) == 40 and isinstance(prov["git_dirty"], bool)

    same = call("eval", ["--config", reference_config, "--checkpoint", checkpoint])
    assert same.status == 0 and f"trained with: commit {prov['git_commit']}" in same.log
    assert "differs from the config it was trained with" not in same.log
    changed = yaml.safe_load(reference_config.read_text())
    changed["model"]["decoder"]["kwargs"]["warmup_epoch"] = 3  # loads, and is warned about
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(changed))
    other = call("eval", ["--config", tmp_path / "other.yaml", "--checkpoint", checkpoint])
    assert other.status == 0
    assert "model.decoder.kwargs.warmup_epoch: 3 here, 1 in the checkpoint's config" in other.log
    changed["model"]["decoder"]["kwargs"]["num_heads"] = 4  # does not load: the warning says why first
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(changed))
    other = call("eval", ["--config", tmp_path / "other.yaml", "--checkpoint", checkpoint])
    assert other.status == 2 and "num_heads: 4 here, 2 in the checkpoint's config" in other.log


# ---- clear errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")])
def test_failed_checkpoint_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, failure):
    path = tmp_path / "latest.pth"
    save_checkpoint({"epoch": 0}, path)
    before = path.read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise failure

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(WriteError) as err:
        save_checkpoint({"epoch": 1}, path)
    message = str(err.value)
    assert message.startswith(f"cannot write checkpoint {path}: ") and "free on the disk of" in message
    assert ("No space left on device (errno 28)" if isinstance(failure, OSError) else "unexpected pos 64") in message
    assert "the previous one is left as it was" in message
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["latest.pth"], "no temporary file"


def test_checkpoint_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint({"epoch": 0}, tmp_path / "a.pth")
        assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        save_checkpoint({"epoch": 0}, tmp_path / "b.pth")
        assert (tmp_path / "b.pth").stat().st_mode & 0o777 == 0o664 and current_umask() == 0o002
    finally:
        os.umask(old)


def test_save_path_that_is_a_file(tmp_path, toy):
    cfg = write_config(tmp_path / "c.yaml", toy)
    (tmp_path / "taken").write_text("notes")
    out = call("train", train_args(cfg, toy, tmp_path / "taken")[1:])
    assert out.status == 2 and f"error: --save-path {tmp_path / 'taken'} is a file, not a folder" in out.log
    assert "Traceback" not in out.log and "config " not in out.log, "before the config is read"


def png16(path, arr):
    """A 16-bit PNG (grayscale (H, W) or RGB (H, W, 3) uint16), written by hand: PIL writes no 16-bit RGB."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if arr.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_16_bit_rgb_png_is_read_at_8_bits(tmp_path):
    wide = (np.arange(24).reshape(2, 4, 3) * 2700).astype(np.uint16)
    png16(tmp_path / "rgb16.png", wide)
    rgb = np.array(read_rgb(tmp_path / "rgb16.png")).astype(int)
    assert (np.abs(rgb - np.round(wide / 257)) <= 1).all() and rgb.max() > 100, "scaled, not clipped"
    png16(tmp_path / "g16.png", wide[..., 0])
    assert (np.array(read_rgb(tmp_path / "g16.png"))[..., 1] == np.round(wide[..., 0] / 257)).all()


def test_16_bit_images_are_scaled_and_32_bit_refused(tmp_path):
    wide = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode == "I;16"
    rgb = np.array(read_rgb(tmp_path / "w.png"))
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == np.round(wide / 257)).all() and rgb.max() == 214
    Image.fromarray(np.zeros((3, 4), np.int32), mode="I").save(tmp_path / "i.tif")
    with pytest.raises(DataError, match=r"image .*i.tif \(listed at l.txt:3\) has mode I \(32-bit integer pixels"):
        read_rgb(tmp_path / "i.tif", "l.txt:3")
