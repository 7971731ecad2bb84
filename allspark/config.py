"""Training configs: YAML loading and checking, shared by the model builder and the entry points.

A config is a flat mapping of the release's keys plus a ``model:`` section (see README). Relative
paths in it (``data_root``, ``val_id_path``) are taken relative to the project root, so a run does not
depend on the working directory.
"""
from pathlib import Path

import logging

import yaml

__all__ = ["ConfigError", "load_yaml", "load_config", "check_config", "resolve_path", "apply_overrides",
           "drop_release_keys", "load_data_config", "DATA_KEYS", "PROJECT_ROOT", "SCHEMA", "RELEASE_KEYS", "IGNORE_INDEX"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IGNORE_INDEX = 255  # the ignore label inside the project: masks, losses and metrics

logger = logging.getLogger("allspark")

# Keys of the releases' own config files that this project reads but that have no effect, with why.
RELEASE_KEYS = {
    "criterion_u": "the unlabeled loss is the method's own (the releases' cross-entropy with ignore 255)",
}

_NUMBER = (int, float)
# key: (required, accepted types, default, allowed values or None)
SCHEMA = {
    "method": (False, str, None, None),  # checked against the registry in allspark.methods
    "dataset": (True, str, None, None),
    "data_root": (True, str, None, None),
    "val_id_path": (False, str, None, None),  # default splits/<dataset>/val.txt, where the releases read it
    "nclass": (True, int, None, None),
    "crop_size": (True, int, None, None),
    "epochs": (True, int, None, None),
    "batch_size": (True, int, None, None),
    "lr": (True, _NUMBER, None, None),
    "lr_multi": (True, _NUMBER, None, None),
    "criterion": (True, dict, None, None),
    "model": (True, dict, None, None),
    # the dataset's description (a dataset of your own needs no code: see README)
    "classes": (False, list, None, None),  # class names, nclass of them (logs, per-class IoU)
    "palette": (False, list, None, None),  # [[r, g, b], ...] per class (predictions, visualisations)
    "ignore_index": (False, int, IGNORE_INDEX, None),  # the masks' ignore value, read as 255
    "reduce_zero_label": (False, bool, None, None),  # 0 -> ignore, k -> k - 1 (default: true for ade20k only)
    "eval_mode": (False, str, "original", ("original", "center_crop", "sliding_window", "multiscale")),
    "eval_scales": (False, list, [0.75, 1.0, 1.25, 1.5], None),
    "eval_flip": (False, bool, True, None),
    # sliding window edge windows: cut at the border (the AllSpark release) or moved back inside the image
    # so that every window is whole (the UniMatch V2 release)
    "sliding_window_edges": (False, str, "cut", ("cut", "aligned")),
    "lock_backbone": (False, bool, False, None),  # a frozen encoder (UniMatch V2's lock_backbone)
    # log the accuracy of the pseudo labels when every mask of the unlabeled list is there (never trained on)
    "pseudo_label_accuracy": (False, bool, True, None),
    # data loading (no effect on the numbers: every sample draws its augmentations from its own seed)
    "num_workers": (False, int, 2, None),
    "pin_memory": (False, bool, True, None),
    "persistent_workers": (False, bool, True, None),
    "prefetch_factor": (False, int, 2, None),
    # speed with a documented numeric change, off by default (the release trains in fp32, eagerly)
    "amp": (False, str, "none", ("none", "bf16", "fp16")),
    "compile": (False, bool, False, None),
    # recompute the encoder blocks' activations in backward instead of keeping them: less memory, same numbers
    "activation_checkpointing": (False, bool, False, None),
}


class ConfigError(ValueError):
    """A config file or section that cannot be used; the message names the key and what was expected."""


def load_yaml(path):
    """Read a YAML mapping with ``yaml.safe_load``; a missing, unreadable or non-mapping file -> ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def resolve_path(value):
    """A config path: absolute as given, relative to the project root otherwise."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def check_config(cfg, source="config", extra=None):
    """Check keys, types and allowed values against SCHEMA and ``extra`` (a method's own keys, same
    format), fill defaults, and check the training keys against the model section. Returns a new dict;
    raises ConfigError naming the key."""
    schema = {**SCHEMA, **(extra or {})}
    unknown = sorted(set(cfg) - set(schema))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(schema)}")
    out = _typed(cfg, schema, source)
    for key in ("nclass", "crop_size", "epochs", "batch_size", "num_workers", "prefetch_factor"):
        if out[key] < (0 if key == "num_workers" else 1):
            raise ConfigError(f"{source}: {key} must be positive, got {out[key]}")
    if out["val_id_path"] is None:
        out["val_id_path"] = f"splits/{out['dataset']}/val.txt"
    _check_dataset_description(out, source)
    decoder = out["model"].get("decoder") or {}
    kwargs = decoder.get("kwargs") or {}
    if kwargs.get("num_class") not in (None, out["nclass"]):
        raise ConfigError(f"{source}: nclass {out['nclass']} differs from model.decoder.kwargs.num_class "
                          f"{kwargs['num_class']}")
    return out


def _typed(cfg, schema, source):
    """The keys of ``schema`` from ``cfg`` with their types and allowed values checked, defaults filled."""
    out = {}
    for key, (required, types, default, allowed) in schema.items():
        if key not in cfg:
            if required:
                raise ConfigError(f"{source}: missing key {key!r}")
            out[key] = default
            continue
        value = cfg[key]
        if isinstance(value, bool) and types is not bool or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {list(allowed)}, got {value!r}")
        out[key] = value
    return out


DATA_KEYS = ("dataset", "data_root", "val_id_path", "nclass", "classes", "palette", "ignore_index", "reduce_zero_label")


def load_data_config(path, overrides=None):
    """Only the dataset keys of a config (:data:`DATA_KEYS`), checked; for the data tools, which need
    no model or method."""
    raw = apply_overrides(load_yaml(path), overrides)
    source = str(path)
    cfg = _typed(raw, {k: SCHEMA[k] for k in DATA_KEYS}, source)
    if cfg["val_id_path"] is None:
        cfg["val_id_path"] = f"splits/{cfg['dataset']}/val.txt"
    if cfg["nclass"] < 1:
        raise ConfigError(f"{source}: nclass must be positive, got {cfg['nclass']}")
    _check_dataset_description(cfg, source)
    return cfg


def _check_dataset_description(cfg, source):
    n = cfg["nclass"]
    if cfg["classes"] is not None and (len(cfg["classes"]) != n or not all(isinstance(c, str) for c in cfg["classes"])):
        raise ConfigError(f"{source}: classes must be a list of {n} names (nclass), got {cfg['classes']!r}")
    palette = cfg["palette"]
    if palette is not None:
        ok = all(isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                 for c in palette)
        if not ok or len(palette) < n:
            raise ConfigError(f"{source}: palette must be a list of at least {n} colours [r, g, b] (0..255), "
                              f"got {palette!r}")
    first = 1 if cfg["reduce_zero_label"] else 0  # the class values of the masks as stored
    if not 0 <= cfg["ignore_index"] <= 65535 or first <= cfg["ignore_index"] < first + n:
        raise ConfigError(f"{source}: ignore_index must be a mask value that is not a class ({first}..{first + n - 1}), "
                          f"got {cfg['ignore_index']}")


def drop_release_keys(raw, source="config"):
    """A copy of ``raw`` without the releases' keys that have no effect here (:data:`RELEASE_KEYS`),
    each dropped with a warning that says why."""
    out = dict(raw)
    for key in sorted(set(raw) & set(RELEASE_KEYS)):
        out.pop(key)
        logger.warning(f"{source}: key {key!r} (from the release's configs) has no effect: {RELEASE_KEYS[key]}")
    return out


def apply_overrides(raw, opts, source="--opts"):
    """``raw`` with ``key=value`` overrides applied; the value is read as YAML (``lr=0.01`` a float,
    ``amp=bf16`` a string, ``eval_scales=[1.0,1.5]`` a list) and a dotted key reaches into a section
    (``criterion.kwargs.min_kept=50000``). The result is checked like the file (:func:`check_config`)."""
    import copy

    out = copy.deepcopy(raw)
    for opt in opts or ():
        key, sep, text = opt.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: expected key=value, got {opt!r}")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: the value of {key} is not valid YAML ({text!r}): {exc}") from None
        *parents, last = key.split(".")
        node = out
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {'.'.join(parents[:i + 1])} is not a section, cannot set {key}")
        node[last] = value
    return out


def load_config(path, extra=None):
    """Load a config and check it (:func:`check_config`); the method's own keys come with ``extra``
    (``allspark.methods.load_training_config`` adds them and checks the method)."""
    return check_config(load_yaml(path), source=str(path), extra=extra)
