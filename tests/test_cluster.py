"""Runs that survive a cluster: one run per save path, no orphaned workers, nothing non-finite saved, a
stop on SLURM's signals with a mid-epoch checkpoint that resumes bitwise, provenance, and clear errors
for a full disk, a file as save path and 16-bit images."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.data import DataError, read_rgb
from allspark.data.toy import make_toy_dataset
from allspark.engine.checkpoint import save_checkpoint
from allspark.engine.cluster import EXIT_PREEMPTED, RunLock, RunLockedError, StopRequest, parse_duration
from allspark.files import WriteError, current_umask
from conftest import ROOT
from test_training import clean_env, free_port, run, train_args, write_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """20 labeled-list steps per epoch at batch size 2 (one process), 10 per process with two."""
    root = tmp_path_factory.mktemp("data")
    lists = make_toy_dataset(root, seed=2, num_train=44, num_val=2, num_labeled=4, min_size=64, max_size=72)
    return SimpleNamespace(root=root, **{k: str(v) for k, v in lists.items()})


def start(args, **kwargs):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def wait_for_line(proc, text, timeout=120):
    """Read ``proc``'s output until a line holds ``text``; returns what was read."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never came: {''.join(seen)[-3000:]}")


def children(pid):
    """Pids whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def rank_of(pid):
    env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    return int(next(v for v in env if v.startswith(b"RANK=")).split(b"=")[1])


def processes_with(text):
    """Pids of live processes whose command line holds ``text``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def assert_same_run(a_path, b_path):
    a, b = (torch.load(p, weights_only=True) for p in (a_path, b_path))
    assert a["epoch"] == b["epoch"] and "interrupted" not in b
    for entry in [e for e in ("model", "model_ema") if e in a]:
        for key, value in a[entry].items():
            assert torch.equal(value, b[entry][key]), (entry, key)
    for idx, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][idx][key]), (idx, key)
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


# ---- one run per save path -------------------------------------------------------------------------------

def test_lock_names_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from allspark.engine.cluster import RunLock; "
                               f"lock = RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=rf"another run is using {tmp_path} \(host .*, pid {holder.pid}, since "):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    assert (tmp_path / ".lock").exists(), "the stale file stays"
    RunLock(tmp_path).acquire().release()  # and does not block


def test_lock_on_a_file_system_without_locks_warns_and_runs(tmp_path, monkeypatch, caplog):
    import fcntl
    import logging

    def no_locks(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="allspark"):
        RunLock(tmp_path).acquire()
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text


def test_second_run_on_the_same_save_path_stops_at_once(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=200)
    save = tmp_path / "run"
    first = start(train_args(cfg, data, save), start_new_session=True)
    try:
        wait_for_line(first, "===========> Epoch: 0")
        (save / ".latest.pth.x1y2.tmp").write_bytes(b"half")  # as a SIGKILL mid-write leaves it
        second = run(train_args(cfg, data, save))
        assert second.returncode == 2
        assert (save / ".latest.pth.x1y2.tmp").exists(), "not the second run's to remove"
        assert f"error: another run is using {save} (host " in second.stdout and f"pid {first.pid}" in second.stdout
        assert "Epoch:" not in second.stdout
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    third = run(train_args(write_config(tmp_path / "c.yaml", data, epochs=1), data, save))  # the lock is free again
    assert third.returncode == 0 and "removed .latest.pth.x1y2.tmp" in third.stdout
    assert not (save / ".latest.pth.x1y2.tmp").exists()


# ---- no orphans -----------------------------------------------------------------------------------------

def test_killed_torchrun_leaves_no_worker(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=20)
    save = tmp_path / "orphans"
    proc = start(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                  f"--master_port={free_port()}", *train_args(cfg, data, save)])
    try:
        wait_for_line(proc, "===========> Epoch: 1")
        workers = processes_with(str(save))
        assert len([p for p in workers if p != proc.pid]) >= 2
        proc.send_signal(signal.SIGKILL)  # the launcher alone, as a node's OOM killer or a lost shell would
        proc.communicate()
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

def test_non_finite_buffer_is_never_saved(tmp_path, data, monkeypatch):
    import train as train_py
    from allspark.engine import trainer

    cfg = write_config(tmp_path / "c.yaml", data, epochs=2)
    save = tmp_path / "run"
    validate = trainer._validate

    def validate_then_break(run, epoch):  # as if the weights had blown up during epoch 1
        scores = validate(run, epoch)
        if epoch == 1:
            run.model.decoder.allspark.attn.kv_queue[0, 0, 0] = float("nan")
        return scores

    monkeypatch.setattr(trainer, "_validate", validate_then_break)
    with pytest.raises(FloatingPointError, match=r"epoch 1: model decoder.allspark.attn.kv_queue holds NaN or "
                                                 r"infinite values; nothing was saved"):
        trainer.main(train_py.parse_args(train_args(cfg, data, save)[1:]))
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
def test_signal_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, data, processes):
    cfg = write_config(tmp_path / "c.yaml", data, num_workers=1)  # persistent loader workers
    launch = (["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}"] if processes > 1 else [])
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run([*launch, *train_args(cfg, data, whole)]).returncode == 0
    proc = start([*launch[:-1], f"--master_port={free_port()}", *train_args(cfg, data, broken)] if launch
                 else train_args(cfg, data, broken))
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

    out = run([*launch[:-1], f"--master_port={free_port()}", *train_args(cfg, data, broken)] if launch
              else train_args(cfg, data, broken))
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"epoch 1, step {stopped['iteration']} of {steps}" in out.stdout
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

def test_provenance_in_checkpoints_logs_and_eval(tmp_path, data):
    import yaml

    cfg = write_config(tmp_path / "c.yaml", data, epochs=1)
    out = run(train_args(cfg, data, tmp_path / "run"))
    assert out.returncode == 0, out.stdout[-3000:]
    assert "provenance: commit " in out.stdout and "world size 1" in out.stdout
    prov = torch.load(tmp_path / "run/latest.pth", weights_only=True)["provenance"]
    assert prov["config"]["crop_size"] == 65 and prov["world_size"] == 1 and "train.py" in prov["command"]
    assert prov["torch"] == torch.__version__ and len(prov["git_commit"]) == 40 and isinstance(prov["git_dirty"], bool)

    same = run(["eval.py", "--config", str(cfg), "--checkpoint", str(tmp_path / "run/latest.pth")])
    assert same.returncode == 0 and f"trained with: commit {prov['git_commit']}" in same.stdout
    assert "differs from the config it was trained with" not in same.stdout
    changed = yaml.safe_load(cfg.read_text())
    changed["model"]["decoder"]["kwargs"]["warmup_epoch"] = 3  # loads, and is warned about
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(changed))
    other = run(["eval.py", "--config", str(tmp_path / "other.yaml"), "--checkpoint", str(tmp_path / "run/latest.pth")])
    assert other.returncode == 0
    assert "model.decoder.kwargs.warmup_epoch: 3 here, 1 in the checkpoint's config" in other.stdout
    changed["model"]["decoder"]["kwargs"]["num_heads"] = 4  # does not load: the warning says why first
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(changed))
    other = run(["eval.py", "--config", str(tmp_path / "other.yaml"), "--checkpoint", str(tmp_path / "run/latest.pth")])
    assert other.returncode == 2 and "num_heads: 4 here, 2 in the checkpoint's config" in other.stdout


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


def test_save_path_that_is_a_file(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data)
    (tmp_path / "taken").write_text("notes")
    out = run(train_args(cfg, data, tmp_path / "taken"))
    assert out.returncode == 2 and f"error: --save-path {tmp_path / 'taken'} is a file, not a folder" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


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
