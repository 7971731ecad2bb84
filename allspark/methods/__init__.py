"""Training methods: one file each; adding a method is a new file here, its line in ``METHODS`` and its configs.

- ``sup``: the labeled list alone; ``semi``: plain pseudo-labelling; ``allspark``: the AllSpark release
  (all three with the release's SGD recipe by default; ``semi`` and ``allspark`` take UniMatch V2's parts as
  options); ``unimatch_v2``: UniMatch V2's release (EMA teacher, CutMixed strong views with complementary
  dropout, confidence threshold, AdamW).

Importing this package registers every method's name, config keys and check with the config layer
(:func:`allspark.config.register_method`), which then loads their configs.
"""
from ..config import register_method, registered_method
from .allspark import AllSparkMethod
from .base import PSEUDO_ACCURACY, Method, sgd_two_groups, to_device
from .semi import PseudoLabel
from .sup import Supervised
from .unimatch_v2 import UniMatchV2

__all__ = ["METHODS", "PSEUDO_ACCURACY", "Method", "get_method", "sgd_two_groups", "to_device", "Supervised", "PseudoLabel",
           "AllSparkMethod", "UniMatchV2"]

METHODS = {cls.name: cls for cls in (Supervised, PseudoLabel, AllSparkMethod, UniMatchV2)}
for _cls in METHODS.values():
    register_method(_cls.name, _cls.config_keys, _cls.check_config)


def get_method(name: str, source: str = "config") -> type:
    """The method class registered under ``name``; an unknown name -> ConfigError listing the valid ones."""
    registered_method(name, source)
    return METHODS[name]
