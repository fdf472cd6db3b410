"""Cross-section rules of the experiment schema."""

from __future__ import annotations

import pydantic
import pytest

from ctdl.config.schema import ExperimentConfig


def test_dlae_sample_steps_only_on_hdf5_data() -> None:
    with pytest.raises(pydantic.ValidationError, match="preprocessing.center is a DLAE sample step applied to HDF5 data only"):
        ExperimentConfig.model_validate({"data": {"format": "kits19", "root": "x"}, "preprocessing": {"center": "samplewise"}})
    ok = ExperimentConfig.model_validate({"data": {"format": "hdf5", "train_x": "x.h5", "train_y": "y.h5"},
                                          "preprocessing": {"zca_epsilon": 1e-6}})
    assert ok.preprocessing.zca_epsilon == 1e-6
