"""Typed experiment configs: schema, loading/saving, DLAE import."""

from ctdl.config.load import (
    apply_overrides,
    commented_defaults,
    config_from_dict,
    config_to_dict,
    default_config,
    dump_config,
    load_config,
    save_config,
)
from ctdl.config.schema import ExperimentConfig

__all__ = [
    "ExperimentConfig",
    "apply_overrides",
    "commented_defaults",
    "config_from_dict",
    "config_to_dict",
    "default_config",
    "dump_config",
    "load_config",
    "save_config",
]
