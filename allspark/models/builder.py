"""Build a segmentation model from the ``model:`` section of a config.

    model:
      backbone: {type: mit_b5, kwargs: {pretrained: true}}
      decoder:  {type: allspark, kwargs: {num_heads: 2, num_class: 21, in_planes: [64, 128, 320, 512],
                                          image_size: 513, warmup_epoch: 5, embedding_dim: 768}}

The release's dotted type names (``model.backbone.mit.mit_b5``, ``model.semseg.allspark.SemiDecoder``,
``model.semseg.semidec_base.SemiDecoder``) are accepted as aliases, so its config files build unchanged.
"""
import inspect
from typing import Optional, Union

import torch.nn as nn

from ..config import ConfigError
from . import dinov2, dinov3, mit
from .allspark import AllSparkDecoder
from .dpt import DPT, DPTHead, tokens_to_maps
from .resize import resize_bilinear
from .segformer_head import SegFormerDecoder
from .weights import PRETRAINED_FILES, load_pretrained_backbone

__all__ = ["Segmentor", "build_model", "encoder_patch_size", "BACKBONES", "DECODERS", "ALIASES"]

BACKBONES = {"mit": mit.MixVisionTransformer, **{name: getattr(mit, name) for name in mit.MIT_PRESETS},
             "dinov2": dinov2.DINOv2, **{name: getattr(dinov2, name) for name in dinov2.DINOV2_PRESETS},
             "dinov3": dinov3.DINOv3, **{name: getattr(dinov3, name) for name in dinov3.DINOV3_PRESETS}}
DECODERS = {"allspark": AllSparkDecoder, "segformer": SegFormerDecoder, "dpt": DPTHead}
ALIASES = {
    **{f"model.backbone.mit.{name}": name for name in mit.MIT_PRESETS},
    "model.semseg.allspark.SemiDecoder": "allspark",
    "model.semseg.semidec_base.SemiDecoder": "segformer",
}
# Keywords every backbone accepts besides its constructor's: where to take pretrained weights from.
_BACKBONE_EXTRA = ("pretrained",)
# Decoder constructor arguments the builder takes from the encoder, not from the config.
_FROM_BACKBONE = ("in_channels", "patch_size")


class Segmentor(nn.Module):
    """Encoder + decoder. ``forward(x)`` with x (N, 3, H, W) returns logits (N, num_class, H, W),
    upsampled bilinearly (align_corners False) to the input size.

    AllSpark training: ``forward(cat([labeled, unlabeled]), pseudo_logits=p, use_memory=flag)`` in
    train mode with equal halves, p the eval-mode logits of the unlabeled half.
    """

    def __init__(self, backbone, decoder):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    @property
    def input_multiple(self):
        """Evaluation resizes images to multiples of a patch encoder's patch size (None: any size)."""
        return getattr(self.backbone, "patch_size", None)

    @property
    def min_input_size(self):
        """The shortest image side the model takes (1 where evaluation resizes to the patch grid)."""
        return 1 if self.input_multiple else getattr(self.backbone, "min_input_size", 1)

    def forward(self, x, pseudo_logits=None, use_memory=False):
        feats = self.backbone(x)
        if self.input_multiple:  # a patch encoder's token maps -> (B, D, h, w) maps on its grid
            feats = tokens_to_maps(feats, x.shape[-2] // self.input_multiple, x.shape[-1] // self.input_multiple)
        logits = self.decoder(feats, pseudo_logits=pseudo_logits, use_memory=use_memory)
        return resize_bilinear(logits, x.shape[-2:])


def _signature(factory, exclude=()):
    # The presets forward their keywords to the class they name in ``target``.
    target = getattr(factory, "target", factory)
    params = [p for p in inspect.signature(target).parameters.values() if p.name not in exclude]
    accepted = [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    supplied = getattr(factory, "preset", {})
    required = [p.name for p in params
                if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in supplied]
    return accepted, required


def _parse_section(model_cfg, part, registry, extra=(), exclude=()):
    """Validate ``model.<part>`` and return (type name, kwargs) with aliases resolved."""
    where = f"model.{part}"
    section = model_cfg.get(part)
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping with 'type' and 'kwargs', got {section!r}")
    unknown = sorted(set(section) - {"type", "kwargs"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected 'type' and 'kwargs'")
    type_name = section.get("type")
    name = ALIASES.get(type_name, type_name)
    if name not in registry:
        aliases = sorted(k for k, v in ALIASES.items() if v in registry)
        raise ConfigError(f"{where}.type: unknown type {type_name!r}; valid types: {sorted(registry)} "
                          f"(the release's names {aliases} are accepted too)")
    kwargs = section.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}.kwargs must be a mapping, got {kwargs!r}")
    accepted, required = _signature(registry[name], exclude)
    accepted = accepted + list(extra)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"{where}.kwargs: unknown keyword(s) {unknown} for type {name!r}; valid keywords: {accepted}")
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ConfigError(f"{where}.kwargs: missing keyword(s) {missing} for type {name!r}")
    return name, dict(kwargs)


def encoder_patch_size(model_cfg: dict) -> Optional[int]:
    """The patch size of the encoder a ``model:`` section builds (its inputs' sides must be multiples of it), or
    None for an encoder that takes any size (MiT) or a section this function cannot read (build_model says why)."""
    section = model_cfg.get("backbone") if isinstance(model_cfg, dict) else None
    if not isinstance(section, dict):
        return None
    factory = BACKBONES.get(ALIASES.get(section.get("type"), section.get("type")))
    target = getattr(factory, "target", factory)
    if not hasattr(target, "patch_size_for"):
        return None
    return target.patch_size_for({**getattr(factory, "preset", {}), **(section.get("kwargs") or {})})


def build_model(model_cfg: dict) -> Union["Segmentor", DPT]:
    """Build a :class:`Segmentor` from a config's ``model:`` section (a dict with ``backbone`` and
    ``decoder``, each ``{type, kwargs}``). Loads pretrained backbone weights when
    ``backbone.kwargs.pretrained`` is true (``pretrained_weights/<preset>.pth``) or a path.
    Raises ConfigError naming the offending key."""
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"the model section must be a mapping with 'backbone' and 'decoder', got {model_cfg!r}")
    unknown = sorted(set(model_cfg) - {"backbone", "decoder"})
    if unknown:
        raise ConfigError(f"model: unknown key(s) {unknown}; expected 'backbone' and 'decoder'")
    bb_name, bb_kwargs = _parse_section(model_cfg, "backbone", BACKBONES, _BACKBONE_EXTRA)
    dec_name, dec_kwargs = _parse_section(model_cfg, "decoder", DECODERS, exclude=_FROM_BACKBONE)
    pretrained = bb_kwargs.pop("pretrained", False)
    try:
        backbone = BACKBONES[bb_name](**bb_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.backbone ({bb_name}): {exc}") from None
    if dec_name == "dpt":
        if not hasattr(backbone, "patch_size"):
            raise ConfigError(f"model.decoder.type dpt needs a patch encoder (dinov2*, dinov3*), got {bb_name!r}")
        try:
            model = DPT(backbone, DPTHead(in_channels=backbone.embed_dim, **dec_kwargs))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.decoder (dpt): {exc}") from None
    else:
        in_planes = list(dec_kwargs["in_planes"])
        if in_planes != getattr(backbone, "embed_dims", None):
            raise ConfigError(f"model.decoder.kwargs.in_planes {in_planes} differs from the backbone's "
                              f"embed_dims {getattr(backbone, 'embed_dims', None)} ({bb_name})")
        extra = {"patch_size": backbone.patch_size} if dec_name == "allspark" and hasattr(backbone, "patch_size") else {}
        try:
            decoder = DECODERS[dec_name](**dec_kwargs, **extra)
        except ValueError as exc:
            raise ConfigError(f"model.decoder ({dec_name}): {exc}") from None
        model = Segmentor(backbone, decoder)
    if pretrained:
        load_pretrained_backbone(backbone, pretrained, preset=bb_name if bb_name in PRETRAINED_FILES else None)
    return model
