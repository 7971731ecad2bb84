"""Every way a run fails ends it: the process exits within a bound only a hang exceeds, with its documented
status and error line, and leaves no process behind (loader workers on and persistent). train.py in one
process and under torchrun with two, eval.py and predict.py.

The cases run a few at a time (each is mostly start-up), once per module; each test checks one case."""
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.engine.cluster import EXIT_PREEMPTED, RunLock
from allspark.engine.entry import EXIT_INTERRUPTED, EXIT_USER_ERROR
from helpers import ROOT, call, clean_env, make_toy, processes_with, torchrun, write_config

HANG_S = 120  # far above what any case takes (under 25 s here, four at a time on two cores)
AT_ONCE = 4
GONE_S = 10  # a killed rank's loader workers see their parent gone within torch's 5 s watchdog period


@dataclass
class Case:
    """A command line, what to do on a line of its output, and what it must end with."""
    argv: list
    status: int
    expect: str
    trigger: str = None  # a line holding this text fires ``action(process)`` once
    action: object = None
    holder: Path = None  # a save path whose run lock the test holds while the case runs
    user_error: bool = True  # a one-line error, no traceback
    crash: bool = False  # the third training step raises (a process runs train.py through a wrapper that makes it)


@dataclass
class Outcome:
    status: int
    log: str
    seconds: float
    hung: bool
    leftover: list = field(default_factory=list)


def signal_group(sig):
    """What SLURM (every process of the step) and Ctrl-C (the foreground group) do."""
    return lambda proc: os.killpg(proc.pid, sig)


def execute(case, marker):
    """Run ``case`` in a session of its own; kill everything holding ``marker`` in its command line if it
    hangs or leaves processes behind (they are reported, not left running)."""
    if case.holder:  # (fcntl locks belong to the open file: this process holds it against the case's)
        case.holder.mkdir(parents=True, exist_ok=True)
        holder = RunLock(case.holder).acquire()
    began = time.monotonic()
    argv = ["-c", CRASH.format(argv=case.argv)] if case.crash else case.argv
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []

    def read():
        fired = False
        for line in proc.stdout:
            lines.append(line)
            if case.trigger and not fired and case.trigger in line:
                fired = True
                case.action(proc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=HANG_S)
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
    seconds = time.monotonic() - began
    if case.holder:
        holder.release()
    deadline = time.monotonic() + GONE_S
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = [(Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
                for pid in processes_with(marker) if Path(f"/proc/{pid}").exists()]
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    reader.join(10)
    return Outcome(proc.returncode, "".join(lines), seconds, hung, leftover)


def _broken_copy(root, rel, name, change):
    """Copy the file ``rel`` under ``root`` to ``name`` (same folder, same suffix), changed by ``change``."""
    src = root / rel
    dst = src.with_name(name + src.suffix)
    change(src, dst)
    return dst.relative_to(root).as_posix()


def _value_7(src, dst):
    with Image.open(src) as m:
        arr, palette = np.array(m), m.getpalette()
    arr[0, 0] = 7
    out = Image.fromarray(arr, mode="P")
    out.putpalette(palette)
    out.save(dst)


def _bigger(src, dst):
    with Image.open(src) as m:
        m.resize((m.size[0] + 3, m.size[1])).save(dst)


def _garbage(src, dst):
    dst.write_bytes(b"not a JPEG at all")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """20 steps an epoch for one process (10 for each of two); lists with one broken sample first."""
    out = make_toy(tmp_path_factory.mktemp("data"), seed=3, num_train=44, num_val=4, min_size=64, max_size=72)
    root = out.root
    first = Path(out.labeled).read_text().splitlines()
    image, mask = first[0].split()
    broken = {
        "value": f"{image} {_broken_copy(root, mask, 'value7', _value_7)}",
        "size": f"{image} {_broken_copy(root, mask, 'bigger', _bigger)}",
        "unreadable": f"{_broken_copy(root, image, 'garbage', _garbage)} {mask}",
    }
    for kind, line in broken.items():  # the broken sample on every line: whichever rank draws first meets it
        (root / f"{kind}.txt").write_text("\n".join([line] * len(first)) + "\n")
        setattr(out, kind, str(root / f"{kind}.txt"))
    val = Path(out.val).read_text().splitlines()
    (root / "bad_val.txt").write_text("\n".join(val[:2] + [broken["value"]] + val[3:]) + "\n")
    out.bad_val = str(root / "bad_val.txt")
    (root / "short.txt").write_text("\n".join(Path(out.unlabeled).read_text().splitlines()[:4]) + "\n")
    out.short = str(root / "short.txt")  # epochs of 2 steps (1 with two processes)
    return out


CRASH = ("import runpy, sys\n"
         "from allspark.engine.trainer import Trainer\n"
         "real, calls = Trainer.step, []\n"
         "def step(*args, **kwargs):\n"
         "    calls.append(1)\n"
         "    if len(calls) == 3:\n"
         "        raise RuntimeError('injected crash in the training step')\n"
         "    return real(*args, **kwargs)\n"
         "Trainer.step = step\n"
         "sys.argv = {argv!r}\n"
         "runpy.run_path('train.py', run_name='__main__')\n")


def cases(tmp, data, checkpoint):
    """{name: (Case, marker)} of every failure: the marker, a path of the case's own, is in the command line of
    every process the case starts. The single-process cases' processes run under ``execute``; every one of
    them also runs in this process (``test_in_one_process_...``)."""
    cfg = write_config(tmp / "c.yaml", data, num_workers=1, persistent_workers=True, epochs=3)
    ckpt_cfg = write_config(tmp / "one_epoch.yaml", data, num_workers=1, persistent_workers=True, epochs=1)
    out = {}

    def train(name, labeled=data.labeled, *extra, config=cfg, launch=False, unlabeled=data.unlabeled, **kw):
        save = tmp / name
        argv = [*(torchrun() if launch else ()), "train.py", "--config", str(config), "--labeled-id-path", labeled,
                "--unlabeled-id-path", unlabeled, "--save-path", str(save), *extra]
        out[name] = (Case(argv, **kw), str(save))
        return save

    for prefix, launch, failed in (("", False, None), ("torchrun_", True, 1)):
        for kind in ("value", "size", "unreadable")[:3 if not launch else 1]:  # one path for all three
            message = {"value": "has values [7] that are neither a class (0..4) nor ignore (255)",
                       "size": "but mask", "unreadable": "garbage.jpg (listed at "}[kind]
            train(f"{prefix}data_{kind}", getattr(data, kind), launch=launch, status=failed or EXIT_USER_ERROR,
                  expect=message)
        train(f"{prefix}non_finite_loss", data.labeled, "--opts", "lr=1.0e+12", launch=launch,
              status=failed or EXIT_USER_ERROR, expect="error: non-finite loss (nan) at epoch 0")
        train(f"{prefix}eval_error", data.labeled, "--opts", f"val_id_path={data.bad_val}", launch=launch,
              unlabeled=data.short, status=failed or EXIT_USER_ERROR, expect="error: mask ")
        save = train(f"{prefix}write_error", data.labeled, config=ckpt_cfg, launch=launch, unlabeled=data.short,
                     status=failed or EXIT_USER_ERROR, expect="error: cannot write checkpoint ")
        (save / "latest.pth").mkdir(parents=True)  # the rename onto it fails
        train(f"{prefix}interrupt", data.labeled, launch=launch, status=failed or EXIT_INTERRUPTED,
              expect="interrupted (Ctrl-C, SIGINT)", trigger="Iters: 0/", action=signal_group(signal.SIGINT))
        train(f"{prefix}locked", data.labeled, launch=launch, holder=tmp / f"{prefix}locked",
              status=failed or EXIT_USER_ERROR, expect="error: another run is using ")
        train(f"{prefix}time_limit", data.labeled, "--time-limit", "1", launch=launch,
              status=failed or EXIT_PREEMPTED, expect="stopping (time limit) after step 1 of epoch 0")
    # SLURM signals every process of the step, loader workers included (one process: under torchrun the
    # ranks are sessions of their own, and the preemption tests of test_cluster signal them)
    train("signal", data.labeled, status=EXIT_PREEMPTED, expect="stopping (SIGTERM) after step",
          trigger="Iters: 0/", action=signal_group(signal.SIGTERM))
    train("crash", data.labeled, status=1, expect="RuntimeError: injected crash", user_error=False, crash=True)
    for prefix, launch, failed in (("", False, None), ("torchrun_", True, 1)):
        marker = tmp / f"{prefix}eval_py"
        out[f"{prefix}eval_py"] = (Case([*(torchrun() if launch else ()), "eval.py", "--config", str(cfg),
                                         "--checkpoint", str(checkpoint), "--save-vis", str(marker), "--opts",
                                         f"val_id_path={data.bad_val}"],
                                        status=failed or EXIT_USER_ERROR, expect="error: mask "), str(marker))
    marker = tmp / "predict_out"
    out["predict_py"] = (Case(["predict.py", "--config", str(cfg), "--checkpoint", str(checkpoint), "--input",
                               data.unreadable, "--root", str(data.root), "--output", str(marker)],
                              status=EXIT_USER_ERROR, expect="cannot be read"), str(marker))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data):
    """The checkpoint eval.py and predict.py read."""
    from allspark.config import load_training_config
    from allspark.engine.checkpoint import release_state_dict, save_checkpoint
    from allspark.models import build_model

    tmp = tmp_path_factory.mktemp("model")
    model = build_model(load_training_config(write_config(tmp / "model.yaml", data))["model"])
    save_checkpoint({"model": release_state_dict(model), "epoch": 0}, tmp / "model.pth")
    return tmp / "model.pth"


@pytest.fixture
def failures(tmp_path, data, checkpoint):
    """{name: (Case, marker)}, in a folder of the test's own."""
    return cases(tmp_path, data, checkpoint)


# In one process every case runs in this one; as processes: a failure whose exception reaches the interpreter's
# exit through a loader worker (the reported hang), Ctrl-C and SLURM's SIGTERM sent to the whole process group
# (the loader workers get them too), and every case under torchrun.
NAMES = ["data_value", "data_size", "data_unreadable", "non_finite_loss", "eval_error", "write_error", "interrupt",
         "locked", "time_limit", "signal", "crash", "eval_py", "predict_py"]
PROCESSES = ["data_value", "interrupt", "signal"]
TORCHRUN = ["torchrun_data_value", "torchrun_non_finite_loss", "torchrun_eval_error", "torchrun_write_error",
            "torchrun_interrupt", "torchrun_locked", "torchrun_time_limit", "torchrun_eval_py"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, data, checkpoint):
    """{name: (Case, marker, Outcome)} of the cases run as processes, a few at a time."""
    every = cases(tmp_path_factory.mktemp("processes"), data, checkpoint)
    todo = {name: every[name] for name in PROCESSES + TORCHRUN}
    with ThreadPoolExecutor(AT_ONCE) as pool:
        futures = {name: pool.submit(execute, case, marker) for name, (case, marker) in todo.items()}
        done = {name: (*todo[name], f.result()) for name, f in futures.items()}
    for name, (_, _, out) in sorted(done.items(), key=lambda kv: kv[1][2].seconds):
        print(f"{name}: status {out.status} after {out.seconds:.1f} s")
    return done


@pytest.mark.parametrize("name", PROCESSES + TORCHRUN)
def test_a_failing_run_ends_with_its_status_and_leaves_no_process(outcomes, name):
    case, _, out = outcomes[name]
    assert not out.hung, f"{name} still ran after {HANG_S} s: {out.log[-3000:]}"
    assert out.leftover == [], f"{name} left processes behind: {out.leftover}"
    assert out.status == case.status, f"{name}: status {out.status}, expected {case.status}: {out.log[-3000:]}"
    assert case.expect in out.log, f"{name}: {case.expect!r} not in {out.log[-3000:]}"
    if case.user_error and not name.startswith("torchrun_"):
        assert "Traceback" not in out.log, out.log[-3000:]


def inject_on_the_third_step(monkeypatch, what):
    """The trainer's third step raises ``what`` ('crash': a RuntimeError, 'interrupt': KeyboardInterrupt, as
    Ctrl-C), or sends this process SIGTERM ('signal') and goes on."""
    from allspark.engine.trainer import Trainer

    real, calls = Trainer.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            if what == "crash":
                raise RuntimeError("injected crash in the training step")
            if what == "interrupt":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", step)


@pytest.mark.parametrize("name", NAMES)
def test_in_one_process_every_failure_stops_its_loader_workers(failures, name, monkeypatch):
    """The entry point run in this process (as its command runs it, but for the interpreter's exit): its status
    and error line, and no loader worker left alive once it has returned, which a process would wait for at
    exit (they ignore the SIGTERM Python's exit handler sends them)."""
    import multiprocessing

    case, _ = failures[name]
    argv = case.argv
    if name in ("crash", "interrupt", "signal"):
        inject_on_the_third_step(monkeypatch, name)
    holder = None
    if case.holder:
        case.holder.mkdir(parents=True, exist_ok=True)
        holder = RunLock(case.holder).acquire()
    try:
        if name == "crash":
            with pytest.raises(RuntimeError, match="injected crash"):
                call(Path(argv[0]).stem, argv[1:])
            out = None
        else:
            out = call(Path(argv[0]).stem, argv[1:])
    finally:
        if holder:
            holder.release()
    alive = [p for p in multiprocessing.active_children() if p.daemon]
    assert alive == [], f"{name}: loader workers outlived the run: {alive}"
    if out is not None:
        assert out.status == case.status, f"{name}: status {out.status}, expected {case.status}: {out.log[-3000:]}"
        assert case.expect in out.log and "Traceback" not in out.log, out.log[-3000:]
    if name in ("signal", "time_limit"):  # the checkpoint came before the workers went
        ckpt = torch.load(Path(failures[name][1]) / "latest.pth", weights_only=True)
        assert ckpt["interrupted"]["epoch"] == 0 and ckpt["interrupted"]["iteration"] >= 1, name


def test_a_stopped_process_checkpointed_before_its_workers_went(outcomes):
    for name in ("signal", "torchrun_time_limit"):
        _, save, _ = outcomes[name]
        ckpt = torch.load(Path(save) / "latest.pth", weights_only=True)
        assert ckpt["interrupted"]["epoch"] == 0 and ckpt["interrupted"]["iteration"] >= 1, name


class _Raises(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 3:
            from allspark.data import DataError
            raise DataError(f"sample {index} is broken:\nsecond line")
        return torch.tensor(index)


@pytest.mark.parametrize("persistent", [True, False])
def test_shutdown_stops_every_worker_at_once_and_the_error_reads_as_one_line(persistent):
    import multiprocessing

    from allspark.data import DataError
    from allspark.engine.entry import error_message
    from allspark.engine.loaders import StoppableLoader, ignore_stop_signals, shutdown_loaders

    loader = StoppableLoader(_Raises(), batch_size=1, num_workers=2, persistent_workers=persistent,
                             worker_init_fn=ignore_stop_signals)
    with pytest.raises(DataError) as err:
        for _ in loader:
            pass
    assert error_message(err.value) == "sample 3 is broken:\nsecond line (in DataLoader worker process 1)"
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    assert len(workers) == 2, "the iterator is alive in the traceback: so are its workers"
    shutdown_loaders([loader])  # (torch's shutdown sends a SIGTERM after its queues fail: ignored here)
    assert [p for p in multiprocessing.active_children() if p.daemon] == [], "stopped through their queues"
