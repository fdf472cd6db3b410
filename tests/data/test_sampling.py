"""Tests for ctdl.data.sampling: thesis blocks, patch oversampling, slices, determinism."""

from __future__ import annotations

import numpy as np
import torch

from ctdl.config.schema import SamplingConfig
from ctdl.data.sampling import PreparedCase, Sampler, block_starts, crop_patch, inside_center


def _case(seed: int = 0) -> PreparedCase:
    rng = np.random.default_rng(seed)
    lab = np.zeros((20, 24, 24), np.uint8)
    lab[5:12, 6:14, 6:14] = 1
    lab[8:10, 9:11, 9:11] = 2
    img = rng.normal(size=(1, 20, 24, 24)).astype(np.float32) + lab[None]
    return PreparedCase("c", img, lab)


def test_block_starts_thesis_example() -> None:
    # thesis: 70 slices, blocks of 32 with overlap 12 -> [0,32), [20,52), [38,70)
    assert block_starts(70, 32, 12) == [0, 20, 38]
    assert block_starts(32, 32, 12) == [0]
    assert block_starts(31, 32, 12) == []


def test_crop_patch_pads_outside() -> None:
    a = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    p = crop_patch(a, (0, 0, 0), (2, 2, 2), fill=-1)
    assert p.shape == (2, 2, 2)
    assert p[0, 0, 0] == -1 and p[1, 1, 1] == a[0, 0, 0]


def test_inside_center_rule() -> None:
    # axis 0: patch 4 in 20 -> centre clamped to [2, 18]; axis 1: patch 30 > 24 -> left as drawn
    assert inside_center((0, 1, 23), (4, 30, 6), (20, 24, 24)) == (2, 1, 21)
    assert inside_center((19, 12, 3), (4, 30, 6), (20, 24, 24)) == (18, 12, 3)
    # odd size 5: crop_patch takes [c - 2, c + 3); the highest valid centre is n - 3
    assert inside_center((9,), (5,), (10,)) == (7,)


def test_patch_inside_never_pads_when_the_volume_is_big_enough() -> None:
    case = _case()
    case.image -= case.image.min() - 1.0  # every voxel >= 1, so padding (the minimum) is 1 only by chance
    cfg = SamplingConfig(mode="patch3d", patch_size=(8, 24, 16), samples_per_volume=20, class_ratios=[1, 1, 1],
                         patch_inside=True)
    s = Sampler([case], cfg, batch_size=5, seed=3)
    n = 0
    for x, _ in s.epoch(0):
        for img in x[:, 0].numpy():
            # each patch is a contiguous window of the volume: full 24 rows, 8 slices and 16 columns inside
            hits = [(z, w) for z in range(13) for w in range(9)
                    if np.array_equal(img, case.image[0, z : z + 8, :, w : w + 16])]
            assert hits, "patch is not a window of the volume"
            n += 1
    assert n == 20
    padded = Sampler([case], cfg.model_copy(update={"patch_inside": False}), batch_size=5, seed=3)
    lowest = float(case.image.min())  # one voxel of the volume; more than one in a patch means padding
    assert any(((x[:, 0] == lowest).flatten(1).sum(1) > 1).any() for x, _ in padded.epoch(0))


def test_patch_oversampling_centres_on_class() -> None:
    cfg = SamplingConfig(mode="patch3d", patch_size=(4, 6, 6), samples_per_volume=10, class_ratios=[0, 0, 1])
    s = Sampler([_case()], cfg, batch_size=5, seed=1)
    batches = list(s.epoch(0))
    assert len(batches) == 2
    for x, y in batches:
        assert x.shape == (5, 1, 4, 6, 6) and y.shape == (5, 4, 6, 6)
        assert (y[:, 2, 3, 3] == 2).all()  # every patch centre is a tumour voxel


def test_epochs_are_deterministic_and_differ() -> None:
    cfg = SamplingConfig(mode="patch3d", patch_size=(4, 8, 8), samples_per_volume=4)
    s = Sampler([_case(), _case(1)], cfg, batch_size=2, seed=7)
    a = [x for x, _ in s.epoch(3)]
    b = [x for x, _ in s.epoch(3)]
    c = [x for x, _ in s.epoch(4)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_slices2d_every_slice_and_duplicate_tumour() -> None:
    cfg = SamplingConfig(mode="slices2d", tumor_duplication=4)
    s = Sampler([_case()], cfg, batch_size=4, seed=0)
    # all 20 slices (background ones too: preprocessing.remove_background_slices drops them beforehand),
    # 2 tumour slices (8, 9) duplicated 4 times -> 20 + 8
    assert len(s.items) == 28
    assert sorted({k for _, k in s.items}) == list(range(20))
    assert sum(k in (8, 9) for _, k in s.items) == 10
    x, y = next(iter(s.epoch(0)))
    assert x.shape == (4, 1, 24, 24) and y.shape == (4, 24, 24)


def test_blocks3d_items() -> None:
    cfg = SamplingConfig(mode="blocks3d", block_slices=8, block_overlap=2, tumor_duplication=1)
    s = Sampler([_case()], cfg, batch_size=1, seed=0)
    starts = block_starts(20, 8, 2)
    assert starts == [0, 6, 12]
    tum = [st for st in starts if (s.cases[0].label[st : st + 8] == 2).any()]
    assert len(s.items) == len(starts) + len(tum)
    x, y = next(iter(s.epoch(0)))
    assert x.shape == (1, 1, 8, 24, 24)
