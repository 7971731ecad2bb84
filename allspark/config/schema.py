"""The keys of a training config: their types, defaults and allowed values, and the checks on them."""
from typing import Any, NamedTuple, Optional

import copy

from .constants import AMP_MODES, EVAL_MODES, IGNORE_INDEX, LR_SCALINGS, REDUCE_ZERO_LABEL

__all__ = ["ConfigError", "Key", "SCHEMA", "DATA_KEYS", "check_config", "check_keys", "check_dataset_description"]


class ConfigError(ValueError):
    """A config file or section that cannot be used; the message names the key and what was expected."""


class Key(NamedTuple):
    """One config key: whether it must be given, the types it accepts, its default, the values it allows."""
    required: bool = False
    types: Any = str
    default: Any = None
    allowed: Optional[tuple] = None


_NUMBER = (int, float)
SCHEMA = {
    "method": Key(),  # checked against the registered methods (allspark.config.registry)
    "dataset": Key(required=True),
    "data_root": Key(required=True),
    "val_id_path": Key(),  # default splits/<dataset>/val.txt, where the releases read it
    "nclass": Key(True, int),
    "crop_size": Key(True, int),
    "epochs": Key(True, int),
    "batch_size": Key(True, int),
    "lr": Key(True, _NUMBER),
    "lr_multi": Key(True, _NUMBER),
    "criterion": Key(True, dict),
    "model": Key(True, dict),
    # the dataset's description (a dataset of your own needs no code: docs/datasets.md)
    "classes": Key(types=list),  # class names, nclass of them (logs, per-class IoU)
    "palette": Key(types=list),  # [[r, g, b], ...] per class (predictions, visualisations)
    "ignore_index": Key(types=int, default=IGNORE_INDEX),  # the masks' ignore value, read as 255
    "reduce_zero_label": Key(types=bool),  # 0 -> ignore, k -> k - 1 (default: true for ade20k only)
    "eval_mode": Key(default="original", allowed=EVAL_MODES),
    "eval_scales": Key(types=list, default=[0.75, 1.0, 1.25, 1.5]),
    "eval_flip": Key(types=bool, default=True),
    # sliding window edge windows: cut at the border (the AllSpark release) or moved back inside the image
    # so that every window is whole (the UniMatch V2 release)
    "sliding_window_edges": Key(default="cut", allowed=("cut", "aligned")),
    "lock_backbone": Key(types=bool, default=False),  # a frozen encoder (UniMatch V2's lock_backbone)
    # log the accuracy of the pseudo labels when every mask of the unlabeled list is there (never trained on)
    "pseudo_label_accuracy": Key(types=bool, default=True),
    # data loading (no effect on the numbers: every sample draws its augmentations from its own seed)
    "num_workers": Key(types=int, default=2),
    "pin_memory": Key(types=bool, default=True),
    "persistent_workers": Key(types=bool, default=True),
    "prefetch_factor": Key(types=int, default=2),
    # speed with a documented numeric change, off by default (the release trains in fp32, eagerly)
    "amp": Key(default="none", allowed=AMP_MODES),
    "compile": Key(types=bool, default=False),
    # recompute the encoder blocks' activations in backward instead of keeping them: less memory, same numbers
    "activation_checkpointing": Key(types=bool, default=False),
    # the total batch the recipe's learning rates were tuned for (the release's GPUs x batch_size per GPU, per
    # half: labeled, and as many unlabeled); lr_scaling: linear multiplies lr by (batch_size x processes) / it
    "reference_batch": Key(types=int),
    "lr_scaling": Key(default="none", allowed=LR_SCALINGS),
}

DATA_KEYS = ("dataset", "data_root", "val_id_path", "nclass", "classes", "palette", "ignore_index", "reduce_zero_label")


def check_keys(cfg: dict, schema: dict, source: str) -> dict:
    """The keys of ``schema`` from ``cfg`` with their types and allowed values checked, defaults filled
    (other keys of ``cfg`` are left out)."""
    out = {}
    for name, key in schema.items():
        if name not in cfg:
            if key.required:
                raise ConfigError(f"{source}: missing key {name!r}")
            out[name] = copy.deepcopy(key.default)  # (a list default is the config's own)
            continue
        value = cfg[name]
        if isinstance(value, bool) and key.types is not bool or not isinstance(value, key.types):
            expected = " or ".join(t.__name__ for t in (key.types if isinstance(key.types, tuple) else (key.types,)))
            raise ConfigError(f"{source}: {name} must be {expected}, got {value!r}")
        if key.allowed is not None and value not in key.allowed:
            raise ConfigError(f"{source}: {name} must be one of {list(key.allowed)}, got {value!r}")
        out[name] = value
    return out


def check_config(cfg: dict, source: str = "config", extra: Optional[dict] = None) -> dict:
    """Check keys, types and allowed values against SCHEMA and ``extra`` (a method's own keys, same
    format), fill defaults, and check the training keys against the model section. Returns a new dict;
    raises ConfigError naming the key."""
    schema = {**SCHEMA, **(extra or {})}
    unknown = sorted(set(cfg) - set(schema))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(schema)}")
    out = check_keys(cfg, schema, source)
    if out["reference_batch"] is not None and out["reference_batch"] < 1:
        raise ConfigError(f"{source}: reference_batch must be positive, got {out['reference_batch']}")
    if out["lr_scaling"] != "none" and out["reference_batch"] is None:
        raise ConfigError(f"{source}: lr_scaling: {out['lr_scaling']} needs reference_batch (the total batch the "
                          f"lr was tuned for: the release's GPUs x batch_size)")
    for name in ("crop_size", "epochs", "batch_size", "prefetch_factor"):
        if out[name] < 1:
            raise ConfigError(f"{source}: {name} must be positive, got {out[name]}")
    if out["num_workers"] < 0:
        raise ConfigError(f"{source}: num_workers must be 0 or more, got {out['num_workers']}")
    check_dataset_description(out, source)
    decoder = out["model"].get("decoder") or {}
    kwargs = decoder.get("kwargs") or {}
    if kwargs.get("num_class") not in (None, out["nclass"]):
        raise ConfigError(f"{source}: nclass {out['nclass']} differs from model.decoder.kwargs.num_class "
                          f"{kwargs['num_class']}")
    return out


def check_dataset_description(cfg: dict, source: str) -> None:
    """The dataset keys agree: a positive class count, as many class names as classes, a colour per class, an
    ignore value that is not a class value of the masks as stored. Fills the default ``val_id_path``
    (splits/<dataset>/val.txt, where the releases read it) in place."""
    n = cfg["nclass"]
    if n < 1:
        raise ConfigError(f"{source}: nclass must be positive, got {n}")
    if cfg["val_id_path"] is None:
        cfg["val_id_path"] = f"splits/{cfg['dataset']}/val.txt"
    if cfg["classes"] is not None and (len(cfg["classes"]) != n or not all(isinstance(c, str) for c in cfg["classes"])):
        raise ConfigError(f"{source}: classes must be a list of {n} names (nclass), got {cfg['classes']!r}")
    palette = cfg["palette"]
    if palette is not None:
        ok = all(isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                 for c in palette)
        if not ok or len(palette) < n:
            raise ConfigError(f"{source}: palette must be a list of at least {n} colours [r, g, b] (0..255), "
                              f"got {palette!r}")
    reduce_zero = cfg["reduce_zero_label"]
    if reduce_zero is None:
        reduce_zero = cfg["dataset"] in REDUCE_ZERO_LABEL
    first = 1 if reduce_zero else 0  # the class values of the masks as stored
    if not 0 <= cfg["ignore_index"] <= 65535 or first <= cfg["ignore_index"] < first + n:
        raise ConfigError(f"{source}: ignore_index must be a mask value that is not a class ({first}..{first + n - 1}), "
                          f"got {cfg['ignore_index']}")
