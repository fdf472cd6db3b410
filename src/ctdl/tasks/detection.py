"""Detection task (SSD on 2D slices): data -> boxes -> SSD -> SSD loss -> trainer, then decoding, mAP / FROC
evaluation on the held-out split, and box lists (CSV + JSON) per case.

Data: CT-like phantoms or KiTS19-layout cases (boxes from the label maps: one box per connected component
per class per slice along ``detection.slice_axis``), or DLAE BBD HDF5 files (``data.format: hdf5``).
Training reuses :class:`ctdl.engine.trainer.Trainer`, so resume, checkpoints, history and TensorBoard work
as for segmentation; a batch is ``(images, [boxes])`` (see :mod:`ctdl.detection.data`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ctdl.config.load import config_from_dict, config_to_dict, save_config
from ctdl.config.schema import ExperimentConfig
from ctdl.detection.anchors import AnchorSpec
from ctdl.detection.data import BoxLoader, BoxSample, samples_from_dlae, slices_from_volume
from ctdl.errors import ConfigError, InputError
from ctdl.io.atomic import atomic_path, atomic_write_text

log = logging.getLogger("ctdl")


# -- config helpers ----------------------------------------------------------------------------
def _detection_cfg(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with detection defaults where segmentation ones were left (monitor val_map50)."""
    cfg = cfg.model_copy(deep=True)
    if cfg.training.monitor == "val_dice_mean":
        cfg.training.monitor = "val_map50"
        cfg.training.monitor_mode = "max"
    return cfg


def build_model(cfg: ExperimentConfig) -> torch.nn.Module:
    """The detector named by ``detection.backbone`` with the config's anchors and class count."""
    from ctdl.models.ssd import build_detector

    if cfg.n_classes < 2:
        raise ConfigError("data.classes: detection needs background plus at least one object class")
    in_ch = cfg.model.in_channels or cfg.preprocessing.repeat_channels
    return build_detector(cfg.detection.backbone, cfg.n_classes - 1, AnchorSpec.from_config(cfg.detection),
                          in_channels=in_ch, **dict(cfg.model.params))


def build_loss(cfg: ExperimentConfig) -> torch.nn.Module:
    """The registered ``ssd`` loss with the detection section's matching and mining settings."""
    from ctdl.losses.registry import create_loss

    d = cfg.detection
    params = {"neg_pos_ratio": d.neg_pos_ratio, "alpha": d.alpha, "n_neg_min": d.n_neg_min,
              "pos_iou_threshold": d.pos_iou_threshold, "neg_iou_limit": d.neg_iou_limit, "variances": list(d.variances)}
    params.update(cfg.loss.params)
    return create_loss("ssd", **params)


# -- data ------------------------------------------------------------------------------------------
def _volume_samples(cfg: ExperimentConfig, cases: list[Any], pre: Any, progress: bool, desc: str) -> list[BoxSample]:
    from ctdl.data.datasets import load_case

    from ctdl.data.pipeline import GeometryCache
    from ctdl.tasks.segmentation import cache_dir

    d = cfg.detection
    cache = GeometryCache(cache_dir(cfg) / "geometry")
    out: list[BoxSample] = []
    for case in tqdm(cases, desc=desc, leave=False, disable=None if progress else True):
        image, label = load_case(case, cfg.n_classes)
        prepared, _ = pre.prepare(case.case_id, image, label, cache, use_label_roi=False)
        out.extend(slices_from_volume(prepared.image, prepared.label, case.case_id, cfg.n_classes, tuple(d.input_size),
                                      d.slice_axis, d.nested_classes, d.min_box_size))
    return out


def load_samples(cfg: ExperimentConfig, progress: bool = True) -> tuple[dict[str, list[BoxSample]], dict[str, Any]]:
    """Train / val / test samples and what to store with the model (plan, split)."""
    d = cfg.data
    size = tuple(cfg.detection.input_size)
    if d.format == "hdf5":
        from ctdl.io.hdf5 import check_dlae_pair, read_dlae_hdf5

        if d.train_x is None:
            raise ConfigError("data.train_x / data.train_y (DLAE HDF5 images and box annotations) are required")
        check_dlae_pair(d.train_x, d.train_y)
        train = samples_from_dlae(read_dlae_hdf5(d.train_x), read_dlae_hdf5(d.train_y), size, str(d.train_y))
        val: list[BoxSample] = []
        if d.val_x is not None and d.val_y is not None:
            val = samples_from_dlae(read_dlae_hdf5(d.val_x), read_dlae_hdf5(d.val_y), size, str(d.val_y))
        elif d.split.val > 0:
            rng = np.random.default_rng(cfg.seed)
            idx = rng.permutation(len(train))
            n_val = int(round(d.split.val * len(train)))
            val = [train[i] for i in idx[:n_val]]
            train = [train[i] for i in idx[n_val:]]
        test: list[BoxSample] = []
        if d.test_x is not None and d.test_y is not None:
            test = samples_from_dlae(read_dlae_hdf5(d.test_x), read_dlae_hdf5(d.test_y), size, str(d.test_y))
        pre = _preprocessor(cfg)
        pre.fit([s.image for s in train])
        for s in train + val + test:
            s.image = _normalize_2d(pre, s.image)
        return {"train": train, "val": val, "test": test}, {"plan": pre.plan}
    from ctdl.tasks.segmentation import make_split, resolve_cases

    cases = resolve_cases(cfg, progress=progress)
    split = make_split(cfg, cases)
    by_id = {c.case_id: c for c in cases}
    pre = _preprocessor(cfg)
    if cfg.preprocessing.spacing is None:
        from ctdl.io import read_volume

        pre.plan_spacing([read_volume(by_id[i].image).spacing for i in split["train"]])
    pre.fit([])
    parts = {k: _volume_samples(cfg, [by_id[i] for i in split[k]], pre, progress, f"slices {k}")
             for k in ("train", "val", "test")}
    return parts, {"plan": pre.plan, "split": split}


def _preprocessor(cfg: ExperimentConfig) -> Any:
    from ctdl.data.pipeline import SegPreprocessor

    return SegPreprocessor(cfg.preprocessing)


def _normalize_2d(pre: Any, image: np.ndarray) -> np.ndarray:
    """Intensity stage of the preprocessing on one (C, H, W) sample (HU window, then normalization)."""
    from ctdl.data import preprocess as pp

    a = image[0]
    if pre.cfg.hu_window is not None:
        a = pp.clip_hu(a, pre.cfg.hu_window)
    return pre.intensity(a[None])[:, 0]


def training_samples(cfg: ExperimentConfig, samples: list[BoxSample]) -> list[BoxSample]:
    """Slices with boxes, plus a seeded ``empty_slice_fraction`` of the empty ones; slices with a box of class
    ``sampling.tumor_label`` are repeated ``sampling.tumor_duplication`` extra times (the thesis' oversampling)."""
    with_boxes = [s for s in samples if len(s.boxes)]
    dup = cfg.sampling.tumor_duplication
    if dup:
        rare = [s for s in with_boxes if (s.boxes[:, 0] == cfg.sampling.tumor_label).any()]
        with_boxes += rare * dup
    empty = [s for s in samples if not len(s.boxes)]
    k = int(round(cfg.detection.empty_slice_fraction * len(empty)))
    if k:
        pick = np.random.default_rng(cfg.seed).choice(len(empty), size=k, replace=False)
        with_boxes += [empty[int(i)] for i in sorted(pick)]
    return with_boxes


# -- prediction ------------------------------------------------------------------------------------
@torch.no_grad()
def detect(model: torch.nn.Module, cfg: ExperimentConfig, samples: Sequence[BoxSample], device: str | torch.device = "cpu",
           batch_size: int = 16, progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Decoded detections (pixels of the network input) for each sample."""
    from ctdl.detection.decode import decode_detections

    d = cfg.detection
    model.eval()
    out: list[dict[str, np.ndarray]] = []
    for i in tqdm(range(0, len(samples), batch_size), desc="detect", leave=False, disable=None if progress else True):
        x = torch.from_numpy(np.stack([s.image for s in samples[i:i + batch_size]])).float().to(device)
        o = model(x)
        dets = decode_detections(o["cls_logits"], o["box_offsets"], o["anchors"], d.variances, d.confidence_threshold,
                                 d.iou_threshold, d.top_k, d.max_outputs, scale_xy=o.get("coord_scale"))
        out.extend({k: v.detach().cpu().numpy() for k, v in det.items()} for det in dets)
    return out


def _truth(samples: Sequence[BoxSample]) -> list[dict[str, np.ndarray]]:
    return [{"boxes": s.boxes[:, 1:], "labels": s.boxes[:, 0].astype(np.int64)} for s in samples]


def evaluate_detections(cfg: ExperimentConfig, dets: Sequence[dict[str, np.ndarray]], samples: Sequence[BoxSample]
                        ) -> dict[str, float]:
    """Pooled mAP@eval_iou (VOC all-point and COCO 101-point), AP per class and FROC points per class."""
    from ctdl.metrics.detection import froc, mean_average_precision

    d = cfg.detection
    gts = _truth(samples)
    labels = list(range(1, cfg.n_classes))
    names = cfg.data.classes
    m_voc, per_voc = mean_average_precision(dets, gts, labels, d.eval_iou, "voc")
    m_coco, per_coco = mean_average_precision(dets, gts, labels, d.eval_iou, "coco")
    out = {"map50": m_voc, "map50_coco": m_coco}
    for c in labels:
        out[f"ap50_{names[c]}"] = per_voc[c]
        out[f"ap50_coco_{names[c]}"] = per_coco[c]
        for f, s in froc(dets, gts, c, d.froc_fps, d.eval_iou).items():
            out[f"froc_{names[c]}_{f:g}fp"] = s
    return out


def validation_fn(cfg: ExperimentConfig, val: list[BoxSample], device: str):
    """mAP@0.5 (VOC) and AP per class on the validation slices; the trainer prefixes ``val_``."""
    def run(model: torch.nn.Module) -> dict[str, float]:
        if not val:
            return {}
        m = evaluate_detections(cfg, detect(model, cfg, val, device), val)
        return {k: v for k, v in m.items() if k == "map50" or (k.startswith("ap50_") and "coco" not in k)}
    return run


def write_boxes(path_base: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Write a box list as ``<base>.csv`` and ``<base>.json`` (atomically)."""
    cols = ["case_id", "slice", "class_id", "class", "score", "xmin", "ymin", "xmax", "ymax"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    path_base.parent.mkdir(parents=True, exist_ok=True)
    csv_p, json_p = path_base.with_suffix(".csv"), path_base.with_suffix(".json")
    atomic_write_text(csv_p, buf.getvalue())
    atomic_write_text(json_p, json.dumps(rows, indent=1) + "\n")
    return [csv_p, json_p]


def box_rows(samples: Sequence[BoxSample], dets: Sequence[dict[str, np.ndarray]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Detections as rows in the source slice's pixel coordinates (columns x, rows y)."""
    rows = []
    for s, d in zip(samples, dets):
        sy, sx = s.scale_yx
        for b, sc, c in zip(d["boxes"], d["scores"], d["labels"]):
            rows.append({"case_id": s.case_id, "slice": int(s.index), "class_id": int(c), "class": classes[int(c)],
                         "score": round(float(sc), 5), "xmin": round(float(b[0]) * sx, 2), "ymin": round(float(b[1]) * sy, 2),
                         "xmax": round(float(b[2]) * sx, 2), "ymax": round(float(b[3]) * sy, 2)})
    return rows


def save_overlays(path: Path, samples: Sequence[BoxSample], dets: Sequence[dict[str, np.ndarray]],
                  classes: Sequence[str], n: int = 6, min_score: float = 0.3) -> Path | None:
    """A PNG of ``n`` slices with truth (dashed) and detections above ``min_score`` (solid, with scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [i for i, s in enumerate(samples) if len(s.boxes)]
    if not idx:
        return None
    pick = [idx[int(j)] for j in np.linspace(0, len(idx) - 1, min(n, len(idx))).round().astype(int)]
    colors = ["w", "lime", "red", "cyan", "yellow", "magenta"]
    fig, axes = plt.subplots(1, len(pick), figsize=(3 * len(pick), 3.2))
    axes = np.atleast_1d(axes)
    for ax, i in zip(axes, pick):
        s, d = samples[i], dets[i]
        ax.imshow(s.image[0], cmap="gray")
        for b in s.boxes:
            c = int(b[0])
            ax.add_patch(plt.Rectangle((b[1], b[2]), b[3] - b[1], b[4] - b[2], fill=False, ls="--", lw=1,
                                       ec=colors[c % len(colors)]))
        for b, sc, c in zip(d["boxes"], d["scores"], d["labels"]):
            if sc < min_score:
                continue
            ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.2,
                                       ec=colors[int(c) % len(colors)]))
            ax.text(b[0], b[1] - 1, f"{classes[int(c)][:3]} {sc:.2f}", color=colors[int(c) % len(colors)], fontsize=6)
        ax.set_title(f"{s.case_id} z{s.index}", fontsize=7)
        ax.axis("off")
    fig.suptitle("truth dashed, detections solid (score >= %.2f)" % min_score, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def save_pr_curves(path: Path, dets: Sequence[dict[str, np.ndarray]], samples: Sequence[BoxSample], classes: Sequence[str],
                   iou: float = 0.5) -> Path:
    """Precision-recall curve per class as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctdl.metrics.detection import match_detections, precision_recall

    gts = _truth(samples)
    fig, ax = plt.subplots(figsize=(4, 3.5))
    for c in range(1, len(classes)):
        _, tp, _, n_gt = match_detections(dets, gts, c, iou, "voc")
        if n_gt and len(tp):
            p, r = precision_recall(tp, n_gt)
            ax.plot(r, p, label=classes[c])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title(f"precision-recall at IoU {iou:g}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# -- training --------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train an SSD on 2D slices; writes one run folder (run-folder contract) and evaluates on the test split."""
    from ctdl.engine.callbacks import default_callbacks
    from ctdl.engine.optimizers import build_optimizer
    from ctdl.engine.rundir import write_run_summary
    from ctdl.engine.schedules import build_scheduler
    from ctdl.engine.trainer import Trainer, load_checkpoint, resolve_device, seed_everything
    from ctdl.metrics.segmentation import summarize, write_metrics_csv, write_summary_csv
    from ctdl.models import count_parameters

    t0 = time.time()
    cfg = _detection_cfg(cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    seed_everything(cfg.seed)
    device = str(resolve_device(cfg.training.device))

    parts, extra = load_samples(cfg, progress)
    if "split" in extra:
        from ctdl.data.splits import save_split

        save_split(extra["split"], run_dir / "split.json")
    train_set = training_samples(cfg, parts["train"])
    if not train_set:
        raise InputError("detection: the training split has no slice with a box")
    val_set = parts["val"]
    timing: dict[str, float] = {"data_s": round(time.time() - t0, 1)}

    model = build_model(cfg)
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    scheduler = build_scheduler(cfg.schedule, optimizer, cfg.training.epochs, mode=cfg.training.monitor_mode)
    aug = cfg.augmentation
    flip_p = aug.flip_prob if (aug.enabled and 2 in aug.flip_axes) else 0.0
    jitter = aug.intensity_scale if aug.enabled else 0.0

    def loader(epoch: int) -> BoxLoader:
        return BoxLoader(train_set, cfg.training.batch_size, cfg.seed, epoch, cfg.training.shuffle, flip_p, jitter,
                         cfg.training.steps_per_epoch)

    meta = {"config": config_to_dict(cfg), "classes": list(cfg.data.classes), "task": "detection",
            "anchors": AnchorSpec.from_config(cfg.detection).to_dict(), **extra}
    monitor = cfg.training.monitor if val_set else "train_loss"
    mode = cfg.training.monitor_mode if val_set else "min"
    trainer = Trainer(model, optimizer, scheduler, loss_fn, loader, validation_fn(cfg, val_set, device), run_dir,
                      cfg.training.epochs, callbacks=default_callbacks(cfg, run_dir, progress=progress), device=device,
                      grad_clip=cfg.training.grad_clip, amp=cfg.training.amp, channels_last=cfg.training.channels_last, monitor=monitor, monitor_mode=mode,
                      seed=cfg.seed, steps_per_epoch=cfg.training.steps_per_epoch, val_every=cfg.training.val_every,
                      progress=progress, checkpoint_meta=meta)
    t1 = time.time()
    resume_from = run_dir / "last.pt" if resume and (run_dir / "last.pt").exists() else None
    trainer.fit(resume_from=resume_from)
    timing["train_s"] = round(time.time() - t1, 1)
    best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    model.load_state_dict(load_checkpoint(best)["model"])

    metrics: dict[str, Any] = {}
    test = parts["test"]
    if test:
        t1 = time.time()
        dets = detect(model, cfg, test, device, progress=progress)
        metrics = evaluate_detections(cfg, dets, test)
        rows = []
        for cid in sorted({s.case_id for s in test}):
            idx = [i for i, s in enumerate(test) if s.case_id == cid]
            sub_s, sub_d = [test[i] for i in idx], [dets[i] for i in idx]
            write_boxes(run_dir / "predictions" / cid, box_rows(sub_s, sub_d, cfg.data.classes))
            m = evaluate_detections(cfg, sub_d, sub_s)
            rows.append({"case_id": cid, "n_slices": len(idx), **{k: v for k, v in m.items() if "coco" not in k}})
        write_metrics_csv(rows, run_dir / "metrics.csv")
        write_summary_csv(summarize(rows), run_dir / "metrics_summary.csv")
        atomic_write_text(run_dir / "metrics_pooled.json", json.dumps(metrics, indent=2) + "\n")
        save_overlays(run_dir / "report" / "detections.png", test, dets, cfg.data.classes)
        save_pr_curves(run_dir / "report" / "pr_curves.png", dets, test, cfg.data.classes, cfg.detection.eval_iou)
        timing["test_predict_eval_s"] = round(time.time() - t1, 1)
    else:
        write_summary_csv({}, run_dir / "metrics_summary.csv")
    timing["total_s"] = round(time.time() - t0, 1)
    atomic_write_text(run_dir / "timing.json", json.dumps(timing, indent=2) + "\n")
    write_run_summary(run_dir, "detection", cfg.detection.backbone, count_parameters(model), metrics, timing,
                      n_test_slices=len(test))
    return run_dir


# -- prediction from a trained run -------------------------------------------------------------------
def load_detector(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig, dict[str, Any]]:
    """Model, config and plan from a run folder or checkpoint written by :func:`train`."""
    from ctdl.engine.trainer import load_checkpoint

    path = Path(path)
    if path.is_dir():
        cands = [path / n for n in ("best.pt", "last.pt") if (path / n).exists()]
        if not cands:
            raise InputError(f"{path}: no best.pt or last.pt in this run folder")
        path = cands[0]
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta") or {}
    if meta.get("task") != "detection" or "config" not in meta:
        raise InputError(f"{path}: not a detection checkpoint written by ctdl train (meta.task = {meta.get('task')!r})")
    cfg = config_from_dict(meta["config"], f"{path}:meta.config")
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg, dict(meta.get("plan") or {})


def predict_paths(model: str | Path, inputs: str | Path, output: str | Path, device: str = "auto") -> list[Path]:
    """`ctdl predict` for detection: boxes per input as ``<name>.csv`` and ``<name>.json`` under ``output``.

    Inputs: a volume file, a folder of volumes, a KiTS19-layout folder (slices along ``detection.slice_axis``
    of the preprocessed volume; boxes in that volume's voxel columns/rows), or a DLAE HDF5 image file
    (one box list per sample, in the sample's pixels).
    """
    from ctdl.data.datasets import is_kits19_root, kits19_cases
    from ctdl.data.pipeline import SegPreprocessor
    from ctdl.engine.trainer import resolve_device
    from ctdl.io import read_volume

    dev = str(resolve_device(device))
    net, cfg, plan = load_detector(model, dev)
    src, out = Path(inputs), Path(output)
    if not src.exists():
        raise InputError(f"{src}: input not found")
    pre = SegPreprocessor(cfg.preprocessing, plan)
    d = cfg.detection
    written: list[Path] = []
    if src.is_file() and src.suffix.lower() in (".h5", ".hdf5"):
        from ctdl.io.hdf5 import read_dlae_hdf5

        samples = samples_from_dlae(read_dlae_hdf5(src), None, tuple(d.input_size), src.stem)
        for s in samples:
            s.image = _normalize_2d(pre, s.image)
        dets = detect(net, cfg, samples, dev)
        return write_boxes(out / src.stem, box_rows(samples, dets, cfg.data.classes))
    exts = (".nii.gz", ".nii", ".nrrd", ".mha")
    jobs: list[tuple[str, Path]] = []
    if src.is_dir() and is_kits19_root(src):
        jobs = [(c.case_id, c.image) for c in kits19_cases(src, require_images=True)]  # type: ignore[misc]
    elif src.is_dir() and any(p.name.lower().endswith(exts) for p in src.iterdir()):
        jobs = [(p.name.split(".")[0], p) for p in sorted(src.iterdir()) if p.name.lower().endswith(exts)]
    else:
        jobs = [(src.name.split(".")[0], src)]
    for name, path in tqdm(jobs, desc="detect", disable=None if len(jobs) > 1 else True):
        image = read_volume(path)
        prepared, _ = pre.prepare(name, image, None, None, use_label_roi=False)
        samples = slices_from_volume(prepared.image, None, name, cfg.n_classes, tuple(d.input_size), d.slice_axis)
        dets = detect(net, cfg, samples, dev)
        written += write_boxes(out / name, box_rows(samples, dets, cfg.data.classes))
    return written
