"""Loading weights: the encoders' published files (SegFormer's ImageNet MiT, the official DINOv2 and DINOv3 files,
or the Hugging Face hub's layout of any of them) and this project's / the releases' checkpoints."""
import json
import logging
from pathlib import Path

import torch

from ..config import PROJECT_ROOT
from .hub import from_hub, is_hub_layout

__all__ = ["WeightsError", "load_pretrained_backbone", "load_checkpoint", "read_checkpoint", "read_weights",
           "PRETRAINED_DIR", "PRETRAINED_FILES"]

logger = logging.getLogger("allspark")

PRETRAINED_DIR = "pretrained_weights"
# pretrained: true -> these files under pretrained_weights/ (the first found): SegFormer's ImageNet MiT
# weights, the official DINOv2 files (or the UniMatch V2 release's names for them) and the official DINOv3 files
# (the LVD-1689M, web-image, variant first, then SAT-493M, satellite, where one exists); then the Hugging Face
# hub's folder of the same weights, named as its repository (huggingface-cli download facebook/dinov2-small
# --local-dir pretrained_weights/dinov2-small).
_DINOV3_FILES = {
    "dinov3_small": ("vits16", "lvd1689m-08c60483"),
    "dinov3_small_plus": ("vits16plus", "lvd1689m-4057cbaa"),
    "dinov3_base": ("vitb16", "lvd1689m-73cec8be"),
    "dinov3_large": ("vitl16", "lvd1689m-8aa4cbdd", "sat493m-eadcf0ff"),
    "dinov3_huge_plus": ("vith16plus", "lvd1689m-7c1da9a5"),
    "dinov3_7b": ("vit7b16", "lvd1689m-a955f4ea", "sat493m-a6675841"),
}
PRETRAINED_FILES = {
    **{f"mit_b{i}": (f"mit_b{i}.pth", f"mit-b{i}") for i in range(6)},
    **{f"dinov2_{size}": (f"dinov2_vit{size[0]}14_pretrain.pth", f"dinov2_{size}.pth", f"dinov2-{size}")
       for size in ("small", "base", "large", "giant")},
    **{preset: tuple(f"dinov3_{arch}_pretrain_{v}.pth" for v in variants) +
       tuple(f"dinov3-{arch}-pretrain-{v.split('-')[0]}" for v in variants)
       for preset, (arch, *variants) in _DINOV3_FILES.items()},
}
# Keys of published files that belong to pretraining only (DINOv3 7B's and ViT-L SAT-493M's second class-token
# norm, for local crops): dropped with a report line.
PRETRAINING_ONLY = ("local_cls_norm.",)
# A published buffer may be stored rounded to bf16 (DINOv3's RoPE periods): it must match the model's to that
# precision, and the file's values are used, as the release's load_state_dict uses them.
BUFFER_RTOL = 2 ** -7
_WHERE_FROM = {
    "mit": "SegFormer's ImageNet-1k MiT weights (mit_b0.pth .. mit_b5.pth, linked from the SegFormer repository's "
           "README, NVlabs/SegFormer)",
    "dinov2": "the official DINOv2 weights (dinov2_vits14_pretrain.pth .. dinov2_vitg14_pretrain.pth, linked from "
              "the DINOv2 repository's README, facebookresearch/dinov2)",
    "dinov3": "the official DINOv3 weights (dinov3_vits16_pretrain_lvd1689m-08c60483.pth and the others, linked from the "
              "DINOv3 repository's README, facebookresearch/dinov3, once the DINOv3 License is accepted; or a "
              "facebook/dinov3-* folder of the Hugging Face hub, gated alike)",
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


def read_weights(path):
    """The tensors of a weights file: a ``.pth`` file (a raw state dict, or ``{'state_dict': ...}`` /
    ``{'model': ...}``), a ``.safetensors`` file, or a Hugging Face hub folder (``model.safetensors``, its
    sharded form with ``model.safetensors.index.json``, or ``pytorch_model.bin``). Raises WeightsError naming
    the file."""
    path = Path(path)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as exc:
                raise WeightsError(f"{index} is not a safetensors index: {exc}") from None
            state = {}
            for shard in shards:
                state.update(read_weights(path / shard))
            return state
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_weights(path / name)
        raise WeightsError(f"{path} holds no model.safetensors (or its index, or pytorch_model.bin): not a Hugging "
                           f"Face hub folder of an encoder")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"reading {path} needs the safetensors package: pip install safetensors") from None
        try:
            return load_file(str(path))
        except Exception as exc:  # the library's errors come in several types; name the file either way
            raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    return _state_dict_of(_read(path), path, ("state_dict", "model"))


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
        if path.is_file() or path.is_dir():
            return path
    looked = ", ".join(str(p) for p in dict.fromkeys(candidates))
    where = _WHERE_FROM[next((f for f in ("dinov3", "dinov2") if str(preset).startswith(f)), "mit")]
    raise WeightsError(f"pretrained backbone weights not found; looked at: {looked}. They are {where}; "
                       f"see pretrained_weights/README.md")


def _check_buffers(path, state, backbone):
    """A published buffer (DINOv3's ``rope_embed.periods`` and ``bias_mask``) must be the model's: to bf16
    rounding for floating values, exactly otherwise; a file whose buffer differs was made for another model."""
    for name, own in backbone.named_buffers():
        if name not in state or state[name].shape != own.shape:
            continue
        theirs = state[name].to(own.dtype)
        same = (torch.allclose(theirs, own, rtol=BUFFER_RTOL, atol=0) if own.is_floating_point() and "mask" not in name
                else torch.equal(theirs, own))
        if not same:
            raise WeightsError(f"{path}: the buffer {name} differs from the model's ({state[name].flatten()[:4].tolist()} "
                               f"vs {own.flatten()[:4].tolist()}): the file was made for another configuration")


def load_pretrained_backbone(backbone, spec, preset=None):
    """Load an encoder's published weights into ``backbone``. ``spec`` is True (the preset's file under
    ``pretrained_weights/``, looked up in the working directory, then the project root: :data:`PRETRAINED_FILES`)
    or a path: a ``.pth`` file (a raw state dict or ``{'state_dict': ...}`` / ``{'model': ...}``), a
    ``.safetensors`` file or a Hugging Face hub folder, in the release's names or the hub's (``facebook/dinov3-*``,
    ``facebook/dinov2-*``, ``nvidia/mit-b*``: mapped, :mod:`allspark.models.hub`). A classifier ``head.*`` is
    dropped, pretraining-only keys are dropped with a report, published buffers are checked against the
    model's. Raises WeightsError on a missing file, a shape mismatch, a buffer that differs or no matching
    key. Returns the path."""
    path = _resolve_pretrained(spec, preset)
    state = read_weights(path)
    hub = is_hub_layout(state)
    if hub:
        state = from_hub(state, backbone.hub_family)
    state = _strip_prefix(state)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    pretraining = sorted(k for k in state if k.startswith(PRETRAINING_ONLY))
    state = {k: v for k, v in state.items() if k not in pretraining}
    own = backbone.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise WeightsError(f"no key of {path} matches the backbone: file keys start {list(state)[:_SHOW]}, "
                           f"the backbone's {list(own)[:_SHOW]}")
    wrong = [k for k in matched if state[k].shape != own[k].shape]
    if wrong:
        details = ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:_SHOW])
        raise WeightsError(f"{path} does not fit the backbone: {len(wrong)} shape mismatch(es), e.g. {details}")
    _check_buffers(path, state, backbone)
    buffers = dict(backbone.named_buffers())
    missing = [k for k in own if k not in state]
    if hub:  # the hub's models compute these buffers (DINOv3's RoPE periods, bias mask)
        missing = [k for k in missing if k not in buffers]
    unexpected = [k for k in state if k not in own]
    backbone.load_state_dict({k: state[k] for k in matched}, strict=False)
    layout = "the Hugging Face hub's layout" if hub else "the release's names"
    logger.info("pretrained backbone %s (%s): %d loaded, %d missing, %d unexpected", path, layout, len(matched),
                len(missing), len(unexpected))
    if pretraining:
        logger.info("pretrained backbone %s: %d key(s) used in pretraining only, not loaded: %s", path,
                    len(pretraining), pretraining[:_SHOW])
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
