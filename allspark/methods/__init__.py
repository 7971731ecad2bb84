"""Training methods: one file each; adding a method is a new file here, its registry line and its configs.

- ``sup``: the labeled list alone; ``semi``: plain pseudo-labelling; ``allspark``: the AllSpark release
  (all three with the release's SGD recipe); ``unimatch_v2``: UniMatch V2's release (EMA teacher, CutMixed
  strong views with complementary dropout, confidence threshold, AdamW).
"""
from ..config import ConfigError, apply_overrides, check_config, drop_release_keys, load_yaml
from ..models.dpt import release_dpt_section
from .allspark import AllSparkMethod
from .base import Method, sgd_two_groups, to_device
from .semi import PseudoLabel
from .sup import Supervised
from .unimatch_v2 import UniMatchV2

__all__ = ["METHODS", "Method", "get_method", "load_training_config", "sgd_two_groups", "to_device",
           "Supervised", "PseudoLabel", "AllSparkMethod", "UniMatchV2"]

METHODS = {cls.name: cls for cls in (Supervised, PseudoLabel, AllSparkMethod, UniMatchV2)}


def get_method(name, source="config"):
    """The method class registered under ``name``; an unknown name -> ConfigError listing the valid ones."""
    if name not in METHODS:
        raise ConfigError(f"{source}: method must be one of {list(METHODS)}, got {name!r}")
    return METHODS[name]


def _from_unimatch_v2_release(raw, source):
    """UniMatch V2's release writes its model as ``model: dpt`` and ``backbone: dinov2_<size>``: the
    equivalent ``model:`` section (the release's head widths for that encoder) and ``method: unimatch_v2``."""
    if not isinstance(raw.get("model"), str):
        return raw
    out = {k: v for k, v in raw.items() if k != "backbone"}
    if raw["model"] != "dpt" or "backbone" not in raw:
        raise ConfigError(f"{source}: model must be a section with 'backbone' and 'decoder' (or the UniMatch V2 "
                          f"release's 'model: dpt' with 'backbone: dinov2_<size>'), got model: {raw['model']!r}")
    out["model"] = release_dpt_section(raw["backbone"], raw.get("nclass"), source)
    out.setdefault("method", "unimatch_v2")
    return out


def load_training_config(path, method=None, require_method=True, overrides=None):
    """Load a config: its keys checked against the common schema plus its method's own keys, and the
    method (``method`` from the command line overrides the file's) checked against the model section.
    ``overrides`` (``["key=value", ...]``, train.py's ``--opts``) are applied before the checks. The
    releases' own config files load too: AllSpark's ``criterion_u`` is dropped with a note, UniMatch V2's
    ``model: dpt`` / ``backbone:`` become the model section.
    Evaluation passes ``require_method=False``: a config without a method is checked without one."""
    raw = apply_overrides(load_yaml(path), overrides)
    raw = _from_unimatch_v2_release(drop_release_keys(raw, str(path)), str(path))
    name = method if method is not None else raw.get("method")
    if name is None:
        if require_method:
            raise ConfigError(f"{path}: no method: set 'method: {' | '.join(METHODS)}' or pass --method")
        return check_config(raw, source=str(path))
    cls = get_method(name, "--method" if method is not None else str(path))
    cfg = check_config({**raw, "method": name}, source=str(path), extra=cls.config_keys)
    cls.check_config(cfg, str(path))
    return cfg
