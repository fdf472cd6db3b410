"""Load, validate, override, save and round-trip experiment configs (YAML or JSON).

Errors name the file, the key path and what was expected. Relative paths inside a config are
taken relative to the current working directory (the folder ``ctdl`` is run from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ctdl.config.schema import ExperimentConfig
from ctdl.errors import ConfigError
from ctdl.io.atomic import atomic_write_text


def _format_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: file, key path, message, offending value."""
    lines = [f"{source}: invalid config ({exc.error_count()} problem{'s' if exc.error_count() != 1 else ''})"]
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal[")))]
        key = _format_loc(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema; check the spelling or `ctdl config defaults`)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        value = err.get("input")
        shown = "" if err["type"] in ("missing",) else f" (got {value!r})" if not isinstance(value, dict) else ""
        lines.append(f"  {source}: {key}: {msg}{shown}")
    return "\n".join(lines)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict (errors name the file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def set_by_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'`` (creating sections as needed)."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        cur = nxt
    cur[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML: numbers, lists, booleans)."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        set_by_path(data, key.strip(), value)
    return data


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: Iterable[str] | None = None, scale: str | None = None) -> ExperimentConfig:
    """Load and validate a ctdl YAML/JSON config (a DLAE JSON config is detected and imported).

    ``scale`` applies the config's ``scales.<scale>`` override set (``full``: none) before ``overrides``,
    so a key given on the command line always wins over the scale's value.
    """
    path = Path(path)
    data = read_mapping(path)
    from ctdl.config.dlae import is_dlae_config

    if is_dlae_config(data):  # DLAE's own layout: DLAE key paths in --set apply before conversion
        from ctdl.config.dlae import apply_dlae_overrides, dlae_to_dict

        data, overrides = apply_dlae_overrides(data, overrides, source=str(path))
        data = dlae_to_dict(data, source=str(path))
    if scale:
        from ctdl.config.scale import scale_overrides

        data = apply_overrides(data, scale_overrides(data.get("scales"), scale, path))
    data = apply_overrides(data, overrides)
    return config_from_dict(data, str(path))


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable dict (paths as strings, tuples as lists)."""
    return json.loads(cfg.model_dump_json())


def dump_config(cfg: BaseModel, fmt: str = "yaml") -> str:
    data = config_to_dict(cfg)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def save_config(cfg: BaseModel, path: str | Path) -> Path:
    """Write the config atomically; the format follows the extension (.json or YAML)."""
    path = Path(path)
    atomic_write_text(path, dump_config(cfg, "json" if path.suffix.lower() == ".json" else "yaml"))
    return path


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def _commented(model: type[BaseModel], values: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, field in model.model_fields.items():
        value = values.get(name)
        desc = field.description or ""
        sub = _section_type(field.annotation)
        if sub is not None and isinstance(value, dict) and value:
            if desc:
                lines.append(f"{pad}# {desc}")
            lines.append(f"{pad}{name}:")
            lines.extend(_commented(sub, value, indent + 1))
        else:
            comment = f"  # {desc}" if desc else ""
            lines.append(f"{pad}{name}: {_yaml_scalar(value)}{comment}")
    return lines


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def default_config() -> ExperimentConfig:
    """The default experiment: a KiTS19 folder (root to be set by the user)."""
    return ExperimentConfig.model_validate({"data": {"format": "kits19", "root": "path/to/kits19"}})


def commented_defaults() -> str:
    """A complete default config as YAML, every key commented with its meaning."""
    cfg = default_config()
    head = [
        "# ctdl experiment config: every key with its default value.",
        "# Run with `ctdl train THIS.yaml`; override any key with --set section.key=value.",
        "# Array axes are (D, H, W) = (slices, rows, columns) everywhere.",
    ]
    return "\n".join(head + _commented(ExperimentConfig, config_to_dict(cfg), 0)) + "\n"
