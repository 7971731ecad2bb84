"""The registry the config layer reads a method's own keys from. Each training method registers itself
(``allspark.methods`` does at import): its name, its config keys (in :data:`allspark.config.SCHEMA`'s format)
and a check of a loaded config against the method (its decoder, its crop)."""
from typing import Callable, NamedTuple, Optional

from .schema import ConfigError

__all__ = ["MethodKeys", "register_method", "registered_method", "registered_methods"]


class MethodKeys(NamedTuple):
    name: str
    keys: dict
    check: Optional[Callable[[dict, str], None]] = None


_REGISTRY: dict = {}


def register_method(name: str, keys: dict, check: Optional[Callable[[dict, str], None]] = None) -> None:
    """Make ``name`` a valid ``method`` whose configs accept ``keys``; ``check(cfg, source)`` raises
    ConfigError where a checked config cannot train the method."""
    _REGISTRY[name] = MethodKeys(name, dict(keys), check)


def registered_methods() -> list:
    """The names of the registered methods, in registration order."""
    return list(_REGISTRY)


def registered_method(name: str, source: str = "config") -> MethodKeys:
    """The registration of ``name``; an unknown name -> ConfigError listing the valid ones."""
    if name not in _REGISTRY:
        hint = "" if _REGISTRY else " (no method is registered: import allspark.methods first)"
        raise ConfigError(f"{source}: method must be one of {registered_methods()}, got {name!r}{hint}")
    return _REGISTRY[name]
