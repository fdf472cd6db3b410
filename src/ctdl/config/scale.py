"""`--scale NAME`: apply a recipe's named override set (e.g. a CPU-sized demo of a paper recipe)."""

from __future__ import annotations

from pathlib import Path

from ctdl.config.load import apply_overrides, config_from_dict, config_to_dict
from ctdl.config.schema import ExperimentConfig
from ctdl.errors import ConfigError


def apply_scale(cfg: ExperimentConfig, scale: str, source: str | Path = "<config>") -> ExperimentConfig:
    """Return ``cfg`` with ``cfg.scales[scale]`` applied (``full`` = unchanged)."""
    if scale == "full":
        return cfg
    if scale not in cfg.scales:
        raise ConfigError(f"{source}: scales.{scale} is not defined (defined: {', '.join(cfg.scales) or 'none'})")
    data = config_to_dict(cfg)
    overrides = [f"{k}={_yaml(v)}" for k, v in cfg.scales[scale].items()]
    data = apply_overrides(data, overrides)
    return config_from_dict(data, f"{source} (scale {scale})")


def _yaml(v: object) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
