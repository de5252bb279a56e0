"""Typed config: schema (rlpost.config.schema), defaults (configs/*.yaml), loading and validation."""

from rlpost.config.loader import ConfigError, config_to_dict, load_config, run_dir, save_config
from rlpost.config.schema import RLConfig

__all__ = ["ConfigError", "RLConfig", "config_to_dict", "load_config", "run_dir", "save_config"]
