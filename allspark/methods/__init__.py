"""Training methods: one file each; adding a method is a new file here, its registry line and its configs.

- ``sup``: the labeled list alone; ``semi``: plain pseudo-labelling; ``allspark``: the AllSpark release
  (all three with the release's SGD recipe); ``unimatch_v2``: UniMatch V2's release (EMA teacher, CutMixed
  strong views with complementary dropout, confidence threshold, AdamW).
"""
from ..config import ConfigError, check_config, load_yaml
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


def load_training_config(path, method=None, require_method=True):
    """Load a config: its keys checked against the common schema plus its method's own keys, and the
    method (``method`` from the command line overrides the file's) checked against the model section.
    Evaluation passes ``require_method=False``: a config without a method is checked without one."""
    raw = load_yaml(path)
    name = method if method is not None else raw.get("method")
    if name is None:
        if require_method:
            raise ConfigError(f"{path}: no method: set 'method: {' | '.join(METHODS)}' or pass --method")
        return check_config(raw, source=str(path))
    cls = get_method(name, "--method" if method is not None else str(path))
    cfg = check_config({**raw, "method": name}, source=str(path), extra=cls.config_keys)
    cls.check_config(cfg, str(path))
    return cfg
