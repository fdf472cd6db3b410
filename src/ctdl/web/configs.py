"""Config builder back end: the JSON Schema of the experiment config with registry choices, recipes as
presets, and validation whose errors carry the key path of the field (so the page can mark that field).

Validation is pydantic's (through the same :class:`~ctdl.config.schema.ExperimentConfig` that ``ctdl
train`` uses); YAML is parsed with ``yaml.safe_load`` only, so no config value is ever evaluated as code.
"""

from __future__ import annotations

import copy
import re
import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ctdl.config.load import config_to_dict, dump_config
from ctdl.config.schema import ExperimentConfig


def _safe(fn: Any) -> list[Any]:
    """A registry listing, or [] when that registry cannot be imported (the form then takes free text)."""
    try:
        return list(fn())
    except Exception:  # a registry module broken or missing must not take the whole page down
        return []


def _models() -> list[dict[str, Any]]:
    from ctdl.models import list_models, model_info

    out = []
    for name in list_models():
        meta = model_info(name)
        out.append({"name": name, "task": meta.get("task"), "dims": meta.get("dims"),
                    "description": str(meta.get("description", "") or "")})
    return out


def _losses() -> list[str]:
    from ctdl.losses.registry import list_losses

    return list_losses()


def _metrics() -> list[str]:
    from ctdl.metrics.registry import list_metrics

    return list_metrics()


def _optimizers() -> list[str]:
    from ctdl.engine.optimizers import OPTIMIZERS

    return OPTIMIZERS.names()


def _schedules() -> list[str]:
    from ctdl.engine.schedules import SCHEDULES

    return list(SCHEDULES)


@functools.lru_cache(maxsize=1)
def registries() -> dict[str, Any]:
    """Choices for the form: models (with task and dims), losses, metrics, optimizers, schedules."""
    return {"models": _safe(_models), "losses": _safe(_losses), "metrics": _safe(_metrics),
            "optimizers": _safe(_optimizers), "schedules": _safe(_schedules)}


def _prop(schema: dict[str, Any], section: str, field: str) -> dict[str, Any] | None:
    defs = schema.get("$defs", {})
    ref = schema["properties"].get(section, {})
    ref = ref.get("$ref") or next((a.get("$ref") for a in ref.get("allOf", []) if "$ref" in a), None)
    if not ref:
        return None
    return defs.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}).get(field)


def form_schema() -> dict[str, Any]:
    """``ExperimentConfig``'s JSON Schema with ``enum`` choices from the registries on free-text names."""
    schema = copy.deepcopy(ExperimentConfig.model_json_schema())
    reg = registries()
    for section, field, values in (("model", "name", [m["name"] for m in reg["models"]]),
                                   ("loss", "name", reg["losses"])):
        p = _prop(schema, section, field)
        if p is not None and values:
            p["enum"] = values
    p = _prop(schema, "monitors", "metrics")
    if p is not None and reg["metrics"]:
        p.setdefault("items", {})["enum"] = reg["metrics"]
        p["uniqueItems"] = True
    return schema


def list_recipes(recipes_dir: Path | None) -> list[dict[str, str]]:
    if recipes_dir is None or not recipes_dir.is_dir():
        return []
    out = []
    for p in sorted(recipes_dir.glob("*.yaml")) + sorted(recipes_dir.glob("*.yml")):
        first = next((ln[1:].strip() for ln in p.read_text().splitlines() if ln.startswith("#")), "")
        out.append({"name": p.stem, "description": first})
    return out


def parse_yaml(text: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Parse YAML text (safe loader); errors name the line."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return None, [{"loc": "<yaml>", "path": [], "msg": f"not valid YAML: {where}{getattr(exc, 'problem', exc)}"}]
    if not isinstance(data, dict):
        return None, [{"loc": "<root>", "path": [], "msg": f"expected a mapping at the top level, got {type(data).__name__}"}]
    return data, []


def _loc(parts: list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "<root>"


def validate(data: dict[str, Any]) -> dict[str, Any]:
    """``{ok, errors: [{loc, path, msg, input}], config, yaml}``; ``path`` is the field's key path."""
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            path = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal[")))]
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not part of the schema)"
            elif err["type"] == "missing":
                msg = "required key is missing"
            # model validators report at the section; their messages name the key (e.g. "data.root is required")
            named = re.search(r"\b(" + re.escape(_loc(path)) + r"\.[A-Za-z_][\w.]*)", msg) if path else None
            if named:
                path = named.group(1).split(".")
            value = err.get("input")
            errors.append({"loc": _loc(path), "path": path, "msg": msg,
                           "input": value if isinstance(value, (str, int, float, bool, type(None))) else None})
        return {"ok": False, "errors": errors}
    reg = registries()  # names are free text in the schema; the registries decide
    models, losses = [m["name"] for m in reg["models"]], reg["losses"]
    errors = []
    if cfg.model.layers is None and models and cfg.model.name not in models:
        errors.append({"loc": "model.name", "path": ["model", "name"], "input": cfg.model.name,
                       "msg": f"unknown model {cfg.model.name!r}; `ctdl models` lists the registered ones"})
    if losses and cfg.loss.name not in losses:
        errors.append({"loc": "loss.name", "path": ["loss", "name"], "input": cfg.loss.name,
                       "msg": f"unknown loss {cfg.loss.name!r}; expected one of {', '.join(losses)}"})
    if errors:
        return {"ok": False, "errors": errors}
    return {"ok": True, "errors": [], "config": config_to_dict(cfg), "yaml": dump_config(cfg)}
