"""TB phantoms and moving-shape videos: deterministic, anatomically plausible, patterns that differ as described."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ctdl.data.synthetic_tb import (
    TB_CLASSES,
    VIDEO_CLASSES,
    moving_shape_clip,
    tb_class_counts,
    tb_phantom,
    write_tb_dataset,
    write_video_dataset,
)

SHAPE = (32, 80, 80)


def _pattern(label: int, seed: int) -> np.ndarray:
    v, pattern = tb_phantom(label, SHAPE, seed=seed, noise_hu=0.0, return_pattern=True)
    assert np.array_equal(v, tb_phantom(label, SHAPE, seed=seed, noise_hu=0.0))  # deterministic for a seed
    return pattern


def test_anatomy_and_value_ranges() -> None:
    v = tb_phantom(1, SHAPE, seed=3)
    assert v.shape == SHAPE and v.dtype == np.float32
    assert v.min() >= -1024 and v.max() <= 3071
    assert np.median(v[:, 0, 0]) < -900  # air outside the body
    mid = v[SHAPE[0] // 2]
    # lungs centred near x = +-0.4, y = -0.06 (normalized) -> columns 24 and 55, row 37; spine at y = 0.5 -> row 59
    assert np.median(mid[30:45, 18:30]) < -600 and np.median(mid[30:45, 49:61]) < -600
    assert np.median(mid[59, 38:42]) > 200
    with pytest.raises(ValueError, match="label"):
        tb_phantom(5)


def test_patterns_differ_as_described() -> None:
    def blobs(pat: np.ndarray, thr: float) -> int:
        return int(ndi.label(pat > thr)[1])

    for s in range(3):
        inf, foc, tub, mil, fib = (_pattern(k, s) for k in range(5))
        assert blobs(mil, 150) >= 30  # miliary: many tiny nodules
        assert 1 <= blobs(foc, 300) <= 5  # focal: a few nodules
        assert blobs(tub, 300) == 1  # tuberculoma: one mass ...
        assert (tub > 300).sum() > 3 * np.bincount(ndi.label(foc > 300)[0].ravel())[1:].max()  # ... bigger than a focal nodule
        assert (fib < -100).sum() > 0 and (fib > 200).sum() > (fib < -100).sum() / 4  # air cavity + wall/strands
        cavity = ndi.binary_dilation(fib < -100, iterations=2) & ~(fib < -100)
        assert (fib[cavity] > 0).mean() > 0.5  # the air is walled in
        assert (inf < -100).sum() == 0 and (mil < -100).sum() == 0  # no air cavities in other patterns
        # infiltrative: ill-defined (many voxels of small HU change), unlike a sharp tuberculoma
        soft = ((inf > 20) & (inf < 150)).sum() / max(1, (inf > 20).sum())
        sharp = ((tub > 20) & (tub < 150)).sum() / max(1, (tub > 20).sum())
        assert soft > 0.2 and sharp < soft / 2


def test_dataset_files_and_counts(tmp_path: Path) -> None:
    counts = tb_class_counts(4)
    assert counts[0] > counts[2] and len(counts) == 5 and min(counts) >= 2
    manifest = write_tb_dataset(tmp_path / "tb", per_class=4, shape=(12, 40, 40), seed=0, progress=False)
    rows = manifest.read_text().splitlines()
    assert rows[0] == "path,label" and len(rows) - 1 == sum(counts)
    from ctdl.io import read_volume

    first = read_volume(manifest.parent / rows[1].split(",")[0])
    assert first.shape[1:] == (40, 40) and 9 <= first.shape[0] <= 15  # depth varies +-25 %
    mtime = manifest.stat().st_mtime
    assert write_tb_dataset(tmp_path / "tb", per_class=4, shape=(12, 40, 40), seed=0, progress=False) == manifest
    assert manifest.stat().st_mtime == mtime  # reused, not rewritten


def test_moving_shapes() -> None:
    clip = moving_shape_clip(VIDEO_CLASSES.index("disc_right"), frames=10, size=48, seed=0)
    assert clip.shape == (10, 48, 48) and clip.dtype == np.uint8
    bright = clip > 130
    x0 = np.argwhere(bright[0])[:, 1].mean()
    x9 = np.argwhere(bright[-1])[:, 1].mean()
    assert x9 > x0 + 5  # moves right
    up = moving_shape_clip(VIDEO_CLASSES.index("square_up"), frames=10, size=48, seed=0) > 130
    assert np.argwhere(up[-1])[:, 0].mean() < np.argwhere(up[0])[:, 0].mean() - 5  # moves up
    assert len(VIDEO_CLASSES) == 10 and len(TB_CLASSES) == 5


def test_video_dataset_layout(tmp_path: Path) -> None:
    root = write_video_dataset(tmp_path / "v", per_class=1, frames=6, size=32, seed=0, progress=False)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted(VIDEO_CLASSES)
    assert all(len(list((root / c).glob("*.avi"))) == 1 for c in folders)
