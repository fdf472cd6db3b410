"""Import a DLAE JSON config (every value a string) into a ctdl config dict, once.

Every DLAE section and key is either converted or refused with a message naming the file, the
``section.key`` and why (reference ``dlae_engine.md`` section 1). Keys DLAE read but ignored now
work as their names say: ``step_decay_*`` -> a step schedule, ``weight_loss_switch`` ->
balanced class weights, ``brightness_range``/``channel_shift_range`` -> applied augmentation,
``nms_maximum_output`` -> ``detection.max_outputs``, the type field of
``discriminator_optimizer``/``gan_optimizer`` -> the optimizer class of that network.

Keys that concern another model type (``bbd_options`` in a CNN config, the GAN learning-rate
strings in an FCN config) are read as DLAE requires every section, and not used. Keys are
accepted with spaces instead of underscores (the manual's spelling: ``config file``,
``rotation range``). Missing keys take the DLAE GUI default. :func:`dlae_import` also returns
notes on conversions whose meaning changed (printed by ``ctdl config import-dlae``).
"""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from ctdl.errors import ConfigError

log = logging.getLogger("ctdl")

# section -> key -> GUI default (reference section 1); the key sets are exactly DLAE's.
DLAE_KEYS: dict[str, dict[str, Any]] = {
    "config_file": {"model_signal": None, "type_signal": "Train", "input_shape": None},
    "paths": {k: "" for k in ("load_config", "load_checkpoint", "load_model", "train_X", "train_y",
                              "validation_X", "validation_y", "test_X")},
    "preprocessing": {"minimum_image_intensity": "0.0", "maximum_image_intensity": "4096.0", "image_context": "2D",
                      "normalization_type": "samplewise_unity_x", "categorical_switch": "False", "categories": "2",
                      "weight_loss_switch": "False", "repeat_X_switch": "False", "repeat_X_quantity": "3"},
    "augmentation": {"apply_augmentation_switch": "True", "featurewise_centering_switch": "False",
                     "samplewise_centering_switch": "False", "featurewise_normalization_switch": "False",
                     "samplewise_normalization_switch": "False", "width_shift": "0.0", "height_shift": "0.0",
                     "rotation_range": "0", "brightness_range": "None", "shear_range": "0.0", "zoom_range": "0.0",
                     "channel_shift_range": "0.0", "fill_mode": "nearest", "cval": "0.0",
                     "horizontal_flip_switch": "True", "vertical_flip_switch": "True", "rounds": "1",
                     "zca_epsilon": "None", "random_seed": "1"},
    "loss_function": {"loss": "categorical_crossentropy", "parameter1": "0.0", "parameter2": "0.0"},
    "learning_rate_schedule": {"learning_rate": "0.0001", "learning_rate_decay_factor": "0.0",
                               "decay_on_plateau_switch": "True", "decay_on_plateau_factor": "0.2",
                               "decay_on_plateau_patience": "3", "step_decay_switch": "False",
                               "step_decay_factor": "0.1", "step_decay_period": "3",
                               "discriminator_learning_rate": "0.0001:0.0", "gan_learning_rate": "0.0001:0.0"},
    "optimizer": {"optimizer": "Adam", "beta1": "0.9", "beta2": "0.999", "rho": "0.9", "momentum": "0.0",
                  "epsilon": "None", "discriminator_optimizer": "Adam:0.9:0.999:0.9:0.0:None",
                  "gan_optimizer": "Adam:0.9:0.999:0.9:0.0:None"},
    "training_configurations": {"hardware": "gpu", "number_of_gpus": "1", "early_stop_switch": "True",
                                "early_stop_patience": "10", "batch_size": "32", "epochs": "500",
                                "shuffle_data_switch": "True", "validation_split": "0.2"},
    "monitors": {"mse_switch": "False", "mae_switch": "False", "accuracy_switch": "True"},
    "save_configurations": {"save_model_switch": "False", "save_model_path": "", "save_csv_switch": "False",
                            "save_csv_path": "", "save_checkpoints_switch": "False", "save_checkpoints_path": "",
                            "save_checkpoints_frequency": "1", "save_tensorboard_switch": "False",
                            "save_tensorboard_path": "", "save_tensorboard_frequency": "5"},
    "bbd_options": {"scaling_type": "global", "scales": "0.1, 0.9", "aspect_ratios_type": "global",
                    "aspect_ratios": "(0.5, 1.0, 1.5, 2.0)", "number_classes": "1", "steps": "(8, 16, 32, 64, 128)",
                    "offsets": "None", "variances": "(0.1, 0.1, 0.2, 0.2)", "confidence_threshold": "0.5",
                    "iou_threshold": "0.5", "top_k": "200", "nms_maximum_output": "400",
                    "coordinates_type": "centroids", "two_boxes_for_AR1_switch": "False",
                    "clip_boxes_switch": "False", "normalize_coordinates_switch": "False",
                    "positive_iou_threshold": "0.5", "negative_iou_limit": "0.3"},
    "layers": {"serial_layer_list": [], "generator_layer_list": [], "discriminator_layer_list": []},
}

NORMALIZATIONS = (
    "samplewise_unity_x", "samplewise_negpos_x", "global_unity_x", "global_negpos_x",
    "samplewise_unity_xy", "samplewise_negpos_xy", "global_unity_xy", "global_negpos_xy", "none",
)
OPTIMIZERS = {"Adam": "adam", "NAdam": "nadam", "SGD": "sgd", "RMSprop": "rmsprop", "Adagrad": "adagrad",
              "Adadelta": "adadelta", "Adamax": "adamax"}
LOSSES = ("categorical_crossentropy", "weighted_categorical_crossentropy", "sparse_categorical_crossentropy",
          "mean_squared_error", "mean_absolute_error", "tversky", "pix2pix", "cyclegan", "ssd", "jaccard", "focal",
          "soft_dice")
TASKS = {"CNN": "classification", "FCN": "segmentation", "GAN": "gan", "BBD": "detection"}

# DLAE prebuilt model / backbone names -> ctdl registry names
_BACKBONES = ("VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2",
              "ResNeXt50", "ResNeXt101", "Xception", "InceptionV3", "InceptionResNetV2", "DenseNet121",
              "DenseNet169", "DenseNet201", "MobileNet", "MobileNetV2")
PREBUILT_NAMES: dict[str, str] = {
    "lenet5": "lenet5", "alexnet": "alexnet", "unet2d": "dlae_unet2d", "unet3d": "dlae_unet3d", "UNet": "dlae_unet2d",
    "UNet3D": "dlae_unet3d", "pix2pix": "pix2pix", "cyclegan": "cyclegan", "ssd": "ssd",
    **{b: b.lower() for b in _BACKBONES},
    **{b.lower(): b.lower() for b in _BACKBONES},
    **{f"{b.lower()}_unet": f"{b.lower()}_unet" for b in _BACKBONES},
    **{f"{b.lower()}_ssd": f"{b.lower()}_ssd" for b in _BACKBONES},
}


def prebuilt_model_name(name: str) -> str:
    """ctdl registry name of a DLAE prebuilt model or backbone name (``VGG16`` -> ``vgg16``, ``unet2d`` -> ``dlae_unet2d``)."""
    key = str(name).strip()
    if key in PREBUILT_NAMES:
        return PREBUILT_NAMES[key]
    low = key.lower()
    for k, v in PREBUILT_NAMES.items():
        if k.lower() == low:
            return v
    raise ConfigError(f"'{name}' is not a DLAE prebuilt model or backbone name; known: {', '.join(sorted(set(PREBUILT_NAMES)))}")


def _norm_key(k: str) -> str:
    return str(k).strip().replace(" ", "_")


def normalize_dlae_keys(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Sections and keys with the manual's spaces turned into the code's underscores; unknown names refused."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a DLAE config is a JSON object of sections")
    out: dict[str, dict[str, Any]] = {}
    for sec, body in raw.items():
        s = _norm_key(sec)
        if s not in DLAE_KEYS:
            raise ConfigError(f"{source}: {sec}: unknown DLAE section (known: {', '.join(DLAE_KEYS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {sec}: a DLAE section must be an object of key: value")
        known = {k.lower(): k for k in DLAE_KEYS[s]}
        sec_out = out.setdefault(s, {})
        for key, value in body.items():
            k = _norm_key(key)
            k = k if k in DLAE_KEYS[s] else known.get(k.lower(), k)
            if k not in DLAE_KEYS[s]:
                raise ConfigError(f"{source}: {s}.{key}: unknown DLAE key in section {s} "
                                  f"(known: {', '.join(DLAE_KEYS[s])})")
            sec_out[k] = value
    return out


class _Reader:
    """Typed access to DLAE string values; every error names the file and the section.key."""

    def __init__(self, raw: dict[str, dict[str, Any]], source: str) -> None:
        self.raw, self.source = raw, source

    def err(self, sec: str, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {sec}.{key}: {msg}")

    def get(self, sec: str, key: str) -> Any:
        value = self.raw.get(sec, {}).get(key, DLAE_KEYS[sec][key])
        if value is None:
            raise self.err(sec, key, "required key is missing")
        return value

    def text(self, sec: str, key: str) -> str:
        v = self.get(sec, key)
        return v.strip() if isinstance(v, str) else str(v)

    def flag(self, sec: str, key: str) -> bool:
        v = self.get(sec, key)
        if isinstance(v, bool):
            return v
        s = str(v).strip()
        if s == "":  # level 1 fills an empty boolean with its default
            s = str(DLAE_KEYS[sec][key])
        if s not in ("True", "False"):
            raise self.err(sec, key, f"expected 'True' or 'False', got {v!r}")
        return s == "True"

    def num(self, sec: str, key: str, kind: Callable[[Any], Any] = float, allow_none: bool = False) -> Any:
        v = self.get(sec, key)
        s = str(v).strip()
        if s in ("", "None"):
            if allow_none:
                return None
            s = str(DLAE_KEYS[sec][key])
            if s in ("", "None"):
                raise self.err(sec, key, "a number is required")
        try:
            x = float(s)
            if kind is int:
                if x != int(x):
                    raise ValueError
                return int(x)
            if not math.isfinite(x):
                raise ValueError
            return x
        except ValueError:
            raise self.err(sec, key, f"expected {'an integer' if kind is int else 'a number'}, got {v!r}") from None

    def literal(self, sec: str, key: str, allow_none: bool = True) -> Any:
        v = self.get(sec, key)
        if not isinstance(v, str):
            return v
        s = v.strip()
        if s in ("", "None"):
            if allow_none:
                return None
            raise self.err(sec, key, "a value is required")
        try:
            return ast.literal_eval(s)
        except (ValueError, SyntaxError):
            raise self.err(sec, key, f"expected a Python literal such as (1, 2) or 0.5, got {v!r}") from None

    def path(self, sec: str, key: str) -> str | None:
        s = self.text(sec, key)
        return s or None


def _floats(value: Any, sec_key: str, source: str, n: int | None = None) -> list[float]:
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {sec_key}: expected numbers, got {value!r}") from None
    if n is not None and len(out) != n:
        raise ConfigError(f"{source}: {sec_key}: expected {n} numbers, got {len(out)}")
    return out


def _range_pair(r: _Reader, key: str) -> tuple[list[float], list[float] | None]:
    """'a' or 'a, b' -> ([a], [b]) values for X and y."""
    v = r.literal("preprocessing", key, allow_none=False)
    vals = _floats(v, f"preprocessing.{key}", r.source)
    if len(vals) not in (1, 2):
        raise r.err("preprocessing", key, f"expected 'a' or 'a, b' (X, y), got {len(vals)} values")
    return vals[:1], vals[1:] or None


def _optimizer(r: _Reader, name_key: str, source_type: str, b1: float, b2: float, rho: float, mom: float,
               eps: float | None, lr: float, sec: str, key: str) -> dict[str, Any]:
    if source_type not in OPTIMIZERS:
        raise r.err(sec, key, f"unknown optimizer {source_type!r}; expected one of {', '.join(OPTIMIZERS)} "
                              "(exact spelling; DLAE's substring test accepted fragments)")
    name = OPTIMIZERS[source_type]
    if not (0 < rho < 1):
        raise r.err(sec, key, f"rho must lie in (0, 1), got {rho}")
    out: dict[str, Any] = {"name": name, "lr": lr, "betas": [b1, b2], "rho": rho,
                           "eps": 1e-7 if eps is None else eps, "weight_decay": 0.0}
    # Keras: momentum only in SGD (no Nesterov); Keras RMSprop has no momentum
    out["momentum"] = mom if name == "sgd" else 0.0
    out["nesterov"] = False
    return out


def _gan_optimizer(r: _Reader, key: str, lr_key: str) -> dict[str, Any]:
    spec = r.text("optimizer", key)
    parts = spec.split(":")
    if len(parts) != 6:
        raise r.err("optimizer", key, f"expected 'type:beta1:beta2:rho:momentum:epsilon', got {spec!r}")
    try:
        b1, b2, rho, mom = (float(p) for p in parts[1:5])
        eps = None if parts[5].strip() in ("", "None") else float(parts[5])
    except ValueError:
        raise r.err("optimizer", key, f"fields 2-6 must be numbers (epsilon may be None), got {spec!r}") from None
    lr_spec = r.text("learning_rate_schedule", lr_key)
    lr_parts = lr_spec.split(":")
    try:
        lr = float(lr_parts[0])
        decay = float(lr_parts[1]) if len(lr_parts) > 1 and lr_parts[1].strip() else 0.0
        if len(lr_parts) > 2:
            raise ValueError
    except ValueError:
        raise r.err("learning_rate_schedule", lr_key, f"expected 'lr:decay', got {lr_spec!r}") from None
    if decay != 0.0:
        raise r.err("learning_rate_schedule", lr_key, f"a per-network learning-rate decay ({decay}) has no ctdl "
                    "equivalent for GAN optimizers; set it to 0 (the GAN trainer uses a constant learning rate)")
    return _optimizer(r, key, parts[0].strip(), b1, b2, rho, mom, eps, lr, "optimizer", key)


def _layer_list(r: _Reader, key: str) -> list[str]:
    v = r.get("layers", key)
    if isinstance(v, str):
        try:
            v = ast.literal_eval(v) if v.strip() else []
        except (ValueError, SyntaxError):
            raise r.err("layers", key, "expected a JSON array of layer strings") from None
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise r.err("layers", key, f"expected a JSON array of layer strings, got {type(v).__name__}")
    return [s.strip() for s in v]


def _input_shape_of(layers: list[str]) -> tuple[int, ...] | None:
    for s in layers:
        name, _, arg = s.partition(":")
        if name.strip() == "Input":
            try:
                return tuple(int(x) for x in ast.literal_eval(arg))
            except (ValueError, SyntaxError, TypeError):
                return None
        if name.strip() in _BACKBONES:
            fields = s.split(":")
            if len(fields) >= 4:
                try:
                    return tuple(int(x) for x in ast.literal_eval(fields[3]))
                except (ValueError, SyntaxError, TypeError):
                    return None
    return None


def _max_value(text: str) -> int:
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return 1
    vals = v if isinstance(v, (tuple, list)) else [v]
    try:
        return max(1, max(int(x) for x in vals))
    except (TypeError, ValueError):
        return 1


def layer_list_divisor(layers: list[str]) -> int:
    """The factor an input size must divide by for a layer list: the deepest cumulative down-sampling
    (pool and conv strides, divided by upsampling), so whole images can be padded for inference."""
    factor, deepest = 1, 1
    for s in layers:
        f = s.split(":")
        name = f[0].strip()
        if name.endswith(("pooling 2D", "pooling 3D")) and not name.startswith("Global") and len(f) >= 3:
            factor *= _max_value(f[2])
        elif name.startswith(("Convolution", "Separable convolution", "Depthwise")) and len(f) >= 4:
            factor *= _max_value(f[3])
        elif name.startswith(("Resize convolution", "Upsample", "Transpose convolution")):
            up = _max_value(f[4] if name.startswith("Resize") and len(f) >= 5 else f[3] if name.startswith("Transpose")
                            and len(f) >= 4 else f[1] if len(f) >= 2 else "1")
            factor = max(1, factor // up)
        elif name in _BACKBONES:
            factor *= 32
        deepest = max(deepest, factor)
    return deepest


def _model_section(r: _Reader, layers: list[str], key: str) -> dict[str, Any]:
    """A layer list -> model section (a lone prebuilt name -> that registered model)."""
    if not layers:
        raise r.err("layers", key, "the layer list is empty; this model type needs it")
    if len(layers) == 1 and ":" not in layers[0]:
        return {"name": prebuilt_model_name(layers[0])}
    if not layers[0].startswith("Input:") and layers[0].split(":")[0].strip() not in _BACKBONES:
        raise r.err("layers", f"{key}[0]", f"entry 0 must be 'Input:<shape>' or a backbone, got {layers[0]!r}")
    # params.divisible_by: what segmentation inference pads whole images to (the layer list is not registered)
    out: dict[str, Any] = {"name": "layerlist", "layers": list(layers), "params": {"divisible_by": layer_list_divisor(layers)}}
    shape = _input_shape_of(layers)
    if shape:
        out["in_channels"] = int(shape[-1])
    return out


def dlae_import(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Convert a DLAE config dict; returns (ctdl config dict, notes about changed meanings)."""
    src = str(source)
    raw = normalize_dlae_keys(raw, src)
    for sec in DLAE_KEYS:
        if sec not in raw:
            log.info("%s: section %s missing; DLAE GUI defaults used", src, sec)
    r = _Reader(raw, src)
    notes: list[str] = []

    # -- config_file -------------------------------------------------------------------------
    signal = r.text("config_file", "model_signal")
    if signal not in TASKS:
        raise r.err("config_file", "model_signal", f"expected CNN, FCN, GAN or BBD, got {signal!r}")
    type_signal = r.text("config_file", "type_signal")
    if type_signal not in ("Train", "Train from Checkpoint", "Inference"):
        raise r.err("config_file", "type_signal", f"expected Train, Train from Checkpoint or Inference, got {type_signal!r}")
    if type_signal != "Train":
        notes.append(f"config_file.type_signal {type_signal!r}: the run mode is a command in ctdl "
                     "(`ctdl train --resume` continues a run, `ctdl predict` infers); the config describes the experiment")
    shape_v = r.literal("config_file", "input_shape", allow_none=False)
    if not isinstance(shape_v, tuple) or len(shape_v) not in (3, 4) or not all(isinstance(s, int) and s > 0 for s in shape_v):
        raise r.err("config_file", "input_shape", f"expected (rows, cols, ch) or (rows, cols, slices, ch), got {shape_v!r}")
    loss = r.text("loss_function", "loss")
    if loss not in LOSSES:
        raise r.err("loss_function", "loss", f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    task = TASKS[signal]
    if signal == "CNN" and loss in ("mean_squared_error", "mean_absolute_error"):
        task = "regression"
    if signal == "FCN" and loss in ("mean_squared_error", "mean_absolute_error"):
        raise r.err("loss_function", "loss", f"{loss} with an FCN is pixel-wise regression, which ctdl's segmentation "
                    "task does not do (it predicts label maps); use a GAN config (pix2pix) for image-to-image regression")
    need = {"pix2pix": "GAN", "cyclegan": "GAN", "ssd": "BBD"}
    if loss in need and signal != need[loss]:
        raise r.err("loss_function", "loss", f"{loss} is for model_signal {need[loss]}, not {signal}")
    if signal == "GAN" and loss not in ("pix2pix", "cyclegan"):
        raise r.err("loss_function", "loss", f"a GAN trains with loss pix2pix or cyclegan, got {loss!r}")
    if signal == "BBD" and loss != "ssd":
        raise r.err("loss_function", "loss", f"a BBD trains with loss ssd, got {loss!r}")
    context = r.text("preprocessing", "image_context")
    if context not in ("2D", "3D"):
        raise r.err("preprocessing", "image_context", f"expected 2D or 3D, got {context!r}")
    if signal == "BBD" and context != "2D":
        raise r.err("preprocessing", "image_context", "bounding-box detection is 2D only (DLAE built no 3D generator)")

    cfg: dict[str, Any] = {"name": Path(src).stem or "dlae", "task": task}
    cfg["seed"] = r.num("augmentation", "random_seed", int)

    # -- paths ---------------------------------------------------------------------------------
    for key in ("load_config", "load_checkpoint"):
        if r.path("paths", key):
            why = ("DLAE never used it" if key == "load_config" else
                   "a Keras checkpoint cannot continue a PyTorch run; continue a ctdl run with `ctdl train --resume`")
            raise r.err("paths", key, f"not supported ({why}); set it to \"\"")
    data: dict[str, Any] = {"format": "hdf5"}
    for dkey, ckey in (("train_X", "train_x"), ("train_y", "train_y"), ("validation_X", "val_x"),
                       ("validation_y", "val_y"), ("test_X", "test_x")):
        p = r.path("paths", dkey)
        if p:
            data[ckey] = p
    if ("val_x" in data) != ("val_y" in data):
        raise r.err("paths", "validation_X", "validation_X and validation_y must be given together")
    model_path = r.path("paths", "load_model")

    # -- preprocessing ---------------------------------------------------------------------------
    norm = r.text("preprocessing", "normalization_type")
    if norm not in NORMALIZATIONS:
        raise r.err("preprocessing", "normalization_type", f"unknown type {norm!r}; expected one of {', '.join(NORMALIZATIONS)}")
    pre: dict[str, Any] = {"normalization": norm, "reorient": False, "hu_window": None, "spacing": None}
    if norm.startswith("global"):
        lo, lo_y = _range_pair(r, "minimum_image_intensity")
        hi, hi_y = _range_pair(r, "maximum_image_intensity")
        pre["intensity_range"] = [lo[0], hi[0]]
        if norm.endswith("_xy"):
            if lo_y is None or hi_y is None:
                raise r.err("preprocessing", "minimum_image_intensity",
                            f"{norm} also scales y: give 'min_x, min_y' and 'max_x, max_y'")
            pre["label_range"] = [lo_y[0], hi_y[0]]
    categories = r.num("preprocessing", "categories", int)
    if categories < 1:
        raise r.err("preprocessing", "categories", f"expected >= 1, got {categories}")
    r.flag("preprocessing", "categorical_switch")  # labels are class indices in ctdl; losses one-hot them
    repeat = 1
    if r.flag("preprocessing", "repeat_X_switch"):
        repeat = r.num("preprocessing", "repeat_X_quantity", int)
        if repeat < 1:
            raise r.err("preprocessing", "repeat_X_quantity", f"expected >= 1, got {repeat}")
        pre["repeat_channels"] = repeat
    weight_loss = r.flag("preprocessing", "weight_loss_switch")

    # -- augmentation -----------------------------------------------------------------------------
    a = "augmentation"
    fc, sc = r.flag(a, "featurewise_centering_switch"), r.flag(a, "samplewise_centering_switch")
    fn, sn = r.flag(a, "featurewise_normalization_switch"), r.flag(a, "samplewise_normalization_switch")
    # featurewise after samplewise equals featurewise alone (the scalar shift/scale is absorbed)
    pre["center"] = "featurewise" if fc else "samplewise" if sc else "none"
    pre["std_normalize"] = "featurewise" if fn else "samplewise" if sn else "none"
    zca = r.num(a, "zca_epsilon", float, allow_none=True)
    if zca is not None:
        if zca <= 0:
            raise r.err(a, "zca_epsilon", f"expected a positive epsilon or None, got {zca}")
        pre["zca_epsilon"] = zca
    zoom = r.num(a, "zoom_range")
    if not 0 <= zoom < 1:
        raise r.err(a, "zoom_range", f"expected 0 <= z < 1 (zoom factors U(1 - z, 1 + z) must stay positive), got {zoom}")
    fill = r.text(a, "fill_mode")
    if fill not in ("nearest", "constant", "reflect", "wrap"):
        raise r.err(a, "fill_mode", f"expected nearest, constant, reflect or wrap, got {fill!r}")
    bright = r.literal(a, "brightness_range")
    if bright is not None:
        bright = _floats(bright, f"{a}.brightness_range", src, 2)
        if not 0 <= bright[0] <= bright[1]:
            raise r.err(a, "brightness_range", f"expected (low, high) with 0 <= low <= high, got {bright}")
    flips = ([1] if r.flag(a, "vertical_flip_switch") else []) + ([2] if r.flag(a, "horizontal_flip_switch") else [])
    for key in ("width_shift", "height_shift", "rotation_range", "shear_range", "channel_shift_range"):
        if r.num(a, key) < 0:
            raise r.err(a, key, "must be >= 0")
    aug = {
        "enabled": r.flag(a, "apply_augmentation_switch"), "affine": "dlae", "prob": 1.0,
        "rotation_deg": r.num(a, "rotation_range"), "shear_deg": r.num(a, "shear_range"), "zoom": zoom,
        "height_shift": r.num(a, "height_shift"), "width_shift": r.num(a, "width_shift"),
        "flip_axes": flips, "flip_prob": 0.5, "fill_mode": fill, "cval": r.num(a, "cval"),
        "brightness_range": bright, "channel_shift": r.num(a, "channel_shift_range"),
        "rounds": r.num(a, "rounds", int), "shift_px": 0, "intensity_scale": 0.0, "intensity_shift": 0.0,
        "noise_std": 0.0,
    }
    if aug["rounds"] < 1:
        raise r.err(a, "rounds", f"expected >= 1, got {aug['rounds']}")
    if signal == "BBD" and aug["enabled"]:
        notes.append("augmentation: a BBD used its own photometric/geometric chain in DLAE; ctdl's detection task "
                     "applies the converted affine settings")

    # -- loss ------------------------------------------------------------------------------------
    p1, p2 = r.num("loss_function", "parameter1"), r.num("loss_function", "parameter2")
    loss_cfg: dict[str, Any] = {}
    if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        loss_cfg = {"name": "cross_entropy"}
    elif loss == "weighted_categorical_crossentropy":
        loss_cfg = {"name": "weighted_cross_entropy"}
        weight_loss = True
    elif loss == "mean_squared_error":
        loss_cfg = {"name": "mse"}
    elif loss == "mean_absolute_error":
        loss_cfg = {"name": "mae"}
    elif loss == "tversky":
        loss_cfg = {"name": "tversky", "params": {"alpha": p1, "beta": p2, "batch": True}}
    elif loss == "jaccard":
        loss_cfg = {"name": "jaccard", "params": {"smooth": p1 if p1 > 0 else 1e-5}}
    elif loss == "focal":
        loss_cfg = {"name": "focal", "params": {"alpha": p1, "gamma": p2}}
    elif loss == "soft_dice":
        loss_cfg = {"name": "dice", "params": {"batch": True, "smooth": p1 if p1 > 0 else 1e-5}}
    elif loss == "ssd":
        loss_cfg = {"name": "ssd"}
    if task == "classification" and loss_cfg.get("name") in ("cross_entropy", "weighted_cross_entropy"):
        loss_cfg["name"] = "categorical_cross_entropy"  # (N, K) logits; takes class weights
    if weight_loss:
        if task not in ("segmentation", "classification"):
            raise r.err("preprocessing", "weight_loss_switch", f"class weighting needs class labels; task {task} has none")
        if loss_cfg.get("name") == "cross_entropy":
            loss_cfg["name"] = "weighted_cross_entropy"  # the segmentation CE that takes class weights
        elif loss_cfg.get("name") not in ("weighted_cross_entropy", "categorical_cross_entropy", "focal"):
            raise r.err("preprocessing", "weight_loss_switch", f"loss {loss} takes no class weights in ctdl; "
                        "use categorical_crossentropy or focal with weighting, or switch weighting off")
        loss_cfg["class_weights"] = "balanced"  # w_c = N / (C * count_c), the rule DLAE's weighted CE used
    if loss_cfg and task != "gan":
        cfg["loss"] = loss_cfg

    # -- optimizer + learning rate ------------------------------------------------------------------
    o = "optimizer"
    b1, b2, rho, mom = r.num(o, "beta1"), r.num(o, "beta2"), r.num(o, "rho"), r.num(o, "momentum")
    eps = r.num(o, "epsilon", float, allow_none=True)
    lr = r.num("learning_rate_schedule", "learning_rate")
    if lr <= 0:
        raise r.err("learning_rate_schedule", "learning_rate", f"must be > 0, got {lr}")
    cfg["optimizer"] = _optimizer(r, "optimizer", r.text(o, "optimizer"), b1, b2, rho, mom, eps, lr, o, "optimizer")
    ls = "learning_rate_schedule"
    decay = r.num(ls, "learning_rate_decay_factor")
    plateau = r.flag(ls, "decay_on_plateau_switch")
    step = r.flag(ls, "step_decay_switch")
    chosen = [k for k, on in (("learning_rate_decay_factor", decay > 0), ("decay_on_plateau_switch", plateau),
                              ("step_decay_switch", step)) if on]
    if len(chosen) > 1:
        raise r.err(ls, chosen[1], f"ctdl runs one learning-rate schedule; {' and '.join(chosen)} are both on - keep one")
    sched: dict[str, Any] = {"name": "none"}
    if decay > 0:
        sched = {"name": "time_decay", "decay": decay}
        notes.append("learning_rate_schedule.learning_rate_decay_factor: Keras decayed per update; ctdl's "
                     "time_decay applies lr0 / (1 + decay * epoch) per epoch")
    elif plateau:
        factor = r.num(ls, "decay_on_plateau_factor")
        if not 0 < factor < 1:
            raise r.err(ls, "decay_on_plateau_factor", f"expected 0 < factor < 1, got {factor}")
        patience = r.num(ls, "decay_on_plateau_patience", int)
        sched = {"name": "plateau", "factor": factor, "patience": patience, "cooldown": patience, "min_lr": 1e-9}
    elif step:
        factor = r.num(ls, "step_decay_factor")
        period = r.num(ls, "step_decay_period", int)
        if factor <= 0 or period < 1:
            raise r.err(ls, "step_decay_factor", f"expected factor > 0 and period >= 1, got {factor}, {period}")
        sched = {"name": "step", "gamma": factor, "step_size": period}  # lr0 * factor ** floor(epoch / period)
    cfg["schedule"] = sched

    # -- training ------------------------------------------------------------------------------------
    t = "training_configurations"
    hardware = r.text(t, "hardware")
    if hardware not in ("gpu", "multi-gpu", "cpu"):
        raise r.err(t, "hardware", f"expected gpu, multi-gpu or cpu, got {hardware!r}")
    gpus = r.num(t, "number_of_gpus", int)
    if gpus > 1 or (hardware == "multi-gpu" and gpus != 1):
        raise r.err(t, "number_of_gpus", f"ctdl trains on one device; got {gpus} GPUs ({hardware}) - set 1")
    split = r.num(t, "validation_split")
    if not 0 <= split < 1:
        raise r.err(t, "validation_split", f"expected 0 <= split < 1, got {split}")
    batch, epochs = r.num(t, "batch_size", int), r.num(t, "epochs", int)
    if batch < 1 or epochs < 1:
        raise r.err(t, "batch_size" if batch < 1 else "epochs", "must be >= 1")
    training: dict[str, Any] = {
        "epochs": epochs, "batch_size": batch, "shuffle": r.flag(t, "shuffle_data_switch"),
        "device": "cpu" if hardware == "cpu" else "auto",
        "early_stopping": {"enabled": r.flag(t, "early_stop_switch"), "patience": max(1, r.num(t, "early_stop_patience", int)),
                           "min_delta": 0.0, "restore_best": False},
    }
    data["split"] = {"train": round(1.0 - split, 10), "val": split, "test": 0.0}

    # -- monitors -----------------------------------------------------------------------------------
    metrics = [m for m, k in (("accuracy", "accuracy_switch"), ("mse", "mse_switch"), ("mae", "mae_switch"))
               if r.flag("monitors", k)]
    if task == "segmentation":
        metrics = ["dice"] + metrics
    cfg["monitors"] = {"metrics": metrics}

    # -- saving ---------------------------------------------------------------------------------------
    sv = "save_configurations"
    ck: dict[str, Any] = {"save_last": True, "save_best": True, "every_n": 0,
                          "csv": True, "tensorboard": r.flag(sv, "save_tensorboard_switch")}
    r.flag(sv, "save_csv_switch")  # the run folder always holds history.csv (run-folder contract)
    model_out = r.path(sv, "save_model_path") if r.flag(sv, "save_model_switch") else None
    if model_out:
        cfg["name"] = Path(model_out.replace("\\", "/")).stem
    if r.flag(sv, "save_checkpoints_switch"):
        freq = r.num(sv, "save_checkpoints_frequency", int)
        if freq < 1:
            raise r.err(sv, "save_checkpoints_frequency", f"expected >= 1, got {freq}")
        training["val_every"] = freq  # the best checkpoint is checked at each validation
    for key in ("save_csv_path", "save_checkpoints_path", "save_tensorboard_path", "save_model_path"):
        if r.path(sv, key):
            notes.append(f"{sv}.{key}: ctdl writes every output into the run folder <output_dir>/<name> "
                         f"(history.csv, best.pt, last.pt, tensorboard/); {r.path(sv, key)!r} is not used")
    r.num(sv, "save_tensorboard_frequency", int)
    cfg["checkpoint"] = ck
    cfg["training"] = training

    # -- model / task sections -------------------------------------------------------------------------
    serial = _layer_list(r, "serial_layer_list")
    gen = _layer_list(r, "generator_layer_list")
    disc = _layer_list(r, "discriminator_layer_list")
    h, w = shape_v[0], shape_v[1]
    if signal in ("CNN", "FCN", "BBD"):
        cfg["model"] = _model_section(r, serial, "serial_layer_list")
        if signal != "FCN":
            cfg["model"].pop("params", None)
        if signal == "BBD" and "layers" in cfg["model"]:
            notes.append("layers.serial_layer_list: kept in model.layers; a detection run builds detection.backbone "
                         "('ssd' = DLAE's prebuilt VGG-SSD512) unless the detection task builds layer lists")
        if model_path:
            cfg["model"]["pretrained"] = model_path
        net_shape = _input_shape_of(serial)
        if net_shape and tuple(net_shape) != tuple(shape_v) and signal == "BBD":
            notes.append(f"config_file.input_shape {shape_v} differs from the network input {net_shape}; "
                         "DLAE used input_shape only for the anchors, as ctdl's detection.input_size does")
    if signal in ("CNN", "FCN"):
        names = ["background"] + [f"class_{i}" for i in range(1, categories)] if signal == "FCN" else \
            [f"class_{i}" for i in range(categories)]
        if task != "regression":
            data["classes"] = names
    if signal == "FCN":
        cfg["sampling"] = {"mode": "slices2d" if context == "2D" else "whole"}
    if signal == "GAN":
        if not gen or not disc:
            raise r.err("layers", "generator_layer_list" if not gen else "discriminator_layer_list",
                        "a GAN needs both a generator and a discriminator layer list")
        gan: dict[str, Any] = {"mode": loss, "adversarial_loss": "lsgan",
                               "generator": _gan_net(r, gen, "generator_layer_list"),
                               "discriminator": _gan_net(r, disc, "discriminator_layer_list"),
                               "g_optimizer": _gan_optimizer(r, "gan_optimizer", "gan_learning_rate"),
                               "d_optimizer": _gan_optimizer(r, "discriminator_optimizer", "discriminator_learning_rate")}
        if loss == "pix2pix":
            gan["lambda_l1"] = p1
        else:
            gan["lambda_cycle"], gan["lambda_identity"] = p1, p2
        cfg["gan"] = gan
        if context == "2D":
            cfg["sampling"] = {"mode": "slices2d"}
        else:
            cfg["sampling"] = {"mode": "patch3d", "patch_size": [shape_v[2], h, w]}
    if signal == "BBD":
        cfg["detection"] = _detection(r, (h, w), p1, p2)
        n = r.num("bbd_options", "number_classes", int)
        if n < 1:
            raise r.err("bbd_options", "number_classes", f"expected >= 1 positive classes, got {n}")
        data["classes"] = ["background"] + [f"class_{i}" for i in range(1, n + 1)]
    if signal == "GAN" and model_path:
        raise r.err("paths", "load_model", "a GAN generator is loaded from a ctdl run (`ctdl predict RUN/best.pt`), "
                                           "not from the config")
    cfg["data"] = data
    cfg["preprocessing"] = pre
    cfg["augmentation"] = aug
    return cfg, notes


def _gan_net(r: _Reader, layers: list[str], key: str) -> dict[str, Any]:
    if len(layers) == 1 and ":" not in layers[0]:
        return {"name": prebuilt_model_name(layers[0])}
    if not layers[0].startswith("Input:"):
        raise r.err("layers", f"{key}[0]", f"entry 0 must be 'Input:<shape>', got {layers[0]!r}")
    return {"layers": list(layers)}


def _pairs(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return v
    vals = list(v)
    return [list(x) if isinstance(x, (list, tuple)) else x for x in vals]


def _detection(r: _Reader, size: tuple[int, int], p1: float, p2: float) -> dict[str, Any]:
    b = "bbd_options"
    scaling = r.text(b, "scaling_type")
    if scaling not in ("global", "per predictor layer"):
        raise r.err(b, "scaling_type", f"expected 'global' or 'per predictor layer', got {scaling!r}")
    ar_type = r.text(b, "aspect_ratios_type")
    if ar_type not in ("global", "per predictor layer"):
        raise r.err(b, "aspect_ratios_type", f"expected 'global' or 'per predictor layer', got {ar_type!r}")
    scales = r.literal(b, "scales", allow_none=False)
    scales = _floats(scales, f"{b}.scales", r.source)
    ars = r.literal(b, "aspect_ratios", allow_none=False)
    if ar_type == "global":
        ars = _floats(ars, f"{b}.aspect_ratios", r.source)
    else:
        if not isinstance(ars, (list, tuple)) or not all(isinstance(x, (list, tuple)) for x in ars):
            raise r.err(b, "aspect_ratios", "per predictor layer needs a tuple of tuples, one per hook")
        ars = [_floats(x, f"{b}.aspect_ratios", r.source) for x in ars]
    coords = r.text(b, "coordinates_type")
    if coords not in ("centroids", "minmax", "corners"):
        raise r.err(b, "coordinates_type", f"expected centroids, minmax or corners, got {coords!r}")
    variances = _floats(r.literal(b, "variances", allow_none=False), f"{b}.variances", r.source, 4)
    if any(v <= 0 for v in variances):
        raise r.err(b, "variances", f"must be > 0, got {variances}")
    top_k = r.num(b, "top_k", int)
    max_out = r.num(b, "nms_maximum_output", int)
    if top_k < 0 or max_out < 1:
        raise r.err(b, "top_k" if top_k < 0 else "nms_maximum_output", "top_k must be >= 0 and nms_maximum_output >= 1")
    if p1 < 0 or p2 < 0:
        raise r.err("loss_function", "parameter1", "ssd: parameter1 (neg:pos ratio) and parameter2 (alpha) must be >= 0")
    return {
        "input_size": [int(size[0]), int(size[1])],
        "scaling_type": "global" if scaling == "global" else "per_layer",
        "scales": scales,
        "aspect_ratios_type": "global" if ar_type == "global" else "per_layer",
        "aspect_ratios": ars,
        "two_boxes_for_ar1": r.flag(b, "two_boxes_for_AR1_switch"),
        "steps": _pairs(r.literal(b, "steps")),
        "offsets": _pairs(r.literal(b, "offsets")),
        "clip_boxes": r.flag(b, "clip_boxes_switch"),
        "normalize_coords": r.flag(b, "normalize_coordinates_switch"),
        "variances": variances,
        "pos_iou_threshold": r.num(b, "positive_iou_threshold"),
        "neg_iou_limit": r.num(b, "negative_iou_limit"),
        "neg_pos_ratio": float(int(p1)),  # DLAE: int(parameter1)
        "alpha": p2,
        "confidence_threshold": r.num(b, "confidence_threshold"),
        "iou_threshold": r.num(b, "iou_threshold"),
        "top_k": top_k,
        "max_outputs": max_out,
    }


def dlae_to_dict(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """DLAE config dict -> ctdl config dict (validate with ``config_from_dict``); notes are logged."""
    cfg, notes = dlae_import(raw, source)
    for n in notes:
        log.warning("%s: %s", source, n)
    return cfg


def is_dlae_config(data: dict[str, Any]) -> bool:
    """A DLAE config has a ``config_file`` (or ``config file``) section and no ctdl ``data`` section."""
    keys = {_norm_key(k) for k in data}
    return "config_file" in keys and "data" not in keys


def apply_dlae_overrides(raw: dict[str, Any], overrides: Iterable[str] | None, source: str
                         ) -> tuple[dict[str, Any], list[str]]:
    """Split ``--set`` items: DLAE key paths (``paths.train_X=...``) are written into the DLAE dict
    before conversion (so they are parsed exactly like the file's own values); the rest are ctdl
    key paths, returned to be applied after conversion."""
    raw = {_norm_key(k): dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    rest: list[str] = []
    for item in overrides or ():
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if sep and len(parts) == 2 and parts[0] in DLAE_KEYS:
            sec, k = parts
            known = {x.lower(): x for x in DLAE_KEYS[sec]}
            if k in DLAE_KEYS[sec] or k.lower() in known:
                k = k if k in DLAE_KEYS[sec] else known[k.lower()]
                section = raw.setdefault(sec, {})
                if k.endswith("_layer_list"):
                    try:
                        section[k] = ast.literal_eval(value)
                    except (ValueError, SyntaxError):
                        raise ConfigError(f"--set {key}: expected a list of layer strings") from None
                else:
                    section[k] = value.strip()
                continue
            if sec == "paths" or sec not in ("preprocessing", "augmentation", "optimizer"):
                raise ConfigError(f"--set {key}: {sec} is a DLAE section without key '{k}' "
                                  f"(its keys: {', '.join(DLAE_KEYS[sec])}); or give a ctdl key path, e.g. data.train_x")
        rest.append(item)
    return raw, rest


__all__ = [
    "DLAE_KEYS",
    "PREBUILT_NAMES",
    "apply_dlae_overrides",
    "dlae_import",
    "dlae_to_dict",
    "is_dlae_config",
    "layer_list_divisor",
    "normalize_dlae_keys",
    "prebuilt_model_name",
]
