"""What a run needs to survive a cluster: one run per save path (a lock), no orphaned workers, a stop on
SLURM's signals or a wall-time budget, and the run's provenance in its logs and checkpoints."""
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from ..config import PROJECT_ROOT, ConfigError
from ..files import WriteError

__all__ = ["EXIT_PREEMPTED", "EXIT_ORPHANED", "RunLock", "RunLockedError", "lock_held", "watch_parent", "StopRequest",
           "parse_duration", "provenance"]

logger = logging.getLogger("allspark")

EXIT_PREEMPTED = 3  # stopped on a signal or the time budget, a checkpoint written: run the same command again
EXIT_ORPHANED = 4  # a worker whose launcher died stopped without writing anything


class RunLockedError(ConfigError):
    """Another live run holds the save path."""


class RunLock:
    """An exclusive ``fcntl`` lock on ``<save path>/.lock``, held for the run's life by the process that
    takes it. The kernel drops it when that process dies, however it dies, so a stale file never blocks;
    the file names the holder (host, pid, start time) for the message a second run gets."""

    def __init__(self, save_path):
        self.path = Path(save_path) / ".lock"
        self.file = None

    def acquire(self):
        try:
            f = open(self.path, "a+")
        except OSError as exc:
            raise WriteError(f"cannot write the lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # a file system without locks (some NFS set-ups): run, but say that nothing guards the folder
                logger.warning(f"cannot lock {self.path} ({exc.strerror or exc}): two runs on this save path would "
                               "not be stopped")
                f.close()
                return self
            f.seek(0)
            holder = f.read().strip() or "unknown holder"
            f.close()
            raise RunLockedError(f"another run is using {self.path.parent} ({holder}): wait for it to end or give "
                                 "another --save-path") from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self.file = f
        return self

    def release(self):
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def lock_held(save_path) -> bool:
    """Whether a live process holds ``<save path>/.lock`` (a run in progress); False where there is no lock file
    or the file system has no locks."""
    path = Path(save_path) / ".lock"
    if not path.is_file():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def watch_parent(interval=0.5):
    """Stop this process (exit EXIT_ORPHANED, nothing written) when its parent dies: torchrun starts every
    worker in a session of its own, so a killed launcher would otherwise leave them training. A daemon
    thread compares the parent pid with the one at start-up."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                try:  # the launcher's end of stderr may be closed with it: the exit must not depend on the write
                    sys.stderr.write(f"[allspark] the launcher (pid {parent}) is gone: worker {os.getpid()} stops\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="allspark-parent-watch", daemon=True).start()


class StopRequest:
    """Whether the run should stop and checkpoint now: on SIGTERM / SIGUSR1 (SLURM's preemption and its
    ``--signal``; SIGINT keeps its KeyboardInterrupt), or when the wall-time budget (seconds from the
    start) leaves less than a margin: 2 x the longest step or evaluation seen, at least ``min_margin``."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, time_limit=None, min_margin=60.0):
        self.signal = None
        self.start = time.monotonic()
        self.time_limit = time_limit
        self.min_margin = min_margin
        self.longest = 0.0
        self._previous = {}

    def install(self):
        """Handle the stop signals from now on (the handlers they had are kept for :meth:`uninstall`)."""
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        """Give the stop signals back the handlers they had before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def took(self, seconds):
        """Record how long a step or an evaluation took (the margin follows the longest)."""
        self.longest = max(self.longest, seconds)

    def reason(self):
        """Why the run should stop now ('SIGUSR1', 'time limit'), or None."""
        if self.signal:
            return self.signal
        if self.time_limit is not None:
            left = self.time_limit - (time.monotonic() - self.start)
            if left < max(self.min_margin, 2 * self.longest):
                return "time limit"
        return None


def parse_duration(text):
    """'3600', '90m', '12h', '1-12:00:00', '12:00:00' or '45:00' -> seconds."""
    text = str(text).strip()
    try:
        if text[-1:] in ("s", "m", "h") and text[:-1].replace(".", "", 1).isdigit():
            return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]
        days = 0
        if "-" in text:
            d, text = text.split("-", 1)
            days = int(d)
        parts = [float(p) for p in text.split(":")]
        if len(parts) > 3:
            raise ValueError
        seconds = 0.0
        for p in parts:  # [[H:]M:]S
            seconds = seconds * 60 + p
        return days * 86400 + seconds
    except (ValueError, IndexError):
        raise ConfigError(f"--time-limit must be seconds or a duration like 90m, 12h, 1-12:00:00, got {text!r}") from None


def _git(*args):
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(cfg, world_size, argv=None):
    """What a checkpoint was made with: the resolved config, the command line, the git commit (and whether
    the tree had uncommitted changes), torch / CUDA / cuDNN versions, the world size, host and time."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "config": cfg,
        "command": " ".join([sys.executable, *(sys.argv if argv is None else argv)]),
        "git_commit": commit or "unknown (not a git checkout)",
        "git_dirty": bool(status) if status is not None else None,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda or "none",
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
        "world_size": world_size,
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
