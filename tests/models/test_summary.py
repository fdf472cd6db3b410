"""Tests for `ctdl models` (listing with counts, layer summary)."""

from __future__ import annotations

import pytest

from ctdl.cli import main


def test_models_lists_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "unet2d_thesis"]) == 0
    out = capsys.readouterr().out
    assert "unet2d_thesis" in out and "2,462,143" in out and "2,465,619" in out


def test_models_layer_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "unet3d_small", "--input-shape", "1", "16", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert "(output)" in out and "(1, 3, 16, 32, 32)" in out
