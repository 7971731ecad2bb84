"""Configuration errors and YAML loading shared by the model builder and the entry points."""
from pathlib import Path

import yaml

__all__ = ["ConfigError", "load_yaml"]


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
