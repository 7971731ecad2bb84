"""Training configs: the schema, loading and checking, the releases' formats, and the registry of the
methods' own keys. The bottom layer: it imports nothing else of the project.

A config is a flat mapping of the release's keys plus a ``model:`` section (see docs/training.md). Relative paths in
it (``data_root``, ``val_id_path``) are taken relative to the project root, so a run does not depend on the
working directory.
"""
from .constants import AMP_MODES, EVAL_MODES, IGNORE_INDEX, LR_SCALINGS, REDUCE_ZERO_LABEL
from .loading import (PROJECT_ROOT, apply_overrides, load_data_config, load_training_config, load_yaml,
                      make_training_config, parse_yaml, resolve_path)
from .papers import PAPER_RESULTS_FILE, paper_result, paper_results, results_table
from .registry import MethodKeys, register_method, registered_method, registered_methods
from .releases import DPT_HEADS, RELEASE_DPT_HEADS, RELEASE_KEYS, drop_release_keys, from_release_format, release_dpt_section
from .schema import DATA_KEYS, SCHEMA, ConfigError, Key, check_config

__all__ = ["PAPER_RESULTS_FILE", "paper_result", "paper_results", "results_table", "AMP_MODES", "EVAL_MODES", "IGNORE_INDEX", "LR_SCALINGS", "REDUCE_ZERO_LABEL", "PROJECT_ROOT", "apply_overrides", "load_data_config",
           "load_training_config", "load_yaml", "make_training_config", "parse_yaml", "resolve_path", "MethodKeys",
           "register_method", "registered_method", "registered_methods", "DPT_HEADS", "RELEASE_DPT_HEADS", "RELEASE_KEYS",
           "drop_release_keys", "from_release_format", "release_dpt_section", "DATA_KEYS", "SCHEMA", "ConfigError",
           "Key", "check_config"]
