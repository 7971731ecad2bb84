"""Distributed set-up in one place: torchrun's variables, SLURM's, or a single process.

NCCL on CUDA, gloo on CPU. Every other module asks ``DistEnv`` instead of reading the environment.
"""
import os
import subprocess
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import compat

__all__ = ["DistEnv", "resolve_env", "setup_distributed", "cleanup", "all_reduce_sum", "any_rank", "gather_objects", "broadcast_buffers",
           "DEFAULT_PORT"]

DEFAULT_PORT = 29500


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # torchrun | slurm | none
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    device: torch.device = torch.device("cpu")
    backend: str = "gloo"

    @property
    def is_main(self):
        return self.rank == 0


def _slurm_master_addr(nodelist):
    """First host of a SLURM node list, as ``scontrol show hostnames`` expands it."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"SLURM launch: cannot expand SLURM_NODELIST={nodelist!r} with scontrol: {exc}") from None
    hosts = out.stdout.split()
    if not hosts:
        raise RuntimeError(f"SLURM launch: 'scontrol show hostnames {nodelist}' printed no host")
    return hosts[0]


def resolve_env(environ=None, port=None):
    """Rank, world size, local rank and rendezvous address from the launcher's variables.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; srun sets SLURM_PROCID /
    SLURM_NTASKS / SLURM_LOCALID / SLURM_NODELIST (the master is the first node, the port ``--port``).
    Neither: one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun",
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", port or DEFAULT_PORT)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise RuntimeError("SLURM launch: SLURM_PROCID is set but SLURM_NODELIST is not")
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm",
                       _slurm_master_addr(nodelist), int(port or env.get("MASTER_PORT", DEFAULT_PORT)))
    return DistEnv()


def setup_distributed(port=None, environ=None):
    """Resolve the launch, pick the device (cuda:LOCAL_RANK when CUDA is available, else CPU) and, for
    more than one process, initialise the process group (NCCL on CUDA, gloo on CPU)."""
    info = resolve_env(environ, port)
    if torch.cuda.is_available():
        info.device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(info.device)
        info.backend = "nccl"
    if info.world_size > 1:
        os.environ.update(MASTER_ADDR=info.master_addr, MASTER_PORT=str(info.master_port),
                          RANK=str(info.rank), WORLD_SIZE=str(info.world_size), LOCAL_RANK=str(info.local_rank))
        dist.init_process_group(info.backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return info


# long enough for gloo's workers to take the GIL and drop a finished collective's tensors (microseconds of work)
GLOO_EXIT_PAUSE_S = 0.2


def cleanup():
    """Destroy the process group (after the last collective of the run). With gloo on a torch whose group
    destructor holds the GIL (``compat.GLOO_DESTRUCTOR_HOLDS_GIL``), pause first: ``time.sleep`` releases the
    GIL, so the workers finish with the last collectives' tensors before the destructor, which runs when the
    DDP wrapper goes, joins them."""
    if dist.is_available() and dist.is_initialized():
        if compat.GLOO_DESTRUCTOR_HOLDS_GIL and dist.get_backend() == "gloo":
            time.sleep(GLOO_EXIT_PAUSE_S)
        dist.destroy_process_group()


def all_reduce_sum(tensor):
    """Sum ``tensor`` over all processes in place (no-op for one process); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag, device):
    """True on every process when ``flag`` is true on any (one all-reduce; the flag itself for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every process (``obj`` picklable; tensors on the CPU)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module, src=0):
    """Give every process rank ``src``'s buffers (BatchNorm statistics, S-Mem), as DDP does before a forward."""
    if dist.is_available() and dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src)
