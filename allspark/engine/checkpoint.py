"""Checkpoints in the release's format, written atomically."""
import os
import tempfile
from pathlib import Path

import torch

from ..models import load_checkpoint

__all__ = ["save_checkpoint", "release_state_dict", "resume"]


def release_state_dict(model):
    """The model's state dict with DDP's ``module.`` prefix, as the release's checkpoints carry it."""
    model = getattr(model, "module", model)
    return {f"module.{k}": v for k, v in model.state_dict().items()}


def save_checkpoint(obj, path):
    """torch.save to a temporary file in the same folder, then rename: a crash leaves the old file whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resume(save_path, model, optimizer, extra_modules=None):
    """Load ``latest.pth`` from ``save_path`` if it is there (the release's behaviour): model,
    optimizer (momentum / Adam buffers and lr; moved to the parameters' device), the method's extra
    modules (``{entry: module}``, e.g. ``model_ema``) and progress. Returns the checkpoint dict, or None
    for a fresh run."""
    path = Path(save_path) / "latest.pth"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(getattr(model, "module", model), path)
    for entry, module in (extra_modules or {}).items():
        load_checkpoint(module, path, entry=entry, ckpt=ckpt)  # the file is read once
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt
