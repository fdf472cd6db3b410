"""Video reading: clips and frame folders come back as (T, H, W) grayscale with the BT.601 luma weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctdl.errors import InputError
from ctdl.io.video import clip_to_volume, is_clip, read_clip, read_frames_folder, read_video, to_gray, write_video


def test_to_gray_luma_weights() -> None:
    rgb = np.zeros((1, 1, 3, 3), np.uint8)
    rgb[0, 0, 0] = (255, 0, 0)
    rgb[0, 0, 1] = (0, 255, 0)
    rgb[0, 0, 2] = (0, 0, 255)
    g = to_gray(rgb)
    assert g.shape == (1, 1, 3)
    assert g[0, 0].tolist() == pytest.approx([0.299 * 255, 0.587 * 255, 0.114 * 255], rel=1e-5)
    with pytest.raises(InputError, match="expected"):
        to_gray(np.zeros((2, 3)))


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_write_read_roundtrip(tmp_path: Path, ext: str) -> None:
    frames = np.full((12, 32, 48), 40, np.uint8)
    for t in range(12):
        frames[t, 8:24, 2 + 3 * t: 10 + 3 * t] = 220  # a bar moving right
    path = write_video(frames, tmp_path / f"clip{ext}")
    assert is_clip(path)
    out = read_video(path)
    assert out.shape == (12, 32, 48) and out.dtype == np.float32
    assert np.abs(out - frames).mean() < 6  # lossy codecs: close, not exact
    assert out[5, 16, 2 + 15 + 3] > 180 and out[5, 16, 45] < 80  # the bar is where it was drawn
    sub = read_video(path, max_frames=4)
    assert sub.shape[0] == 4
    assert np.abs(sub[-1] - out[-1]).mean() < 1e-6  # evenly spaced frames include the last


def test_frames_folder_and_zoom(tmp_path: Path) -> None:
    import imageio.v3 as iio

    folder = tmp_path / "clip"
    folder.mkdir()
    for t in range(5):
        iio.imwrite(folder / f"f{t:02d}.png", np.full((8, 8, 3), 50 * t, np.uint8))
    assert is_clip(folder)
    arr = read_frames_folder(folder)
    assert arr.shape == (5, 8, 8) and arr[:, 0, 0].tolist() == pytest.approx([0, 50, 100, 150, 200], abs=1e-3)
    assert read_clip(folder, max_frames=3)[:, 0, 0].tolist() == pytest.approx([0, 100, 200], abs=1e-3)
    vol = clip_to_volume(arr, (9, 4, 4), order=1)  # frames become slices; linear in time stays linear
    assert vol.shape == (9, 4, 4)
    assert vol[:, 0, 0].tolist() == pytest.approx(np.linspace(0, 200, 9).tolist(), abs=1e-3)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "missing.avi")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(InputError, match="bad.mp4: cannot decode"):
        read_video(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no frame images"):
        read_frames_folder(tmp_path / "empty")
