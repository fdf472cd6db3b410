"""PSNR / SSIM / MAE agree with scikit-image (to 1e-6) and with hand computations."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ctdl.metrics.image import mae, psnr, ssim, window_metrics, write_image_metrics
from ctdl.metrics.registry import get_metric


@pytest.fixture
def pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    clean = rng.normal(40, 80, size=(12, 40, 36))
    return clean + rng.normal(0, 30, size=clean.shape), clean


def test_psnr_matches_skimage(pair) -> None:
    pred, truth = pair
    assert psnr(pred, truth, 700.0) == pytest.approx(peak_signal_noise_ratio(truth, pred, data_range=700.0), abs=1e-6)
    assert psnr(truth, truth, 700.0) == math.inf
    mse = np.mean((pred - truth) ** 2)
    assert psnr(pred, truth, 700.0) == pytest.approx(10 * math.log10(700.0 ** 2 / mse))


def test_ssim_2d_3d_match_skimage(pair) -> None:
    pred, truth = pair
    assert ssim(pred[5], truth[5], 700.0) == pytest.approx(structural_similarity(truth[5], pred[5], data_range=700.0), abs=1e-6)
    assert ssim(pred, truth, 700.0) == pytest.approx(structural_similarity(truth, pred, data_range=700.0), abs=1e-6)
    per_slice = np.mean([structural_similarity(truth[i], pred[i], data_range=700.0) for i in range(len(truth))])
    assert ssim(pred, truth, 700.0, dims=2) == pytest.approx(per_slice, abs=1e-6)
    assert ssim(truth, truth, 700.0) == pytest.approx(1.0)
    assert get_metric("ssim") is ssim and get_metric("psnr") is psnr


def test_mae_and_errors(pair) -> None:
    pred, truth = pair
    assert mae(pred, truth) == pytest.approx(np.abs(pred - truth).mean())
    m = truth > 40
    assert mae(pred, truth, m) == pytest.approx(np.abs(pred - truth)[m].mean())
    assert math.isnan(mae(pred, truth, np.zeros_like(m)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(pred, truth, 0)
    with pytest.raises(ValueError, match="shape"):
        ssim(pred[0], truth, 1.0)


def test_window_metrics_clip_then_score(tmp_path, pair) -> None:
    pred, truth = pair
    row = window_metrics(pred, truth, (-200, 500), prefix="input_")
    pc, tc = np.clip(pred, -200, 500), np.clip(truth, -200, 500)
    assert row["input_psnr"] == pytest.approx(peak_signal_noise_ratio(tc, pc, data_range=700), abs=1e-6)
    assert row["input_ssim"] == pytest.approx(structural_similarity(tc, pc, data_range=700), abs=1e-6)
    assert row["input_mae_hu"] == pytest.approx(np.abs(pc - tc).mean())
    rows = [{"case_id": "a", "psnr": 20.0}, {"case_id": "b", "psnr": 30.0}]
    means = write_image_metrics(rows, tmp_path)
    assert means["psnr"] == 25.0
    with open(tmp_path / "metrics_summary.csv") as fh:
        got = list(csv.reader(fh))
    assert got[0] == ["metric", "mean", "std", "min", "max", "n", "n_nan"]
    assert got[1][:2] == ["psnr", "25.0"]
