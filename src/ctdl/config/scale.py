"""`--scale NAME`: apply a recipe's named override set (e.g. a CPU-sized demo of a paper recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ctdl.config.schema import ExperimentConfig
from ctdl.errors import ConfigError


def scale_overrides(scales: Mapping[str, Mapping[str, Any]] | None, scale: str,
                    source: str | Path = "<config>") -> list[str]:
    """The ``key=value`` overrides of ``scales[scale]`` (``full`` = none); an undefined name is an error."""
    if scale == "full":
        return []
    scales = scales or {}
    if scale not in scales:
        raise ConfigError(f"{source}: scales.{scale} is not defined (defined: {', '.join(scales) or 'none'})")
    return [f"{k}={_yaml(v)}" for k, v in scales[scale].items()]


def apply_scale(cfg: ExperimentConfig, scale: str, source: str | Path = "<config>") -> ExperimentConfig:
    """Return ``cfg`` with ``cfg.scales[scale]`` applied (``full`` = unchanged)."""
    from ctdl.config.load import apply_overrides, config_from_dict, config_to_dict

    overrides = scale_overrides(cfg.scales, scale, source)
    if not overrides:
        return cfg
    return config_from_dict(apply_overrides(config_to_dict(cfg), overrides), f"{source} (scale {scale})")


def _yaml(v: object) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
