"""Demo data for the classification path: chest CT phantoms with five TB lesion patterns, and moving-shape videos.

**TB phantoms** (HU, (D, H, W)): air outside an elliptic body of soft tissue, two lungs (-850 HU) with vessel-like
dots, a spine, Gaussian noise; then one pattern that mimics a TB type of ImageCLEF 2021 TBT:

0. infiltrative: diffuse ill-defined opacities (large blurred ground-glass patches);
1. focal: a few (3-6) small nodules clustered in one region;
2. tuberculoma: one round well-defined mass;
3. miliary: many (150-250) tiny nodules spread through both lungs;
4. fibro-cavernous: a thick-walled air cavity with fibrotic strands running from it.

The appearance overlaps on purpose so the task is not trivial: sizes, contrasts and positions are random, a fifth
of the phantoms of every class get a stray small nodule or a faint opacity, lung shape and body size vary, and the
depth varies by +-25 % (the spline zoom of the task has real work to do). Class frequencies are unequal, in the
order of the real data (infiltrative most common), so class weights matter.

**Moving-shape videos**: 10 classes = {disc, square} x {right, left, down, up, diagonal}, on a noisy background with
random size, brightness, start and speed, written as .avi files in a folder per class (the layout of UCF50).
Hand-written because no library renders either; both are seeded and deterministic.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

TB_CLASSES = ("infiltrative", "focal", "tuberculoma", "miliary", "fibro_cavernous")
# relative class frequencies (ImageCLEF 2021 TBT train: 420 / 226 / 101 / 100 / 70 of 917, softened)
TB_PROPORTIONS = (1.5, 1.2, 0.7, 0.8, 0.8)
VIDEO_CLASSES = tuple(f"{s}_{m}" for s in ("disc", "square") for m in ("right", "left", "down", "up", "diagonal"))


def _grid(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalized coordinates: z in [-0.8, 0.8] (the chest box is 0.8 as deep as wide), y, x in [-1, 1]."""
    d, h, w = shape
    z = np.linspace(-0.8, 0.8, d, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, h, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, None, :]
    return z, y, x


def _ball(vol: np.ndarray, center: Sequence[float], radius: float, value: float, edge: float = 0.0,
          mask: np.ndarray | None = None, mode: str = "add") -> None:
    """Add (or set) a ball of ``radius`` (normalized units) at ``center`` (z, y, x normalized), on a local box.

    ``edge`` > 0 blurs the boundary over that many normalized units (ill-defined); 0 is a sharp edge.
    """
    d, h, w = vol.shape
    scale = np.array([(d - 1) / 1.6, (h - 1) / 2.0, (w - 1) / 2.0])
    c = (np.asarray(center) + np.array([0.8, 1.0, 1.0])) * scale
    r = (radius + 2 * edge) * scale
    lo = np.maximum(np.floor(c - r - 1).astype(int), 0)
    hi = np.minimum(np.ceil(c + r + 2).astype(int), vol.shape)
    if np.any(hi <= lo):
        return
    zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    dist = np.sqrt(((zz - c[0]) / scale[0]) ** 2 + ((yy - c[1]) / scale[1]) ** 2 + ((xx - c[2]) / scale[2]) ** 2)
    if edge > 0:
        weight = np.clip(0.5 - (dist - radius) / (2 * edge), 0.0, 1.0)
    else:
        # partial-volume weight over about one voxel so tiny balls are not lost between voxel centres
        weight = np.clip(radius * scale.min() - dist * scale.min() + 0.5, 0.0, 1.0)
    if mask is not None:
        weight = weight * mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    box = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if mode == "add":
        box += (value * weight).astype(vol.dtype)
    else:  # "set": blend towards value
        box[...] = box * (1 - weight) + value * weight


def _lung_point(rng: np.random.Generator, lungs: list[tuple[np.ndarray, np.ndarray]], side: int | None = None,
                margin: float = 0.75) -> np.ndarray:
    """A random point inside a lung ellipsoid (``margin`` < 1 keeps it away from the wall)."""
    centre, radii = lungs[side if side is not None else int(rng.integers(2))]
    while True:
        u = rng.uniform(-1, 1, 3)
        if (u**2).sum() <= 1:
            return centre + u * radii * margin


def tb_phantom(label: int, shape: Sequence[int] = (40, 96, 96), seed: int = 0, noise_hu: float = 40.0,
               return_pattern: bool = False) -> Any:
    """One chest phantom (float32 HU, shape (D, H, W)) with TB pattern ``label`` (index into TB_CLASSES).

    ``return_pattern=True`` also returns the HU change the class pattern alone made (before stray findings,
    blur and noise), for tests and figures.
    """
    if not 0 <= label < len(TB_CLASSES):
        raise ValueError(f"label must lie in [0, {len(TB_CLASSES)}), got {label}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    z, y, x = _grid(shape)
    vol = np.full(shape, -1000.0, np.float32)
    bx, by = rng.uniform(0.82, 0.95), rng.uniform(0.62, 0.75)
    body = (x / bx) ** 2 + (y / by) ** 2 <= 1.0
    vol[np.broadcast_to(body, shape)] = 40.0
    lungs = []
    lung = np.zeros(shape, bool)
    for sx in (-1, 1):
        centre = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.12, 0.0), sx * rng.uniform(0.36, 0.44)])
        radii = np.array([rng.uniform(0.6, 0.72), rng.uniform(0.42, 0.5), rng.uniform(0.26, 0.32)])
        lungs.append((centre, radii))
        lung |= ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1
    vol[lung] = -850.0
    spine = ((x / 0.1) ** 2 + ((y - 0.5) / 0.1) ** 2 <= 1.0) & body
    vol[np.broadcast_to(spine, shape)] = 400.0
    lung_f = lung.astype(np.float32)
    for _ in range(int(rng.integers(8, 16))):  # vessels: small faint dots everywhere (shared by all classes)
        _ball(vol, _lung_point(rng, lungs, margin=0.9), rng.uniform(0.012, 0.018), rng.uniform(150, 300), mask=lung_f)

    def nodule(centre: np.ndarray, radius: float, value: float, edge: float = 0.0) -> None:
        _ball(vol, centre, radius, value, edge=edge, mask=lung_f)

    before = vol.copy()
    if label == 0:  # infiltrative: large ill-defined ground-glass patches
        side = int(rng.integers(2))
        for _ in range(int(rng.integers(3, 6))):
            s = side if rng.random() < 0.7 else 1 - side
            nodule(_lung_point(rng, lungs, s, 0.6), rng.uniform(0.18, 0.27), rng.uniform(300, 450), edge=rng.uniform(0.05, 0.09))
    elif label == 1:  # focal: a few small nodules clustered in one region
        centre = _lung_point(rng, lungs, margin=0.6)
        for _ in range(int(rng.integers(3, 7))):
            c = centre + rng.normal(0, 0.1, 3)
            nodule(c, rng.uniform(0.055, 0.085), rng.uniform(650, 850), edge=rng.uniform(0.0, 0.015))
    elif label == 2:  # tuberculoma: one round well-defined mass
        nodule(_lung_point(rng, lungs, margin=0.5), rng.uniform(0.16, 0.22), rng.uniform(850, 950))
    elif label == 3:  # miliary: many tiny nodules through both lungs
        for _ in range(int(rng.integers(150, 250))):
            nodule(_lung_point(rng, lungs, margin=0.95), rng.uniform(0.03, 0.045), rng.uniform(500, 800))
    else:  # fibro-cavernous: thick-walled air cavity plus fibrotic strands
        side = int(rng.integers(2))
        c = _lung_point(rng, lungs, side, 0.45)
        r_out = rng.uniform(0.16, 0.22)
        wall = rng.uniform(0.05, 0.07)
        _ball(vol, c, r_out, 60.0, mode="set")
        _ball(vol, c, r_out - wall, -1000.0, mode="set")
        for _ in range(int(rng.integers(2, 5))):  # strands: chains of small dots towards the lung wall
            direction = rng.normal(0, 1, 3)
            direction /= np.linalg.norm(direction)
            length = rng.uniform(0.15, 0.3)
            for t in np.linspace(r_out, r_out + length, 10):
                nodule(c + direction * t, 0.018, rng.uniform(350, 550))
    pattern = vol - before
    # overlap between classes: stray findings any class may show
    if rng.random() < 0.2:
        nodule(_lung_point(rng, lungs), rng.uniform(0.03, 0.05), rng.uniform(400, 700))
    if rng.random() < 0.2:
        nodule(_lung_point(rng, lungs, margin=0.6), rng.uniform(0.08, 0.12), rng.uniform(100, 200), edge=0.06)
    vol = ndi.gaussian_filter(vol, 0.5)  # scanner blur
    vol += rng.normal(0, noise_hu, shape).astype(np.float32)
    vol = np.clip(vol, -1024, 3071).astype(np.float32)
    return (vol, pattern) if return_pattern else vol


def tb_class_counts(per_class: int, proportions: Sequence[float] = TB_PROPORTIONS) -> list[int]:
    """Samples per class: ``per_class`` on average, distributed by ``proportions`` (at least 2 each)."""
    p = np.asarray(proportions, dtype=np.float64)
    p = p / p.sum() * len(p)
    return [max(2, int(round(per_class * v))) for v in p]


def write_tb_dataset(root: str | Path, per_class: int = 20, shape: Sequence[int] = (40, 96, 96), seed: int = 0,
                     noise_hu: float = 40.0, progress: bool = True) -> Path:
    """Write phantoms as NIfTI files plus ``manifest.csv`` (path,label); returns the manifest (reused if complete)."""
    from ctdl.io import Volume, write_volume
    from ctdl.io.atomic import atomic_write_text

    root = Path(root)
    manifest = root / "manifest.csv"
    spec = {"per_class": per_class, "shape": list(shape), "seed": seed, "noise_hu": noise_hu, "version": 3}
    if manifest.exists() and (root / "spec.json").exists() and json.loads((root / "spec.json").read_text()) == spec:
        return manifest
    rng = np.random.default_rng(seed)
    jobs = []
    for label, n in enumerate(tb_class_counts(per_class)):
        for i in range(n):
            jobs.append((f"tb_{TB_CLASSES[label]}_{i:03d}", label, int(rng.integers(2**31))))
    rows = []
    for cid, label, s in tqdm(jobs, desc="TB phantoms", disable=None if progress else True, leave=False):
        depth = int(round(shape[0] * np.random.default_rng(s + 1).uniform(0.75, 1.25)))
        arr = tb_phantom(label, (depth, shape[1], shape[2]), seed=s, noise_hu=noise_hu)
        path = root / "volumes" / f"{cid}.nii.gz"
        write_volume(Volume.from_array(np.rint(arr).astype(np.int16), spacing=(5.0 * shape[0] / depth, 3.5, 3.5)), path)
        rows.append((f"volumes/{cid}.nii.gz", TB_CLASSES[label]))
    lines = ["path,label"] + [f"{p},{lab}" for p, lab in rows]
    atomic_write_text(manifest, "\n".join(lines) + "\n")
    atomic_write_text(root / "spec.json", json.dumps(spec))
    return manifest


def moving_shape_clip(label: int, frames: int = 24, size: int = 64, seed: int = 0) -> np.ndarray:
    """One (T, H, W) uint8 clip of class ``label`` (index into VIDEO_CLASSES)."""
    if not 0 <= label < len(VIDEO_CLASSES):
        raise ValueError(f"label must lie in [0, {len(VIDEO_CLASSES)}), got {label}")
    rng = np.random.default_rng(seed)
    shape_kind, motion = VIDEO_CLASSES[label].split("_")
    r = rng.uniform(0.08, 0.16) * size
    speed = rng.uniform(0.5, 1.0) * (size - 2 * r) / max(1, frames - 1)
    direction = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0), "diagonal": (0.7071, 0.7071)}[motion]
    start = np.array([size / 2, size / 2]) - np.array(direction) * speed * (frames - 1) / 2 + rng.normal(0, 2, 2)
    bg = rng.uniform(30, 90)
    fg = rng.uniform(160, 240)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((frames, size, size), np.float32)
    for t in range(frames):
        cy, cx = start + np.array(direction) * speed * t
        if shape_kind == "disc":
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            inside = (np.abs(yy - cy) <= r * 0.89) & (np.abs(xx - cx) <= r * 0.89)  # same area as the disc
        out[t] = np.where(inside, fg, bg)
    out += rng.normal(0, 12, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_video_dataset(root: str | Path, per_class: int = 8, frames: int = 24, size: int = 64, seed: int = 0,
                        progress: bool = True) -> Path:
    """Write ``root/<class>/<clip>.avi`` for the 10 moving-shape classes; returns root (reused if complete)."""
    from ctdl.io.atomic import atomic_write_text
    from ctdl.io.video import write_video

    root = Path(root)
    spec = {"per_class": per_class, "frames": frames, "size": size, "seed": seed, "version": 1}
    if (root / "spec.json").exists() and json.loads((root / "spec.json").read_text()) == spec:
        return root
    rng = np.random.default_rng(seed)
    jobs = [(label, i, int(rng.integers(2**31))) for label in range(len(VIDEO_CLASSES)) for i in range(per_class)]
    for label, i, s in tqdm(jobs, desc="videos", disable=None if progress else True, leave=False):
        write_video(moving_shape_clip(label, frames, size, s), root / VIDEO_CLASSES[label] / f"clip_{i:03d}.avi")
    atomic_write_text(root / "spec.json", json.dumps(spec))
    return root


def read_manifest_rows(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


__all__ = ["TB_CLASSES", "VIDEO_CLASSES", "moving_shape_clip", "tb_class_counts", "tb_phantom", "write_tb_dataset",
           "write_video_dataset"]
