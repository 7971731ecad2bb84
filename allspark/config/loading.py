"""Reading configs: YAML files, ``key=value`` overrides, the releases' formats, and the checks of the
config layer (the common schema, the method's own keys and check)."""
import copy
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml

from .registry import registered_method, registered_methods
from .releases import from_release_format
from .schema import DATA_KEYS, SCHEMA, ConfigError, check_config, check_dataset_description, check_keys

__all__ = ["PROJECT_ROOT", "resolve_path", "load_yaml", "parse_yaml", "apply_overrides", "make_training_config",
           "load_training_config", "load_data_config"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PathLike = Union[str, Path]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus floats written with an exponent and no dot (``1e-4``, ``5e-6``): YAML 1.1
    reads those as strings, which a config's ``lr: 5e-6`` would then be refused as."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str):
    """``text`` read as YAML (:class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def resolve_path(value: PathLike) -> Path:
    """A config path: absolute as given, relative to the project root otherwise."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def load_yaml(path: PathLike) -> dict:
    """Read a YAML mapping; a missing, unreadable or non-mapping file -> ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(raw: dict, opts: Optional[Sequence[str]], source: str = "--opts") -> dict:
    """``raw`` with ``key=value`` overrides applied; the value is read as YAML (``lr=0.01`` a float,
    ``amp=bf16`` a string, ``eval_scales=[1.0,1.5]`` a list) and a dotted key reaches into a section
    (``criterion.kwargs.min_kept=50000``). The result is checked like the file."""
    out = copy.deepcopy(raw)
    for opt in opts or ():
        key, sep, text = opt.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: expected key=value, got {opt!r}")
        try:
            value = parse_yaml(text) if text else None
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


def make_training_config(raw: dict, source: str = "config", method: Optional[str] = None,
                         require_method: bool = True) -> dict:
    """A checked training config from the mapping ``raw`` (this project's format or a release's): its keys
    checked against the common schema plus its method's own keys, defaults filled, and the method's check
    run (``method`` overrides ``raw``'s). ``require_method=False`` (evaluation) checks a config without a
    method against the common schema alone."""
    raw = from_release_format(raw, source)
    name = method if method is not None else raw.get("method")
    if name is None:
        if require_method:
            raise ConfigError(f"{source}: no method: set 'method: {' | '.join(registered_methods())}' or pass --method")
        return check_config(raw, source=source)
    spec = registered_method(name, "--method" if method is not None else source)
    cfg = check_config({**raw, "method": name}, source=source, extra=spec.keys)
    if spec.check is not None:
        spec.check(cfg, source)
    return cfg


def load_training_config(path: PathLike, method: Optional[str] = None, require_method: bool = True,
                         overrides: Optional[Sequence[str]] = None) -> dict:
    """:func:`make_training_config` of the YAML file ``path`` with ``overrides`` (``["key=value", ...]``,
    train.py's ``--opts``) applied first."""
    return make_training_config(apply_overrides(load_yaml(path), overrides), str(path), method, require_method)


def load_data_config(path: PathLike, overrides: Optional[Sequence[str]] = None) -> dict:
    """Only the dataset keys of a config (:data:`DATA_KEYS`), checked; for the data tools, which need
    no model or method."""
    raw = apply_overrides(load_yaml(path), overrides)
    cfg = check_keys(raw, {k: SCHEMA[k] for k in DATA_KEYS}, str(path))
    check_dataset_description(cfg, str(path))
    return cfg
