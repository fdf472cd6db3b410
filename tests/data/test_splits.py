"""Tests for ctdl.data.splits: exact sizes, determinism, stratification, save/load."""

from __future__ import annotations

from collections import Counter

import pytest

from ctdl.data.splits import load_split, save_split, split_ids
from ctdl.errors import InputError


def test_sizes_and_disjoint() -> None:
    ids = [f"case_{i:05d}" for i in range(20)]
    s = split_ids(ids, 0.7, 0.15, 0.15, seed=1)
    assert [len(s[k]) for k in ("train", "val", "test")] == [14, 3, 3]
    assert sorted(s["train"] + s["val"] + s["test"]) == ids


def test_deterministic_and_seed_dependent() -> None:
    ids = [str(i) for i in range(30)]
    assert split_ids(ids, seed=3) == split_ids(ids, seed=3)
    assert split_ids(ids, seed=3) != split_ids(ids, seed=4)


def test_stratified_keeps_class_proportions() -> None:
    ids = [str(i) for i in range(50)]
    strata = ["a"] * 40 + ["b"] * 10
    s = split_ids(ids, 0.8, 0.2, 0.0, seed=0, strata=strata)
    lab = dict(zip(ids, strata))
    assert Counter(lab[i] for i in s["val"]) == {"a": 8, "b": 2}
    assert Counter(lab[i] for i in s["train"]) == {"a": 32, "b": 8}


def test_errors_and_roundtrip(tmp_path) -> None:
    with pytest.raises(InputError, match="not unique"):
        split_ids(["a", "a"])
    with pytest.raises(InputError, match="sum to 1"):
        split_ids(["a", "b"], 0.5, 0.5, 0.5)
    s = split_ids([str(i) for i in range(7)], seed=0)
    p = save_split(s, tmp_path / "split.json")
    assert load_split(p) == s


def test_listed_split_checks_ids_against_the_dataset() -> None:
    from ctdl.config.schema import SplitConfig
    from ctdl.data.splits import listed_split
    from ctdl.errors import ConfigError

    assert listed_split(SplitConfig(), ["a", "b"]) is None  # no lists: the caller splits by fractions
    cfg = SplitConfig(train_cases=["a", "b"], test_cases=["c"])
    assert listed_split(cfg, ["a", "b", "c", "d"]) == {"train": ["a", "b"], "val": [], "test": ["c"]}
    with pytest.raises(ConfigError, match=r"unknown sample ids \['c'\] \(hint\)"):
        listed_split(cfg, ["a", "b"], "sample ids", " (hint)")
