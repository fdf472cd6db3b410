"""Tests for ctdl.engine.inference: window starts, majority voting with known answers, round trips, shapes, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctdl.engine.inference import (
    flip_tta,
    predict_slices_2d,
    predict_sliding_window,
    predict_subvolumes_voting,
    predict_volume,
    subvolume_starts,
)


class ThresholdModel(nn.Module):
    """Logits = 20 * one-hot(channel 0 > 0.5); works for 2D and 3D inputs; can insist on divisible sizes."""

    def __init__(self, divisible: int = 1) -> None:
        super().__init__()
        self.divisible = divisible
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert all(n % self.divisible == 0 for n in x.shape[2:]), f"not padded: {tuple(x.shape)}"
        m = (x[:, :1] > 0.5).float()
        return 20.0 * torch.cat([1 - m, m], dim=1)


class WindowPositionModel(nn.Module):
    """Reads the window's first slice index from its input (channel 0 = slice index); emits a fixed distribution."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(x.shape[0]):
            start = int(round(float(x[i, 0, 0, 0, 0])))
            p = torch.tensor(self.table[start]).view(-1, 1, 1, 1)
            outs.append(torch.log(p).expand(-1, *x.shape[2:]))
        return torch.stack(outs)


def slice_index_image(d: int, h: int, w: int) -> np.ndarray:
    """(1, D, H, W) image whose value at slice z is z."""
    return np.broadcast_to(np.arange(d, dtype=np.float32)[:, None, None], (d, h, w))[None].copy()


@pytest.mark.parametrize(
    ("length", "window", "overlap"),
    [(10, 4, 2), (6, 3, 2), (100, 64, 16), (64, 64, 16), (65, 64, 16), (200, 64, 0), (5, 64, 16), (1, 1, 0)],
)
def test_windows_cover_every_slice(length: int, window: int, overlap: int) -> None:
    starts = subvolume_starts(length, window, overlap)
    covered = np.zeros(max(length, window), dtype=int)
    for s in starts:
        covered[s : s + window] += 1
    assert (covered[:length] >= 1).all()
    assert starts == sorted(set(starts)) and starts[0] == 0
    if length >= window:
        assert starts[-1] == length - window  # last window ends at the last slice
        assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))
    else:
        assert starts == [0]


def test_subvolume_starts_values_and_errors() -> None:
    assert subvolume_starts(10, 4, 2) == [0, 2, 4, 6]
    assert subvolume_starts(11, 4, 2) == [0, 2, 4, 6, 7]
    assert subvolume_starts(100, 64, 16) == [0, 36]
    with pytest.raises(ValueError):
        subvolume_starts(10, 4, 4)
    with pytest.raises(ValueError):
        subvolume_starts(0, 4, 1)


def test_majority_voting_known_answer() -> None:
    # window 3, overlap 2 on 6 slices -> windows start at 0, 1, 2, 3
    table = {
        0: [0.3, 0.4, 0.3],  # votes 1, unconfident
        1: [0.3, 0.4, 0.3],  # votes 1, unconfident
        2: [0.005, 0.005, 0.99],  # votes 2, very confident
        3: [0.6, 0.2, 0.2],  # votes 0
    }
    model = WindowPositionModel(table)
    image = slice_index_image(6, 5, 3)
    labels, votes = predict_subvolumes_voting(model, image, 3, window=3, overlap=2, batch_size=3)
    assert labels.shape == (6, 5, 3) and labels.dtype == np.uint8
    assert votes.dtype == np.uint16
    # slice 2: windows 0, 1, 2 vote 1, 1, 2 -> 1 by majority, although the summed probability of
    #          class 2 (1.59) beats class 1 (0.805): voting, not averaging
    # slice 3: windows 1, 2, 3 vote 1, 2, 0 (three-way tie) -> summed probs 0.905 / 0.605 / 1.49 -> 2
    # slice 4: windows 2, 3 vote 2, 0 (tie) -> summed probs 0.605 vs 1.19 -> 2
    # slice 0: window 0 only -> 1; slice 1: windows 0, 1 -> 1; slice 5: window 3 only -> 0
    expected = np.array([1, 1, 1, 2, 2, 0])
    np.testing.assert_array_equal(labels[:, 2, 1], expected)
    assert (labels == expected[:, None, None]).all()
    np.testing.assert_array_equal(votes[:, 2, 0, 0], [0, 2, 1])
    np.testing.assert_array_equal(votes[:, 3, 0, 0], [1, 1, 1])
    np.testing.assert_array_equal(votes.sum(0)[:, 0, 0], [1, 2, 3, 3, 2, 1])  # coverage
    # mean probabilities over covering windows
    _, probs = predict_subvolumes_voting(model, image, 3, window=3, overlap=2, return_probs=True)
    np.testing.assert_allclose(probs[:, 4, 0, 0], [(0.005 + 0.6) / 2, (0.005 + 0.2) / 2, (0.99 + 0.2) / 2], atol=1e-5)


def test_voting_tie_to_larger_summed_probability_either_way() -> None:
    # window 4, overlap 2 on 6 slices -> windows 0 and 2; slices 2-3 are covered by both (1 vote each)
    for conf_a, conf_b, winner in [(0.9, 0.6, 1), (0.55, 0.8, 2)]:
        rest_a, rest_b = (1 - conf_a) / 2, (1 - conf_b) / 2
        model = WindowPositionModel({0: [rest_a, conf_a, rest_a], 2: [rest_b, rest_b, conf_b]})
        labels, _ = predict_subvolumes_voting(model, slice_index_image(6, 4, 4), 3, window=4, overlap=2)
        np.testing.assert_array_equal(labels[:, 0, 0], [1, 1, winner, winner, 2, 2])


def test_voting_short_volume_is_padded_and_cropped() -> None:
    model = ThresholdModel()
    rng = np.random.default_rng(0)
    image = rng.random((1, 5, 9, 7)).astype(np.float32)
    labels, votes = predict_subvolumes_voting(model, image, 2, window=16, overlap=4)
    assert labels.shape == (5, 9, 7) and votes.shape == (2, 5, 9, 7)
    np.testing.assert_array_equal(labels, image[0] > 0.5)
    assert (votes.sum(0) == 1).all()


@pytest.mark.parametrize("shape", [(37, 23, 19), (16, 16, 16), (5, 9, 11)])
def test_threshold_round_trip_all_paths_exact_shape(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((1, *shape)).astype(np.float32)
    truth = image[0] > 0.5
    model = ThresholdModel(divisible=4)
    labels, votes = predict_subvolumes_voting(model, image, 2, window=16, overlap=4, batch_size=2, divisible_by=4)
    assert labels.shape == shape
    np.testing.assert_array_equal(labels, truth)
    labels_t, _ = predict_subvolumes_voting(
        model, image, 2, window=16, overlap=4, roi_hw=(8, 12), divisible_by=4, return_probs=True
    )
    np.testing.assert_array_equal(labels_t, truth)
    probs = predict_sliding_window(model, image, 2, roi_size=(12, 12, 8), overlap=0.25, divisible_by=4)
    assert probs.shape == (2, *shape) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs.argmax(0), truth)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    probs2d = predict_slices_2d(model, image, 2, batch_size=4, divisible_by=4)
    assert probs2d.shape == (2, *shape)
    np.testing.assert_array_equal(probs2d.argmax(0), truth)
    for method, opts in [
        ("voting", {"window": 16, "overlap": 4, "divisible_by": 4}),
        ("sliding_window", {"roi_size": (8, 8, 8), "divisible_by": 4}),
        ("slices2d", {"batch_size": 3, "divisible_by": 4}),
    ]:
        for tta in (False, True):
            lab, pr = predict_volume(model, image, 2, method=method, tta=tta, **opts)
            assert lab.shape == shape and pr.shape == (2, *shape), (method, tta)
            np.testing.assert_array_equal(lab, truth, err_msg=f"{method} tta={tta}")


def test_predict_volume_accepts_3d_array_and_rejects_bad_options() -> None:
    image = np.random.default_rng(2).random((7, 8, 9)).astype(np.float32)
    lab, pr = predict_volume(ThresholdModel(), image, 2, method="slices2d")
    np.testing.assert_array_equal(lab, image > 0.5)
    with pytest.raises(ValueError, match="unknown options"):
        predict_volume(ThresholdModel(), image, 2, method="slices2d", roi_size=(4, 4, 4))
    with pytest.raises(ValueError, match="roi_size"):
        predict_volume(ThresholdModel(), image, 2, method="sliding_window")
    with pytest.raises(ValueError, match="method"):
        predict_volume(ThresholdModel(), image, 2, method="nope")
    with pytest.raises(ValueError, match="n_classes"):
        predict_slices_2d(ThresholdModel(), image, 3)


class SymmetricConvNet(nn.Module):
    """Random 3D conv net whose kernels are symmetric under H and W flips (hence flip-equivariant)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv3d(1, 4, 3, padding=1)
        self.c2 = nn.Conv3d(4, 3, 3, padding=1)
        with torch.no_grad():
            for c in (self.c1, self.c2):
                w = c.weight
                c.weight.copy_((w + w.flip(3) + w.flip(4) + w.flip(3, 4)) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)))


def test_tta_with_flip_equivariant_model_is_unchanged() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(1, 9, 13, 11)).astype(np.float32)
    model = SymmetricConvNet()
    for method, opts in [("slices2d", {}), ("sliding_window", {"roi_size": (9, 13, 11)})]:
        if method == "slices2d":
            model2d = nn.Sequential()  # a flip-equivariant 2D model: symmetric 2D conv
            conv = nn.Conv2d(1, 3, 3, padding=1)
            with torch.no_grad():
                w = conv.weight
                conv.weight.copy_((w + w.flip(2) + w.flip(3) + w.flip(2, 3)) / 4)
            model2d.append(conv)
            m: nn.Module = model2d
        else:
            m = model
        lab0, p0 = predict_volume(m, image, 3, method=method, tta=False, **opts)
        lab1, p1 = predict_volume(m, image, 3, method=method, tta=True, **opts)
        np.testing.assert_allclose(p1, p0, atol=1e-5)
        np.testing.assert_array_equal(lab1, lab0)
    lab0, _ = predict_volume(model, image, 3, method="voting", window=4, overlap=1)
    lab1, _ = predict_volume(model, image, 3, method="voting", tta=True, window=4, overlap=1)
    np.testing.assert_array_equal(lab1, lab0)


def test_flip_tta_flips_back_and_calls_each_flip() -> None:
    calls: list[np.ndarray] = []

    def predict_fn(x: np.ndarray) -> np.ndarray:
        calls.append(x)
        return x * 2.0  # position-dependent: only correct if each flip is undone

    image = np.random.default_rng(4).random((2, 3, 4, 5)).astype(np.float32)
    out = flip_tta(predict_fn, image)
    assert len(calls) == 4
    np.testing.assert_array_equal(calls[1], image[:, :, ::-1])
    np.testing.assert_array_equal(calls[3], image[:, :, ::-1, ::-1])
    np.testing.assert_allclose(out, image * 2.0, rtol=1e-6)
    with pytest.raises(ValueError):
        flip_tta(predict_fn, image, axes=((0,),))


def test_model_train_mode_restored() -> None:
    model = ThresholdModel()
    model.train()
    predict_slices_2d(model, np.zeros((1, 2, 4, 4), np.float32), 2)
    assert model.training
