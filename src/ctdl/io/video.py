"""Video clips and frame folders as (T, H, W) grayscale arrays (ViPTT-Net's video pretraining input).

Decoding goes through **imageio with its ffmpeg plugin (imageio-ffmpeg)**: imageio is already a dependency of
scikit-image here, imageio-ffmpeg ships a static ffmpeg binary in its wheel (no system ffmpeg, no compiler),
and it reads both .avi (UCF50's container) and .mp4 through one call. PyAV would add a large binary wheel for
the same job; OpenCV-headless brings a second image stack we do not otherwise need.

Frames are converted to grayscale with the ITU-R BT.601 luma weights (0.299 R + 0.587 G + 0.114 B, the rule of
OpenCV's and Keras' rgb-to-gray, which the authors used) and returned as float32 in 0..255; the classification
task then windows and normalizes video and CT alike (the authors' code left frames at raw 0..255).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ctdl.errors import InputError

VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".webm", ".gif")
FRAME_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(T, H, W[, 3|4]) frames -> (T, H, W) float32 grayscale (BT.601 luma; alpha dropped)."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        return arr.astype(np.float32)
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        return (arr[..., :3].astype(np.float32) @ LUMA).astype(np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        return arr[..., 0].astype(np.float32)
    raise InputError(f"frames: expected (T, H, W) or (T, H, W, 3), got shape {arr.shape}")


def _pick(n: int, max_frames: int | None) -> np.ndarray:
    """Indices of ``max_frames`` frames spread evenly over ``n`` (all when None or n <= max_frames)."""
    if max_frames is None or n <= max_frames:
        return np.arange(n)
    return np.linspace(0, n - 1, max_frames).round().astype(int)


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode a clip to (T, H, W) float32 grayscale in 0..255; ``max_frames`` keeps evenly spaced frames."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: video file not found")
    try:
        frames = [to_gray(np.asarray(f)[None])[0] for f in iio.imiter(path, extension=path.suffix.lower())]
    except Exception as exc:  # imageio raises plugin-specific errors; name the file
        raise InputError(f"{path}: cannot decode video ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise InputError(f"{path}: video has no frames")
    stack = np.stack(frames)
    return stack[_pick(len(stack), max_frames)]


def read_frames_folder(folder: str | Path, max_frames: int | None = None) -> np.ndarray:
    """A folder of frame images (sorted by name) as (T, H, W) float32 grayscale."""
    import imageio.v3 as iio

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS) if folder.is_dir() else []
    if not files:
        raise InputError(f"{folder}: no frame images ({', '.join(FRAME_EXTS)}) found")
    files = [files[i] for i in _pick(len(files), max_frames)]
    frames = [to_gray(np.asarray(iio.imread(f))[None])[0] for f in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"{folder}: frames differ in size {sorted(shapes)}")
    return np.stack(frames)


def read_clip(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """A video file or a folder of frames as (T, H, W) float32 grayscale."""
    path = Path(path)
    return read_frames_folder(path, max_frames) if path.is_dir() else read_video(path, max_frames)


def is_clip(path: Path) -> bool:
    """A video file, or a folder holding frame images."""
    if path.is_file():
        return path.suffix.lower() in VIDEO_EXTS
    return path.is_dir() and any(p.suffix.lower() in FRAME_EXTS for p in path.iterdir())


def write_video(frames: np.ndarray, path: str | Path, fps: int = 10) -> Path:
    """Write (T, H, W) or (T, H, W, 3) uint8-range frames as a clip (codec from the extension), atomically."""
    import imageio.v3 as iio

    from ctdl.io.atomic import atomic_path

    path = Path(path)
    arr = np.clip(np.asarray(frames), 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    kwargs: dict[str, object] = {"fps": fps, "extension": path.suffix.lower()}
    if path.suffix.lower() == ".avi":
        kwargs["codec"] = "mjpeg"  # intra-only, no chroma subsampling surprises; frames decode back closely
        kwargs["quality"] = 10
    else:
        kwargs["macro_block_size"] = 1
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, **kwargs)
    return path


def clip_to_volume(frames: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resize a (T, H, W) clip to (D, H, W) = ``shape`` (frames become slices) by spline zoom of ``order``."""
    from ctdl.data.preprocess import zoom_to_shape

    return np.asarray(zoom_to_shape(np.asarray(frames, dtype=np.float32), tuple(shape), order=order), dtype=np.float32)


__all__ = ["FRAME_EXTS", "VIDEO_EXTS", "clip_to_volume", "is_clip", "read_clip", "read_frames_folder", "read_video",
           "to_gray", "write_video"]
