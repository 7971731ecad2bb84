"""The releases' own config files, read as this project's: AllSpark's keys that have no effect here, and
UniMatch V2's ``model: dpt`` / ``backbone: dinov2_<size>``, which become a ``model:`` section."""
import logging

from .schema import ConfigError

__all__ = ["RELEASE_KEYS", "RELEASE_DPT_HEADS", "DPT_HEADS", "drop_release_keys", "release_dpt_section", "from_release_format"]

logger = logging.getLogger("allspark")

# Keys of the releases' own config files that this project reads but that have no effect, with why.
RELEASE_KEYS = {
    "criterion_u": "the unlabeled loss is the method's own (the releases' cross-entropy with ignore 255)",
}

# UniMatch V2's head width per encoder: (features, out_channels), as its release builds them.
RELEASE_DPT_HEADS = {
    "dinov2_small": (64, [48, 96, 192, 384]),
    "dinov2_base": (128, [96, 192, 384, 768]),
    "dinov2_large": (256, [256, 512, 1024, 1024]),
    "dinov2_giant": (384, [1536, 1536, 1536, 1536]),
}

# The DPT head's width for every ViT preset: the release's for DINOv2, and for DINOv3 those of the DINOv2
# encoder of the same width (S and S+: 384 wide as DINOv2-S; B: DINOv2-B; L and H+: DINOv2-L's head; 7B: DINOv2-g's).
DPT_HEADS = {
    **RELEASE_DPT_HEADS,
    "dinov3_small": RELEASE_DPT_HEADS["dinov2_small"],
    "dinov3_small_plus": RELEASE_DPT_HEADS["dinov2_small"],
    "dinov3_base": RELEASE_DPT_HEADS["dinov2_base"],
    "dinov3_large": RELEASE_DPT_HEADS["dinov2_large"],
    "dinov3_huge_plus": RELEASE_DPT_HEADS["dinov2_large"],
    "dinov3_7b": RELEASE_DPT_HEADS["dinov2_giant"],
}


def drop_release_keys(raw: dict, source: str = "config") -> dict:
    """A copy of ``raw`` without the releases' keys that have no effect here (:data:`RELEASE_KEYS`),
    each dropped with a warning that says why."""
    out = dict(raw)
    for key in sorted(set(raw) & set(RELEASE_KEYS)):
        out.pop(key)
        logger.warning(f"{source}: key {key!r} (from the release's configs) has no effect: {RELEASE_KEYS[key]}")
    return out


def release_dpt_section(backbone: str, num_class, source: str = "config") -> dict:
    """The ``model:`` section equal to UniMatch V2's ``model: dpt`` + ``backbone: <name>`` (pretrained encoder)."""
    if backbone not in RELEASE_DPT_HEADS:
        raise ConfigError(f"{source}: backbone must be one of {list(RELEASE_DPT_HEADS)} with model: dpt, got {backbone!r}")
    features, out_channels = RELEASE_DPT_HEADS[backbone]
    return {"backbone": {"type": backbone, "kwargs": {"pretrained": True}},
            "decoder": {"type": "dpt", "kwargs": {"num_class": num_class, "features": features,
                                                  "out_channels": list(out_channels), "use_bn": False}}}


def from_release_format(raw: dict, source: str = "config") -> dict:
    """``raw`` as this project reads it: the releases' no-effect keys dropped (with a warning), UniMatch V2's
    ``model: dpt`` + ``backbone:`` turned into the equivalent ``model:`` section and ``method: unimatch_v2``."""
    raw = drop_release_keys(raw, source)
    if not isinstance(raw.get("model"), str):
        return raw
    out = {k: v for k, v in raw.items() if k != "backbone"}
    if raw["model"] != "dpt" or "backbone" not in raw:
        raise ConfigError(f"{source}: model must be a section with 'backbone' and 'decoder' (or the UniMatch V2 "
                          f"release's 'model: dpt' with 'backbone: dinov2_<size>'), got model: {raw['model']!r}")
    out["model"] = release_dpt_section(raw["backbone"], raw.get("nclass"), source)
    out.setdefault("method", "unimatch_v2")
    return out
