"""Checkpoints in the release's format: written atomically, resumed, checked for non-finite values, and
read back as a trained model with what it was trained with."""
import copy
import logging
from pathlib import Path
from typing import Tuple

import torch

from ..files import atomic_path
from ..models import build_model, load_checkpoint, read_checkpoint

__all__ = ["save_checkpoint", "release_state_dict", "resume_latest", "first_non_finite", "checkpoint_tensors",
           "load_trained_model", "model_differences", "report_provenance"]

logger = logging.getLogger("allspark")


def release_state_dict(model):
    """The model's state dict with DDP's ``module.`` prefix, as the release's checkpoints carry it."""
    model = getattr(model, "module", model)
    return {f"module.{k}": v for k, v in model.state_dict().items()}


def save_checkpoint(obj, path):
    """torch.save to a temporary file in the same folder, then rename (:func:`allspark.files.atomic_path`):
    a crash or a full disk leaves the old file whole; a failed write raises WriteError naming the file."""
    with atomic_path(path, "checkpoint") as tmp:
        torch.save(obj, tmp)


def resume_latest(save_path, model, optimizer, extra_modules=None):
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


def checkpoint_tensors(model, optimizer, extra_modules=None):
    """(name, tensor) for everything a checkpoint holds: the model's parameters and buffers (S-Mem
    included), the extra modules' (``model_ema``), and the optimizer's state, named by parameter."""
    model = getattr(model, "module", model)
    yield from ((f"model {k}", v) for k, v in model.state_dict().items())
    for entry, module in (extra_modules or {}).items():
        yield from ((f"{entry} {k}", v) for k, v in module.state_dict().items())
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        for key, value in optimizer.state.get(p, {}).items():
            yield f"optimizer {key} of {names.get(id(p), '?')}", value


def first_non_finite(named):
    """The name of the first floating tensor of ``named`` ((name, tensor) pairs) that holds a NaN or an
    infinity, else None. One host synchronisation per device."""
    items = [(n, t) for n, t in named if torch.is_tensor(t) and t.is_floating_point()]
    by_device = {}
    for i, (_, t) in enumerate(items):
        by_device.setdefault(t.device, []).append(i)
    bad = []
    for indices in by_device.values():
        flags = torch.stack([torch.isfinite(items[i][1]).all() for i in indices]).tolist()
        bad += [i for i, ok in zip(indices, flags) if not ok]
    return items[min(bad)][0] if bad else None


def load_trained_model(cfg: dict, checkpoint, device: torch.device, entry: str = "model",
                       config_path: str = "the config") -> Tuple[torch.nn.Module, dict]:
    """The config's model on ``device`` with the checkpoint's ``entry`` loaded (no pretrained encoder
    weights are read: the checkpoint holds every weight); returns (model, the checkpoint dict). What the
    checkpoint says it was trained with is logged first, with a warning where ``cfg`` changes the model."""
    ckpt = read_checkpoint(checkpoint)
    report_provenance(ckpt, cfg, config_path)
    model_cfg = copy.deepcopy(cfg["model"])
    model_cfg["backbone"].setdefault("kwargs", {})["pretrained"] = False
    model = build_model(model_cfg).to(device)
    return model, load_checkpoint(model, checkpoint, entry=entry, ckpt=ckpt)


def _leaves(value, prefix):
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _leaves(sub, f"{prefix}.{key}")
    else:
        yield prefix, value


def model_differences(trained, now):
    """["key: now here, then in the checkpoint's config"] for the keys that change the model (``nclass`` and
    the ``model`` section, its ``pretrained`` flags aside: the checkpoint holds every weight)."""
    old = dict(_leaves({"nclass": trained.get("nclass"), "model": trained.get("model") or {}}, ""))
    new = dict(_leaves({"nclass": now.get("nclass"), "model": now.get("model") or {}}, ""))
    keys = sorted(k for k in set(old) | set(new) if not k.endswith(".pretrained") and old.get(k) != new.get(k))
    return [f"{k[1:]}: {new.get(k)} here, {old.get(k)} in the checkpoint's config" for k in keys]


def report_provenance(ckpt, cfg, config_path):
    """Log what the checkpoint says it was trained with; warn where ``cfg`` changes the model."""
    prov = ckpt.get("provenance") if isinstance(ckpt, dict) else None
    if not prov:
        logger.info("trained with: unknown (a checkpoint without provenance, e.g. the release's)")
        return
    logger.info(f"trained with: commit {prov.get('git_commit')}{' (uncommitted changes)' if prov.get('git_dirty') else ''}, "
                f"torch {prov.get('torch')}, CUDA {prov.get('cuda')}, world size {prov.get('world_size')}, "
                f"{prov.get('time')} on {prov.get('host')}; command: {prov.get('command')}")
    diffs = model_differences(prov.get("config") or {}, cfg)
    if diffs:
        logger.warning(f"{config_path} differs from the config it was trained with in keys that change the model: "
                       + "; ".join(diffs))
