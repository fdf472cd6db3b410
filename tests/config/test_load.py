"""Tests for ctdl.config.load: errors name file and key, round trips, overrides, defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ctdl.config import commented_defaults, config_to_dict, default_config, load_config, save_config
from ctdl.config.schema import ExperimentConfig
from ctdl.errors import ConfigError


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_names_file_and_key_path(tmp_path: Path) -> None:
    f = _write(tmp_path / "exp.yaml", {"data": {"format": "kits19", "root": "x"}, "training": {"epochz": 3}})
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    msg = str(ei.value)
    assert str(f) in msg and "training.epochz" in msg and "unknown key" in msg


def test_wrong_type_names_key_and_expectation(tmp_path: Path) -> None:
    f = _write(tmp_path / "exp.yaml", {"data": {"format": "kits19", "root": "x"}, "training": {"batch_size": "two"}})
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    msg = str(ei.value)
    assert "training.batch_size" in msg and "integer" in msg and "'two'" in msg


def test_bad_enum_lists_valid_values(tmp_path: Path) -> None:
    f = _write(tmp_path / "exp.yaml", {"data": {"format": "kits19", "root": "x"}, "optimizer": {"name": "sgdd"}})
    with pytest.raises(ConfigError, match=r"optimizer\.name.*'sgd'.*'adamw'"):
        load_config(f)


def test_unknown_normalization_and_bad_window(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "exp.yaml",
        {"data": {"format": "kits19", "root": "x"}, "preprocessing": {"normalization": "unit", "hu_window": [500, -200]}},
    )
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    msg = str(ei.value)
    assert "preprocessing.normalization" in msg and "samplewise_unity_x" in msg
    assert "preprocessing.hu_window" in msg


def test_missing_required_section_and_split_sum(tmp_path: Path) -> None:
    f = _write(tmp_path / "exp.yaml", {"training": {"epochs": 2}})
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        load_config(f)
    f = _write(tmp_path / "exp2.yaml", {"data": {"format": "kits19", "root": "x", "split": {"train": 0.9, "val": 0.2, "test": 0.1}}})
    with pytest.raises(ConfigError, match=r"data\.split.*sum to 1"):
        load_config(f)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    cfg = ExperimentConfig.model_validate(
        {
            "name": "rt",
            "data": {"format": "kits19", "root": str(tmp_path)},
            "preprocessing": {"spacing": [3, 1.5, 1.5], "hu_window": [-200, 500]},
            "loss": {"name": "weighted_cross_entropy", "class_weights": [0.2, 1.0, 2.0]},
            "schedule": {"name": "multistep", "milestones": [3, 5, 7]},
        }
    )
    path = save_config(cfg, tmp_path / f"cfg{suffix}")
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    if suffix == ".json":
        assert json.loads(path.read_text())["loss"]["class_weights"] == [0.2, 1.0, 2.0]


def test_overrides_are_typed(tmp_path: Path) -> None:
    f = _write(tmp_path / "exp.yaml", {"data": {"format": "kits19", "root": "x"}})
    cfg = load_config(f, ["training.epochs=3", "preprocessing.spacing=[2, 1, 1]", "data.root=/elsewhere"])
    assert cfg.training.epochs == 3
    assert cfg.preprocessing.spacing == (2.0, 1.0, 1.0)
    assert str(cfg.data.root) == "/elsewhere"
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(f, ["training.epochs"])


def test_commented_defaults_is_complete_and_loads() -> None:
    text = commented_defaults()
    data = yaml.safe_load(text)
    assert ExperimentConfig.model_validate(data) == default_config()
    # every section of the schema appears, with comments
    for section in ExperimentConfig.model_fields:
        assert f"\n{section}:" in text or text.startswith(f"{section}:") or f"\n{section}: " in text
    assert "# HU clip window" in text
