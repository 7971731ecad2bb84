"""Every way a run fails ends it: the process exits within a bound only a hang exceeds, with its documented
status and error line, and leaves no process behind (loader workers on and persistent). train.py in one
process and under torchrun with two, eval.py and predict.py.

The cases run a few at a time (each is mostly start-up), once per module; each test checks one case."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.data.toy import make_toy_dataset
from allspark.engine.cluster import EXIT_PREEMPTED, RunLock
from allspark.engine.entry import EXIT_INTERRUPTED, EXIT_USER_ERROR
from conftest import ROOT
from test_cluster import processes_with
from test_training import clean_env, write_config

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


@dataclass
class Outcome:
    status: int
    log: str
    seconds: float
    hung: bool
    leftover: list = field(default_factory=list)


_ports = iter(range(21000 + os.getpid() % 4000, 30000))


def unused_port():
    """A port below the kernel's ephemeral range (which gloo's and other cases' connections draw from while
    the cases run at once), free now."""
    for port in _ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 30000")


def torchrun(*args):
    return ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={unused_port()}", *args]


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
    proc = subprocess.Popen([sys.executable, *case.argv], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
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
    root = tmp_path_factory.mktemp("data")
    lists = make_toy_dataset(root, seed=3, num_train=44, num_val=4, num_labeled=4, min_size=64, max_size=72)
    first = lists["labeled"].read_text().splitlines()
    image, mask = first[0].split()
    broken = {
        "value": f"{image} {_broken_copy(root, mask, 'value7', _value_7)}",
        "size": f"{image} {_broken_copy(root, mask, 'bigger', _bigger)}",
        "unreadable": f"{_broken_copy(root, image, 'garbage', _garbage)} {mask}",
    }
    out = SimpleNamespace(root=root, **{k: str(v) for k, v in lists.items()})
    for kind, line in broken.items():  # the broken sample on every line: whichever rank draws first meets it
        (root / f"{kind}.txt").write_text("\n".join([line] * len(first)) + "\n")
        setattr(out, kind, str(root / f"{kind}.txt"))
    val = lists["val"].read_text().splitlines()
    (root / "bad_val.txt").write_text("\n".join(val[:2] + [broken["value"]] + val[3:]) + "\n")
    out.bad_val = str(root / "bad_val.txt")
    (root / "short.txt").write_text("\n".join(lists["unlabeled"].read_text().splitlines()[:4]) + "\n")
    out.short = str(root / "short.txt")  # epochs of 2 steps (1 with two processes)
    return out


CRASH = ("import runpy, sys\n"
         "import allspark.engine.trainer as trainer\n"
         "real, calls = trainer.train_step, []\n"
         "def train_step(*args, **kwargs):\n"
         "    calls.append(1)\n"
         "    if len(calls) == 3:\n"
         "        raise RuntimeError('injected crash in the training step')\n"
         "    return real(*args, **kwargs)\n"
         "trainer.train_step = train_step\n"
         "sys.argv = {argv!r}\n"
         "runpy.run_path('train.py', run_name='__main__')\n")


def cases(tmp, data):
    """{name: (Case, marker)}: the marker, a path of the case's own, is in the command line of every
    process the case starts."""
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
              unlabeled=data.short,
              status=failed or EXIT_USER_ERROR, expect="error: mask ")
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
    marker = tmp / "crash"
    argv = ["train.py", "--config", str(cfg), "--labeled-id-path", data.labeled, "--unlabeled-id-path",
            data.unlabeled, "--save-path", str(marker)]
    out["crash"] = (Case(["-c", CRASH.format(argv=argv)], status=1, expect="RuntimeError: injected crash",
                         user_error=False), str(marker))
    checkpoint = str(tmp / "model.pth")
    for prefix, launch, failed in (("", False, None), ("torchrun_", True, 1)):
        marker = tmp / f"{prefix}eval_py"
        out[f"{prefix}eval_py"] = (Case([*(torchrun() if launch else ()), "eval.py", "--config", str(cfg), "--checkpoint", checkpoint,
                                         "--save-vis", str(marker), "--opts", f"val_id_path={data.bad_val}"],
                                        status=failed or EXIT_USER_ERROR, expect="error: mask "), str(marker))
    marker = tmp / "predict_out"
    out["predict_py"] = (Case(["predict.py", "--config", str(cfg), "--checkpoint", checkpoint, "--input",
                               data.unreadable, "--root", str(data.root), "--output", str(marker)],
                              status=EXIT_USER_ERROR, expect="cannot be read"), str(marker))
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, data):
    """{name: (Case, marker, Outcome)}, every case run at once."""
    from allspark.engine.checkpoint import release_state_dict, save_checkpoint
    from allspark.methods import load_training_config
    from allspark.models import build_model

    tmp = tmp_path_factory.mktemp("failures")
    model = build_model(load_training_config(write_config(tmp / "model.yaml", data))["model"])
    save_checkpoint({"model": release_state_dict(model), "epoch": 0}, tmp / "model.pth")  # for eval.py, predict.py
    todo = cases(tmp, data)
    with ThreadPoolExecutor(AT_ONCE) as pool:
        futures = {name: pool.submit(execute, case, marker) for name, (case, marker) in todo.items()}
        done = {name: (*todo[name], f.result()) for name, f in futures.items()}
    for name, (_, _, out) in sorted(done.items(), key=lambda kv: kv[1][2].seconds):
        print(f"{name}: status {out.status} after {out.seconds:.1f} s")
    return done


NAMES = ["data_value", "data_size", "data_unreadable", "non_finite_loss", "eval_error", "write_error", "interrupt",
         "locked", "time_limit", "signal", "crash", "eval_py", "predict_py"]
TORCHRUN = ["torchrun_data_value", "torchrun_non_finite_loss",
            "torchrun_eval_error", "torchrun_write_error", "torchrun_interrupt", "torchrun_locked",
            "torchrun_time_limit", "torchrun_eval_py"]


@pytest.mark.parametrize("name", NAMES + TORCHRUN)
def test_a_failing_run_ends_with_its_status_and_leaves_no_process(outcomes, name):
    case, _, out = outcomes[name]
    assert not out.hung, f"{name} still ran after {HANG_S} s: {out.log[-3000:]}"
    assert out.leftover == [], f"{name} left processes behind: {out.leftover}"
    assert out.status == case.status, f"{name}: status {out.status}, expected {case.status}: {out.log[-3000:]}"
    assert case.expect in out.log, f"{name}: {case.expect!r} not in {out.log[-3000:]}"
    if case.user_error and not name.startswith("torchrun_"):
        assert "Traceback" not in out.log, out.log[-3000:]


def test_a_stopped_run_checkpointed_before_its_workers_went(outcomes):
    for name in ("signal", "time_limit", "torchrun_time_limit"):
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
