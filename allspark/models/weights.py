"""Loading weights: SegFormer's ImageNet MiT encoders and this project's / the release's checkpoints."""
import logging
from pathlib import Path

import torch

from ..config import PROJECT_ROOT

__all__ = ["WeightsError", "load_pretrained_backbone", "load_checkpoint", "read_checkpoint", "PRETRAINED_DIR", "PRETRAINED_FILES"]

logger = logging.getLogger("allspark")

PRETRAINED_DIR = "pretrained_weights"
# pretrained: true -> these files under pretrained_weights/ (the first found): SegFormer's ImageNet MiT
# weights, and the official DINOv2 files (or the UniMatch V2 release's names for them).
PRETRAINED_FILES = {
    **{f"mit_b{i}": (f"mit_b{i}.pth",) for i in range(6)},
    "dinov2_small": ("dinov2_vits14_pretrain.pth", "dinov2_small.pth"),
    "dinov2_base": ("dinov2_vitb14_pretrain.pth", "dinov2_base.pth"),
    "dinov2_large": ("dinov2_vitl14_pretrain.pth", "dinov2_large.pth"),
    "dinov2_giant": ("dinov2_vitg14_pretrain.pth", "dinov2_giant.pth"),
}
_WHERE_FROM = {
    "mit": "SegFormer's ImageNet-1k MiT weights (mit_b0.pth .. mit_b5.pth, linked from the SegFormer repository's "
           "README, NVlabs/SegFormer)",
    "dinov2": "the official DINOv2 weights (dinov2_vits14_pretrain.pth .. dinov2_vitg14_pretrain.pth, linked from "
              "the DINOv2 repository's README, facebookresearch/dinov2)",
}
# Module names of the weights published next to the AllSpark release, which its code never produced.
_PUBLISHED_ALLSPARK_PREFIXES = ("decoder.allspark.embeddings.", "decoder.allspark.encoder.layer.")
_SHOW = 5  # how many key names an error lists


class WeightsError(RuntimeError):
    """A weights file that is missing or does not fit the model; the message names the file."""


def _strip_prefix(state, prefix="module."):
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _read(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; name the file either way
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None


def read_checkpoint(path):
    """The contents of a checkpoint file (``torch.load(..., weights_only=True)`` on the CPU); a missing or
    unreadable file raises WeightsError naming it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    return _read(path)


def _state_dict_of(obj, path, entries):
    """The state dict inside ``obj``: the first of ``entries`` present, else obj itself."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, expected a state dict or a dict with one of {list(entries)}")
    for entry in entries:
        if isinstance(obj.get(entry), dict):
            obj = obj[entry]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError(f"{path} holds no tensors (top-level keys: {list(obj)[:_SHOW]}); expected a state dict "
                           f"or a dict with one of {list(entries)}")
    return state


def _resolve_pretrained(spec, preset):
    if spec is True:
        if preset is None:
            raise WeightsError(f"backbone pretrained: true needs a preset type ({', '.join(PRETRAINED_FILES)}) to "
                               "name the file; give the file's path instead (pretrained: path/to/weights.pth)")
        candidates = [base / PRETRAINED_DIR / name for base in (Path.cwd(), PROJECT_ROOT)
                      for name in PRETRAINED_FILES[preset]]
    elif isinstance(spec, (str, Path)):
        candidates = [Path(spec)]
    else:
        raise WeightsError(f"backbone pretrained must be true, false or a path, got {spec!r}")
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in dict.fromkeys(candidates))
    where = _WHERE_FROM["dinov2" if str(preset).startswith("dinov2") else "mit"]
    raise WeightsError(f"pretrained backbone weights not found; looked at: {looked}. They are {where}; "
                       f"see pretrained_weights/README.md")


def load_pretrained_backbone(backbone, spec, preset=None):
    """Load ImageNet weights into ``backbone``. ``spec`` is True (``pretrained_weights/<preset>.pth``,
    looked up in the working directory, then the project root) or a path. The file may hold a raw
    state dict or ``{'state_dict': ...}`` / ``{'model': ...}``; the classifier ``head.*`` is dropped.
    Raises WeightsError on a missing file, a shape mismatch or no matching key. Returns the path."""
    path = _resolve_pretrained(spec, preset)
    state = _strip_prefix(_state_dict_of(_read(path), path, ("state_dict", "model")))
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = backbone.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise WeightsError(f"no key of {path} matches the backbone: file keys start {list(state)[:_SHOW]}, "
                           f"the backbone's {list(own)[:_SHOW]}")
    wrong = [k for k in matched if state[k].shape != own[k].shape]
    if wrong:
        details = ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:_SHOW])
        raise WeightsError(f"{path} does not fit the backbone: {len(wrong)} shape mismatch(es), e.g. {details}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    backbone.load_state_dict({k: state[k] for k in matched}, strict=False)
    logger.info("pretrained backbone %s: %d loaded, %d missing, %d unexpected", path, len(matched), len(missing),
                len(unexpected))
    if missing or unexpected:
        logger.warning("pretrained backbone %s: missing (left at their initialisation) %s; unexpected (ignored) %s",
                       path, missing[:_SHOW], unexpected[:_SHOW])
    return path


def load_checkpoint(model, path, entry="model", ckpt=None):
    """Load the ``entry`` of a checkpoint (``model``, or ``model_ema`` for UniMatch V2's EMA teacher;
    this project's or the release's, with or without DDP's ``module.`` prefix; a bare state dict is
    accepted too) into ``model``, strictly. ``ckpt``: the file's contents when the caller has read it
    already (``path`` then only names it in errors).

    Returns the whole checkpoint dict (``epoch``, ``optimizer``, ... where present). A file whose keys
    or shapes do not fit raises WeightsError with the counts and the first few names."""
    path = Path(path)
    if ckpt is None:
        if not path.is_file():
            raise WeightsError(f"checkpoint not found: {path}")
        ckpt = _read(path)
    if entry != "model" and not (isinstance(ckpt, dict) and isinstance(ckpt.get(entry), dict)):
        found = list(ckpt)[:_SHOW] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"checkpoint {path} has no {entry!r} entry (it holds {found})")
    state = _strip_prefix(_state_dict_of(ckpt, path, (entry, "state_dict")))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:_SHOW]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:_SHOW]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:_SHOW]) + ")")
        message = f"checkpoint {path} ({entry}) does not fit this model: " + "; ".join(parts)
        for pred in ("decoder.decoder.linear_pred.bias", "head.scratch.output_conv.2.bias"):  # the classifiers
            if pred in wrong:
                message += f". It was trained for {state[pred].shape[0]} classes, the model has {own[pred].shape[0]}"
        if any(k.startswith(_PUBLISHED_ALLSPARK_PREFIXES) for k in unexpected):
            message += (". These are the weights published next to the AllSpark release: they were trained with a "
                        "different internal AllSpark module (decoder.allspark.embeddings.*, "
                        "decoder.allspark.encoder.layer.*) and fit neither the release's code nor this project")
        raise WeightsError(message)
    model.load_state_dict(state)
    return ckpt if isinstance(ckpt, dict) else {"model": state}
