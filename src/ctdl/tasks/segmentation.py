"""Segmentation task: chains data -> preprocess -> sampling -> model -> loss -> trainer, and
prediction (-> inference -> post-processing -> back onto the input grid) and evaluation.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from ctdl.config.load import config_from_dict, config_to_dict, save_config
from ctdl.config.schema import ExperimentConfig
from ctdl.data.datasets import Case, folder_cases, kits19_cases, limit_cases, load_case
from ctdl.data.pipeline import GeometryCache, SegPreprocessor
from ctdl.data.sampling import PreparedCase
from ctdl.data.splits import listed_split, save_split, split_ids
from ctdl.errors import ConfigError, InputError
from ctdl.io import Volume, read_volume, write_volume

log = logging.getLogger("ctdl")


# -- data ------------------------------------------------------------------------------------
def resolve_cases(cfg: ExperimentConfig, progress: bool = True) -> list[Case]:
    """All cases of the configured dataset (phantoms are rendered into the cache first)."""
    d = cfg.data
    if d.format == "synthetic_kits":
        import hashlib

        from ctdl.data.synthetic import PhantomParams, select_cases, synth_kits_dataset

        if isinstance(d.cases, list):
            ids = d.cases
        else:
            ids = select_cases(d.synth_source, d.cases or 16, seed=cfg.seed)
        sp = d.synth_spacing
        tag = "native" if sp is None else "x".join(f"{s:g}" for s in sp)
        ph = hashlib.sha1(json.dumps(PhantomParams().to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        root = Path(d.root) if d.root else cache_dir(cfg) / f"phantoms_{tag}_m{d.synth_margin_slices}_s{cfg.seed}_{ph}"
        synth_kits_dataset(d.synth_source, root, ids, spacing=sp, seed=cfg.seed, margin_slices=d.synth_margin_slices,
                           progress=progress)
        cases = kits19_cases(root, require_images=True)
        by_id = {c.case_id: c for c in cases}
        return [by_id[i] for i in ids]
    if d.format == "kits19":
        return limit_cases(kits19_cases(d.root, require_images=True), d.cases)
    if d.format == "folder":
        return limit_cases(folder_cases(d.root, d.images_dir, d.labels_dir), d.cases)
    if d.format == "hdf5":  # DLAE HDF5 pairs (ctdl.data.hdf5_dataset)
        from ctdl.data.hdf5_dataset import hdf5_cases

        return limit_cases(hdf5_cases(cfg, cache_dir(cfg), progress=progress), d.cases)
    raise ConfigError(f"data.format '{d.format}' is not a segmentation dataset (use kits19, folder or synthetic_kits)")


def cache_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.output_dir) / ".cache"


def make_split(cfg: ExperimentConfig, cases: list[Case]) -> dict[str, list[str]]:
    s = cfg.data.split
    if cfg.data.format == "hdf5" and s.train_cases is None:  # DLAE's seeded split / separate files
        from ctdl.data.hdf5_dataset import hdf5_split

        return hdf5_split(cfg, cases)
    listed = listed_split(s, (c.case_id for c in cases))
    if listed is not None:
        return listed
    return split_ids([c.case_id for c in cases], s.train, s.val, s.test, seed=cfg.seed if s.seed is None else s.seed)


def prepare_cases(pre: SegPreprocessor, cases: list[Case], n_classes: int, cache: GeometryCache | None,
                  desc: str, use_label_roi: bool = True) -> list[PreparedCase]:
    out = []
    for case in tqdm(cases, desc=desc, leave=False, disable=None):
        image, label = load_case(case, n_classes)
        if use_label_roi and label is not None and pre.cfg.roi.enabled and pre.cfg.roi.per_kidney:
            img_s, lab_s, _ = (cache.get_or_make(case.case_id, pre, image, label) if cache is not None
                               else pre.geometry(image, label))
            out.extend(pre.finish_all(case.case_id, img_s, lab_s))  # one case per kidney crop
            continue
        prepared, _ = pre.prepare(case.case_id, image, label, cache, use_label_roi=use_label_roi)
        out.append(prepared)
    return out


# -- model / loss ----------------------------------------------------------------------------
def build_model(cfg: ExperimentConfig) -> torch.nn.Module:
    from ctdl.models import create_model

    params = dict(cfg.model.params)
    in_ch = cfg.model.in_channels or cfg.preprocessing.repeat_channels
    if cfg.model.layers:  # a DLAE serial layer list instead of a registered name; the losses take logits
        from ctdl.models.layerlist import build_layer_list

        return build_layer_list(cfg.model.layers, dims=2 if cfg.sampling.mode == "slices2d" else 3,
                                in_channels=in_ch, logits=True)
    params.setdefault("in_channels", in_ch)
    params.setdefault("out_channels", cfg.n_classes)
    return create_model(cfg.model.name, **params)


def class_weights(cfg: ExperimentConfig, train: list[PreparedCase]) -> list[float] | None:
    cw = cfg.loss.class_weights
    if cw is None:
        weights = None
    elif cw == "balanced":
        from ctdl.losses.segmentation import balanced_class_weights

        counts = np.zeros(cfg.n_classes, np.int64)
        for c in train:
            counts += np.bincount(c.label.ravel(), minlength=cfg.n_classes)[: cfg.n_classes]
        weights = [float(w) for w in balanced_class_weights(counts, cfg.n_classes)]
    else:
        if len(cw) != cfg.n_classes:
            raise ConfigError(f"loss.class_weights has {len(cw)} values for {cfg.n_classes} classes")
        weights = [float(w) for w in cw]
    if weights is not None and cfg.loss.class_weight_factors:
        weights = [w * f for w, f in zip(weights, cfg.loss.class_weight_factors)]
    return weights


def build_loss(cfg: ExperimentConfig, weights: list[float] | None) -> torch.nn.Module:
    from ctdl.losses.registry import loss_from_config

    return loss_from_config(cfg.loss.name, cfg.loss.params, weights)


# -- inference helpers -----------------------------------------------------------------------
def inference_options(cfg: ExperimentConfig) -> dict[str, Any]:
    inf = cfg.inference
    dims = 2 if cfg.sampling.mode == "slices2d" else 3
    div = cfg.model.params.get("divisible_by") or _model_divisor(cfg)
    if dims == 2 or inf.method == "slices2d":
        return {"method": "slices2d", "batch_size": max(inf.batch_size, 4), "divisible_by": div}
    if inf.method == "voting":
        return {"method": "voting", "window": inf.window, "overlap": inf.overlap_slices, "batch_size": inf.batch_size,
                "divisible_by": div}
    roi = inf.roi_size or cfg.sampling.patch_size
    return {"method": "sliding_window", "roi_size": tuple(roi), "overlap": inf.overlap, "mode": inf.blend,
            "sw_batch_size": inf.batch_size, "divisible_by": div}


def _model_divisor(cfg: ExperimentConfig) -> int | None:
    if cfg.model.layers:  # a DLAE layer list knows its own down-sampling factor
        return int(getattr(build_model(cfg), "divisible_by", 1))
    strides = cfg.model.params.get("strides")
    if strides is not None:
        return int(np.prod([s if isinstance(s, int) else max(s) for s in strides]))
    from ctdl.models import model_info

    return model_info(cfg.model.name).get("divisible_by")  # registered with the model (input size it needs)


def predict_prepared(model: torch.nn.Module, cfg: ExperimentConfig, image: np.ndarray, device: str = "cpu"
                     ) -> tuple[np.ndarray, np.ndarray]:
    from ctdl.engine.inference import predict_volume

    opts = inference_options(cfg)
    method = opts.pop("method")
    if method != "slices2d":
        opts["device"] = device
    tta = cfg.inference.tta_flips and bool(cfg.augmentation.flip_axes)
    if tta:  # only the flips the model was trained with: an unseen flip (e.g. anterior-posterior) hurts
        opts["tta_axes"] = tta_flip_axes(cfg.augmentation.flip_axes)
    return predict_volume(model, image, cfg.n_classes, method=method, tta=tta, **opts)


def tta_flip_axes(flip_axes: Iterable[int]) -> tuple[tuple[int, ...], ...]:
    """Every non-empty combination of the training flip axes (0=D, 1=H, 2=W), as axes of a (C, D, H, W) image."""
    from itertools import combinations

    axes = sorted({int(a) + 1 for a in flip_axes})
    return tuple(c for k in range(1, len(axes) + 1) for c in combinations(axes, k))


def postprocess_prediction(cfg: ExperimentConfig, labels: np.ndarray, probs: np.ndarray, image: np.ndarray,
                           spacing: tuple[float, float, float]) -> np.ndarray:
    from ctdl.engine.postprocess import postprocess

    pc = cfg.postprocess
    crf = None
    if pc.crf.enabled:
        crf = pc.crf.model_dump(exclude={"enabled"})
        crf = {"n_iter": crf.pop("iterations"), **crf}
    lcc = None
    if pc.largest_component.enabled:
        lcc = {"connectivity": pc.largest_component.connectivity, "keep": pc.largest_component.keep,
               "foreground_labels": tuple(range(1, cfg.n_classes))}
    if crf is None and lcc is None and not pc.fill_holes:
        return labels
    return postprocess(labels, probs=probs, image=image[0], spacing=spacing, crf=crf, largest_component=lcc,
                       fill_holes=pc.fill_holes)


def validation_fn(cfg: ExperimentConfig, val: list[PreparedCase], device: str, weights: list[float] | None = None,
                  on_case: Any = None):
    """Per-class Dice (and Jaccard / the thesis' JC_w when listed in ``monitors.metrics``) on whole validation
    volumes; the trainer prefixes keys with ``val_``."""
    from ctdl.metrics.segmentation import dice, jaccard, weighted_jaccard

    names = cfg.data.classes
    wanted = set(cfg.monitors.metrics)

    def run(model: torch.nn.Module) -> dict[str, float]:
        if not val:
            return {}
        per_class: dict[str, list[float]] = {n: [] for n in names[1:]}
        per_class_j: dict[str, list[float]] = {n: [] for n in names[1:]}
        jcw: list[float] = []
        for case in val:
            labels, _ = predict_prepared(model, cfg, case.image, device)
            if on_case is not None:  # live validation previews (ctdl.engine.previews)
                on_case(case, labels)
            for k, n in enumerate(names[1:], start=1):
                per_class[n].append(dice(labels, case.label, k))
                if "jaccard" in wanted:
                    per_class_j[n].append(jaccard(labels, case.label, k))
            if "weighted_jaccard" in wanted:
                eye = np.eye(len(names), dtype=np.float32)
                jcw.append(weighted_jaccard(eye[labels], eye[case.label], weights, class_axis=-1))
        out = {f"dice_{n}": float(np.nanmean(v)) for n, v in per_class.items()}
        out["dice_mean"] = float(np.nanmean(list(out.values())))
        if "jaccard" in wanted:
            out.update({f"jaccard_{n}": float(np.nanmean(v)) for n, v in per_class_j.items()})
        if jcw:
            out["weighted_jaccard"] = float(np.mean(jcw))
        return out

    return run


# -- training --------------------------------------------------------------------------------
def _finish_train(pre: SegPreprocessor, case_id: str, img_s: Volume, lab_s: Volume, ctx: Any) -> list[PreparedCase]:
    """Training cases of one volume: ROI crops (one per kidney with ``roi.per_kidney``), then, with
    ``preprocessing.remove_background_slices``, only the slices that hold a label (thesis: training set only)."""
    cases = (pre.finish_all(case_id, img_s, lab_s) if pre.cfg.roi.enabled and pre.cfg.roi.per_kidney
             else [pre.finish(case_id, img_s, lab_s, ctx)])
    if pre.cfg.remove_background_slices:
        for c in cases:
            if c.label is not None and c.label.any():
                kept = np.flatnonzero(c.label.reshape(c.label.shape[0], -1).any(axis=1))
                c.image, c.label = c.image[:, kept].copy(), c.label[kept].copy()
    return cases


def _fit_stage(cfg: ExperimentConfig, run_dir: Path, train_cases: list[Case], val_cases: list[Case],
               device: str, progress: bool, resume: bool, extra_meta: dict[str, Any] | None = None
               ) -> tuple[torch.nn.Module, SegPreprocessor, dict[str, Any]]:
    """Preprocess, build and train one model; returns (model with best weights, preprocessor, meta)."""
    from ctdl.data.augment import build_augmentation
    from ctdl.data.sampling import Sampler
    from ctdl.engine.callbacks import default_callbacks
    from ctdl.engine.optimizers import build_optimizer
    from ctdl.engine.schedules import build_scheduler
    from ctdl.engine.trainer import Trainer

    pre = SegPreprocessor(cfg.preprocessing)
    cache = GeometryCache(cache_dir(cfg) / "geometry")
    if not train_cases:
        raise ConfigError("data.split: the training split is empty")
    if cfg.preprocessing.spacing is None:
        from ctdl.io.nifti import is_nifti, nifti_header_geometry

        pre.plan_spacing([nifti_header_geometry(c.image)["spacing"] if is_nifti(c.image) else read_volume(c.image).spacing
                          for c in train_cases])
    # each training case is read once: geometry stage (cached), then the plan, then ROI + intensity
    geo = []
    for c in tqdm(train_cases, desc="preprocess train", leave=False, disable=None if progress else True):
        image, label = load_case(c, cfg.n_classes)
        geo.append((c.case_id, *cache.get_or_make(c.case_id, pre, image, label)))
    pre.fit([img_s.array for _, img_s, _, _ in geo])
    train_set = [t for cid, img_s, lab_s, ctx in geo for t in _finish_train(pre, cid, img_s, lab_s, ctx)]
    del geo
    val_set = prepare_cases(pre, val_cases, cfg.n_classes, cache, "prepare val",
                            use_label_roi=cfg.preprocessing.roi.enabled)

    dims = 2 if cfg.sampling.mode == "slices2d" else 3
    sampler = Sampler(train_set, cfg.sampling, cfg.training.batch_size, build_augmentation(cfg.augmentation, dims),
                      seed=cfg.seed, steps_per_epoch=cfg.training.steps_per_epoch, rounds=cfg.augmentation.rounds)
    weights = class_weights(cfg, train_set)
    model = build_model(cfg)
    if cfg.model.pretrained:
        _load_pretrained(model, cfg.model.pretrained)
    loss_fn = build_loss(cfg, weights)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    scheduler = build_scheduler(cfg.schedule, optimizer, cfg.training.epochs, mode=cfg.training.monitor_mode)
    meta = {"config": config_to_dict(cfg), "plan": pre.plan, "classes": list(cfg.data.classes),
            "class_weights": weights, "task": "segmentation", **(extra_meta or {})}
    monitor = cfg.training.monitor if val_set else "train_loss"
    mode = cfg.training.monitor_mode if val_set else "min"
    callbacks = default_callbacks(cfg, run_dir, progress=progress)
    from ctdl.engine.previews import validation_previews  # live validation previews for the web viewer

    previews = validation_previews(cfg, val_set, run_dir)  # None when evaluation.previews is off
    callbacks += [previews] if previews is not None else []
    trainer = Trainer(
        model, optimizer, scheduler, loss_fn, sampler.epoch,
        validation_fn(cfg, val_set, device, weights, previews.record if previews is not None else None), run_dir,
        cfg.training.epochs, callbacks=callbacks, device=device, grad_clip=cfg.training.grad_clip,
        amp=cfg.training.amp, channels_last=cfg.training.channels_last, monitor=monitor, monitor_mode=mode, seed=cfg.seed,
        steps_per_epoch=len(sampler), val_every=cfg.training.val_every, progress=progress, checkpoint_meta=meta,
    )
    resume_from = run_dir / "last.pt" if resume and (run_dir / "last.pt").exists() else None
    trainer.fit(resume_from=resume_from)
    best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    from ctdl.engine.trainer import load_checkpoint

    model.load_state_dict(load_checkpoint(best)["model"])
    return model, pre, meta


def coarse_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The coarse localiser's config: same data and preprocessing at a coarse spacing, a small fast net."""
    inf = cfg.inference
    data = config_to_dict(cfg)
    data["preprocessing"]["spacing"] = list(inf.coarse_spacing)
    data["preprocessing"]["roi"]["enabled"] = False
    data["sampling"] = {"mode": "patch3d", "patch_size": list(inf.coarse_patch_size), "samples_per_volume": 2,
                        "class_ratios": [1, 1, 1][: cfg.n_classes] if cfg.n_classes <= 3 else None}
    data["model"] = {"name": "unet3d_small", "params": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                                                       "num_res_units": 1}}
    data["loss"] = {"name": "dice_ce"}
    data["optimizer"] = {"name": "adam", "lr": 0.003}
    data["schedule"] = {"name": "none"}
    # float32 always: under CPU bfloat16 autocast, oneDNN's weight gradient of this net's bottleneck convolution
    # (2 x 6 x 6 voxels for a 16 x 48 x 48 patch) came out non-finite or pointing elsewhere (cosine 0..0.8
    # to the float32 gradient of the same batch), while the demo's bigger net measured >= 0.996 everywhere
    data["training"].update({"epochs": inf.coarse_epochs, "steps_per_epoch": inf.coarse_steps_per_epoch,
                             "val_every": inf.coarse_epochs, "early_stopping": {"enabled": False},
                             "amp": False, "channels_last": False})
    # windows four at a time: the localiser's ~100 small windows on a whole CT cost more in per-call overhead
    # than in arithmetic one by one
    data["inference"] = {"method": "sliding_window", "roi_size": list(inf.coarse_patch_size), "overlap": 0.25,
                         "two_stage": False, "batch_size": 4}
    # no component filtering here: Predictor._coarse_boxes picks the two largest groups of the raw coarse output
    data["postprocess"] = {}
    data["checkpoint"] = {"save_last": True, "save_best": True, "every_n": 0, "csv": True, "tensorboard": False}
    return config_from_dict(data, "coarse localiser config")


def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a segmentation model; writes one run folder and evaluates on the test split."""
    from ctdl.engine.trainer import seed_everything

    t0 = time.time()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    seed_everything(cfg.seed)
    device = _device(cfg.training.device)

    cases = resolve_cases(cfg, progress=progress)
    split = make_split(cfg, cases)
    save_split(split, run_dir / "split.json")
    by_id = {c.case_id: c for c in cases}
    train_cases = [by_id[i] for i in split["train"]]
    val_cases = [by_id[i] for i in split["val"]]

    extra: dict[str, Any] = {"split": split}
    timing: dict[str, float] = {}
    if cfg.inference.two_stage:
        t1 = time.time()
        ccfg = coarse_config(cfg)
        cmodel, cpre, cmeta = _fit_stage(ccfg, run_dir / "coarse", train_cases, val_cases, device, progress, resume)
        extra["coarse"] = {"config": cmeta["config"], "plan": cpre.plan, "state": cmodel.state_dict()}
        timing["coarse_train_s"] = round(time.time() - t1, 1)
    t1 = time.time()
    model, _, _ = _fit_stage(cfg, run_dir, train_cases, val_cases, device, progress, resume, extra)
    timing["train_s"] = round(time.time() - t1, 1)
    metrics: dict[str, Any] = {}

    # final evaluation on the held-out test split with the best weights
    test_ids = split["test"]
    if test_ids:
        t1 = time.time()
        best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
        predictor = Predictor.from_checkpoint(best, device=device)
        jcw_weights = None
        if "weighted_jaccard" in cfg.monitors.metrics:  # the thesis' JC_w with the run's class weights
            jcw_weights = predictor.class_weights or [1.0] * cfg.n_classes
        pred_dir = run_dir / "predictions"
        _write_json(run_dir / "test_cases.json", {cid: {"image": str(by_id[cid].image), "label": str(by_id[cid].label)}
                                                   for cid in test_ids})
        rows = []
        for cid in tqdm(test_ids, desc="test", leave=False, disable=None if progress else True):
            case = by_id[cid]
            out = predictor.predict_file(case.image, pred_dir / f"{cid}.nii.gz")
            rows.append(evaluate_pair(out, case.label, cfg, cid, class_weights=jcw_weights))
        metrics = _write_metrics(rows, run_dir, cfg)
        timing["test_predict_eval_s"] = round(time.time() - t1, 1)
    timing["total_s"] = round(time.time() - t0, 1)
    _write_json(run_dir / "timing.json", timing)
    from ctdl.engine.rundir import write_run_summary
    from ctdl.models import count_parameters

    write_run_summary(run_dir, "segmentation", cfg.model.name, count_parameters(model), metrics, timing)
    try:
        from ctdl.report.html import write_report

        write_report(run_dir)
    except Exception as exc:  # the report must never lose the run
        log.warning("report failed: %s", exc)
    return run_dir


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _load_pretrained(model: torch.nn.Module, path: Path) -> None:
    """Strictly load a PyTorch state dict or a Keras-applications .h5 (every bad key is listed in the error)."""
    from ctdl.models.keras_weights import load_pretrained

    skipped = load_pretrained(model, path)
    if skipped:
        log.info("%s: left at their initial values (not in the file): %s", path, ", ".join(skipped))


def _write_json(path: Path, data: Any) -> None:
    from ctdl.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# -- prediction ------------------------------------------------------------------------------
class Predictor:
    """A trained model with its config and plan: reads a CT, predicts, writes a mask on the input grid."""

    def __init__(self, model: torch.nn.Module, cfg: ExperimentConfig, plan: dict[str, Any], device: str = "cpu",
                 coarse: tuple[torch.nn.Module, ExperimentConfig, dict[str, Any]] | None = None) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.pre = SegPreprocessor(cfg.preprocessing, plan)
        self.device = device
        self.coarse = None
        if coarse is not None:
            cmodel, ccfg, cplan = coarse
            self.coarse = (cmodel.to(device).eval(), ccfg, SegPreprocessor(ccfg.preprocessing, cplan))
        self.last_roi: tuple[slice, slice, slice] | None = None
        self.last_rois: list[tuple[slice, slice, slice]] = []
        self.class_weights: list[float] | None = None  # the training loss' class weights (from the checkpoint)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "Predictor":
        path = Path(path)
        if path.is_dir():
            for name in ("best.pt", "last.pt"):
                if (path / name).exists():
                    path = path / name
                    break
            else:
                raise InputError(f"{path}: no best.pt or last.pt in this run folder")
        if not path.exists():
            raise InputError(f"{path}: checkpoint not found")
        from ctdl.engine.trainer import load_checkpoint

        ckpt = load_checkpoint(path)
        meta = ckpt.get("meta") or {}
        if "config" not in meta:
            raise InputError(f"{path}: checkpoint carries no config (not written by ctdl train)")
        cfg = config_from_dict(meta["config"], f"{path}:meta.config")
        model = build_model(cfg)
        model.load_state_dict(ckpt["model"])
        coarse = None
        if cfg.inference.two_stage and meta.get("coarse"):
            cm = meta["coarse"]
            ccfg = config_from_dict(cm["config"], f"{path}:meta.coarse.config")
            cmodel = build_model(ccfg)
            cmodel.load_state_dict(cm["state"])
            coarse = (cmodel, ccfg, cm.get("plan", {}))
        predictor = cls(model, cfg, meta.get("plan", {}), device, coarse)
        predictor.class_weights = meta.get("class_weights")
        return predictor

    def predict_volume(self, image: Volume, roi: bool | None = None) -> Volume:
        """Label map for ``image`` with exactly its shape and affine.

        ``roi`` (default: the config's ``inference.two_stage``) runs the coarse localiser first; the image is
        cropped (on its own grid) to the box around what it finds plus ``inference.roi_margin_mm`` (with
        ``preprocessing.roi.per_kidney``: one box per kidney, of ``roi.size_hw`` in-plane), and only those
        crops are resampled and segmented, then pasted back. If the coarse pass finds nothing the whole
        volume is processed. Sample-wise normalizations use the whole image's (windowed) range in both modes.
        """
        use_roi = self.cfg.inference.two_stage if roi is None else roi
        if use_roi and self.coarse is None:
            raise InputError("ROI mode needs a coarse localiser: train with inference.two_stage: true")
        sample_range = self.pre.sample_range(image.array)
        boxes = self._coarse_boxes(image) if use_roi else []
        self.last_roi = boxes[0] if len(boxes) == 1 else None
        self.last_rois = boxes
        if not boxes:
            out = self._predict_region(image, sample_range)
        else:
            full = np.zeros_like(image.array, dtype=np.uint8)  # the input's memory layout: no transpose to write it
            for box in boxes:  # one crop per kidney (roi.per_kidney) or one around everything found
                part = self._predict_region(_crop_volume(image, box), sample_range).array
                full[box] = np.maximum(full[box], part)  # overlapping crops: union, tumour over kidney
            out = Volume(full, image.affine.copy(), {}, image.file_axes)
        out.meta.update({"source": image.meta.get("source"), "classes": list(self.cfg.data.classes)})
        return out

    def _predict_region(self, sub: Volume, sample_range: tuple[float, float]) -> Volume:
        """Label map of ``sub`` (the whole image or a crop of it) on its own grid."""
        img_s, _, ctx = self.pre.geometry(sub, None)
        x = self.pre.intensity(img_s.array, sample_range=sample_range)
        labels, probs = predict_prepared(self.model, self.cfg, x, self.device)
        labels = postprocess_prediction(self.cfg, labels, probs, x, tuple(img_s.spacing))  # type: ignore[arg-type]
        return self.pre.restore(labels, ctx)

    def _coarse_box(self, image: Volume) -> tuple[slice, slice, slice] | None:
        """One box around everything the coarse localiser finds (None if it finds nothing)."""
        boxes = self._coarse_boxes(image, per_kidney=False)
        return boxes[0] if boxes else None

    def _coarse_boxes(self, image: Volume, per_kidney: bool | None = None) -> list[tuple[slice, slice, slice]]:
        """Boxes (in ``image``'s own voxels) around the coarse localiser's foreground, plus the configured margin.

        ``roi.per_kidney``: one box per connected component (kidney); ``roi.size_hw``: an in-plane window of at
        least that many voxels *at the fine model's spacing*, converted to this image's voxels, centred on each
        box, and grown to the box plus margin where the component is larger (as in training's crops).
        """
        cmodel, ccfg, cpre = self.coarse  # type: ignore[misc]
        prep, cctx = cpre.prepare("input", image, None, None, use_label_roi=False)
        lab, probs = predict_prepared(cmodel, ccfg, prep.image, self.device)
        lab = postprocess_prediction(ccfg, lab, probs, prep.image, prep.spacing)
        roi = self.cfg.preprocessing.roi
        per_kidney = roi.enabled and roi.per_kidney if per_kidney is None else per_kidney
        # the (up to) two largest groups of coarse foreground (parts up to two coarse voxels apart count as one;
        # anything else near them is inside the margin): a localiser trained on kidney-region crops also fires
        # on far-away anatomy of a whole CT (the full-resolution case_00000 phantom: 91 components spanning
        # every slice), and one box around all of it would be the whole volume. A wider merge chains those
        # false positives to the kidneys (measured: a 2 x 5 x 5 voxel merge gave a box over every slice again)
        comp_boxes = pp_component_boxes(lab, 1)
        if not per_kidney and comp_boxes:
            comp_boxes = [tuple(slice(min(b[ax].start for b in comp_boxes), max(b[ax].stop for b in comp_boxes))
                                for ax in range(3))]
        img_sp = np.asarray(image.spacing, float)
        margin = np.asarray(self.cfg.inference.roi_margin_mm) / img_sp
        fine_sp = self.pre.target_spacing
        sp = np.asarray(fine_sp if fine_sp is not None else image.spacing, float)  # the fine model's voxels
        # at least one inference window: a smaller crop costs the same one window and the window's
        # padding replaces real context (measured on the demo: crops down to 109 rows for a 128-row window
        # dropped held-out tumour Dice from 0.64 to 0.44)
        opts = inference_options(self.cfg)
        min_win = np.asarray(opts["roi_size"] if opts["method"] == "sliding_window" else
                             (opts["window"], 0, 0) if opts["method"] == "voting" else (0, 0, 0), float)
        need = min_win * sp / img_sp  # in this image's voxels
        shape = np.asarray(image.shape, float)
        boxes = []
        for cb in comp_boxes:
            lo = np.array([s.start for s in cb]) - 0.5  # voxel edges of the coarse box
            hi = np.array([s.stop - 1 for s in cb]) + 0.5
            corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
            vox = (np.linalg.inv(image.affine) @ (cctx.resampled_affine @ corners.T))[:3].T
            v_lo, v_hi = vox.min(0) - margin, vox.max(0) + margin
            if roi.enabled and roi.size_hw is not None:
                for ax in (1, 2):
                    half = max(roi.size_hw[ax - 1] * sp[ax] / img_sp[ax] / 2.0,
                               (v_hi[ax] - v_lo[ax]) / 2.0)  # grown to the component plus margin
                    c = (vox[:, ax].min() + vox[:, ax].max()) / 2.0
                    v_lo[ax], v_hi[ax] = c - half, c + half
            grow = np.maximum(0.0, need - (v_hi - v_lo)) / 2.0  # to at least one window, centred
            v_lo, v_hi = v_lo - grow, v_hi + grow
            shift = np.maximum(0.0, -v_lo) - np.maximum(0.0, v_hi - (shape - 1))  # moved inside the volume
            v_lo, v_hi = v_lo + shift, v_hi + shift
            box = tuple(slice(max(0, int(np.floor(a))), min(n, int(np.ceil(b)) + 1))
                        for a, b, n in zip(v_lo, v_hi, image.shape))
            if all(s.stop - s.start >= 2 for s in box):
                boxes.append(box)
        return boxes  # type: ignore[return-value]

    def predict_file(self, src: str | Path, dst: str | Path) -> Path:
        image = read_volume(src)
        return write_volume(self.predict_volume(image), dst)


def pp_component_boxes(lab: np.ndarray, merge: Any = 0) -> list[tuple[slice, slice, slice]]:
    """Tight boxes of the (up to two) largest foreground components of a coarse label map (components within
    ``merge`` voxels of each other count as one)."""
    from ctdl.data import preprocess as pp

    return pp.component_boxes(lab, 0, merge=merge)


def _crop_volume(image: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """A crop of ``image`` on its own grid (origin moved so world coordinates are unchanged)."""
    from ctdl.data import preprocess as pp

    return pp.crop(image, box)


def predict_paths(model: str | Path, inputs: str | Path, output: str | Path, device: str = "auto") -> list[Path]:
    """`ctdl predict`: a file, a DICOM series folder, a KiTS19 folder or a folder of volumes."""
    from ctdl.data.datasets import is_kits19_root

    dev = _device(device)
    predictor = Predictor.from_checkpoint(model, device=dev)
    src = Path(inputs)
    out = Path(output)
    if not src.exists():
        raise InputError(f"{src}: input not found")
    jobs: list[tuple[Path, Path]] = []
    if src.is_dir() and is_kits19_root(src):
        for c in kits19_cases(src, require_images=True):
            jobs.append((c.image, out / f"{c.case_id}.nii.gz"))  # type: ignore[arg-type]
    elif src.is_dir() and any(p.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha")) for p in src.iterdir()):
        for p in sorted(src.iterdir()):
            if p.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
                jobs.append((p, out / (p.name.split(".")[0] + ".nii.gz")))
    else:  # a file or a DICOM series folder
        dst = out if out.name.lower().endswith((".nii", ".nii.gz")) else out / (src.name.split(".")[0] + ".nii.gz")
        jobs.append((src, dst))
    written = []
    for s, d in tqdm(jobs, desc="predict", disable=None if len(jobs) > 1 else True):
        written.append(predictor.predict_file(s, d))
    return written


# -- evaluation ------------------------------------------------------------------------------
def evaluate_pair(pred_path: str | Path, truth_path: str | Path | None, cfg: ExperimentConfig | None,
                  case_id: str, classes: list[str] | None = None, kidney_includes_tumor: bool | None = None,
                  class_weights: list[float] | None = None) -> dict[str, Any]:
    """Metrics of one case; with ``class_weights`` also the thesis' JC_w (``weighted_jaccard``)."""
    from ctdl.metrics.segmentation import evaluate_case, weighted_jaccard_labels

    pred = read_volume(pred_path)
    if truth_path is None:
        raise InputError(f"case {case_id}: no ground-truth label to evaluate against")
    truth = read_volume(truth_path)
    if pred.shape != truth.shape:
        raise InputError(f"{pred_path}: prediction shape {pred.shape} differs from truth {truth_path} {truth.shape}")
    names = classes or (list(cfg.data.classes) if cfg else ["background", "kidney", "tumor"])
    kit = kidney_includes_tumor if kidney_includes_tumor is not None else (cfg.evaluation.kidney_includes_tumor if cfg else False)
    row = evaluate_case(pred.array.astype(np.int64), truth.array.astype(np.int64), truth.spacing,
                        class_names={i: n for i, n in enumerate(names) if i > 0}, kidney_includes_tumor=kit)
    if class_weights is not None:
        row["weighted_jaccard"] = weighted_jaccard_labels(pred.array, truth.array, class_weights)
    return {"case_id": case_id, **row}


def _write_metrics(rows: list[dict[str, Any]], out_dir: Path, cfg: ExperimentConfig | None) -> dict[str, float]:
    """Per-case and summary CSVs; returns the mean of each metric."""
    from ctdl.metrics.segmentation import summarize, write_metrics_csv, write_summary_csv

    write_metrics_csv(rows, out_dir / "metrics.csv")
    summary = summarize(rows)
    write_summary_csv(summary, out_dir / "metrics_summary.csv")
    return {name: stats["mean"] for name, stats in summary.items()}


def evaluate_paths(pred: str | Path, truth: str | Path, output: str | Path | None = None,
                   classes: Iterable[str] = ("background", "kidney", "tumor"), kidney_includes_tumor: bool = False
                   ) -> list[dict[str, Any]]:
    """`ctdl evaluate`: a prediction file/folder against a truth file/folder (KiTS19 layout or same names)."""
    from ctdl.data.datasets import is_kits19_root

    pred, truth = Path(pred), Path(truth)
    for p in (pred, truth):
        if not p.exists():
            raise InputError(f"{p}: not found")
    pairs: list[tuple[str, Path, Path]] = []
    if pred.is_file():
        pairs.append((pred.name.split(".")[0], pred, truth))
    else:
        if is_kits19_root(truth):
            truths = {c.case_id: c.label for c in kits19_cases(truth)}
        else:
            truths = {p.name.split(".")[0]: p for p in truth.iterdir() if p.name.lower().endswith((".nii", ".nii.gz"))}
        for p in sorted(pred.iterdir()):
            if not p.name.lower().endswith((".nii", ".nii.gz")):
                continue
            cid = p.name.split(".")[0]
            if cid not in truths or truths[cid] is None:
                raise InputError(f"{p}: no matching truth for case '{cid}' in {truth}")
            pairs.append((cid, p, truths[cid]))  # type: ignore[arg-type]
        if not pairs:
            raise InputError(f"{pred}: no .nii/.nii.gz predictions found")
    rows = [evaluate_pair(p, t, None, cid, list(classes), kidney_includes_tumor) for cid, p, t in pairs]
    if output is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        _write_metrics(rows, Path(output), None)
    return rows
