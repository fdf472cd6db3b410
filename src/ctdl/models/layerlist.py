"""DLAE's layer-list language: ``"Convolution 2D:64:(3, 3):(1, 1):same:(1, 1):he_normal:None:None:0.001:0.001"``.

A DLAE model is a serial list of strings ``Name[:field...]`` (manual section 6). This module

* parses each string into a small typed spec (:func:`parse_layer`; errors name the list index, the string and
  what was expected),
* computes every entry's output shape with Keras' rules in Keras' channels-last layout
  (:func:`layer_output_shape`, :func:`merge_output_shape`),
* builds a PyTorch module for the whole list (:func:`build_layer_list`), channels-first inside but with Keras'
  channels-last *semantics* where the layout shows (Flatten, Reshape, Permute, Dense on a feature map, softmax),
  so shapes and flatten orders equal what Keras builds for the same list,
* exposes the L1/L2 kernel and activity penalties (:func:`regularization_loss`) for the trainer to add.

Behaviour differs from the original code (reference ``dlae_engine.md`` section 10) where that code was broken:
depthwise separable convolutions build (bug 15), ``Permute`` parses its tuple (15), 3D layers with an empty
dilation get ``(1, 1, 1)`` (15), empty ``Batch normalization`` / ``Leaky reLU`` / ``ELU`` / ``Thresholded reLU``
fields take Keras' defaults (15), inner skips nest LIFO like outer skips (14), errors are raised at once with the
entry's index and string instead of being collected and swallowed (14), and a skip that joins mismatched sizes is
refused at build time naming both entries (25). Separable convolutions apply the kernel regulariser and
initializer to both of their kernels (Keras 2.2.4 silently ignored ``kernel_regularizer`` there).

Hand-written rather than taken from MONAI: no library parses DLAE strings or reproduces TensorFlow's 'same'
padding (the odd pixel at the bottom/right) and Keras' channels-last semantics in a channels-first network.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.errors import ConfigError

__all__ = [
    "LayerListError", "LayerSpec", "InputSpec", "ConvSpec", "UpsampleSpec", "ZeroPadSpec", "CropSpec", "PoolSpec",
    "GlobalPoolSpec", "BatchNormSpec", "ActivationSpec", "AdvancedActivationSpec", "DenseSpec", "FlattenSpec",
    "ReshapeSpec", "PermuteSpec", "DropoutSpec", "SkipSpec", "HookSpec", "BackboneSpec", "parse_layer",
    "parse_layer_list", "layer_output_shape", "merge_output_shape", "build_layer_list", "LayerListNet",
    "regularization_loss", "ACTIVATIONS", "MERGE_MODES", "INITIALIZERS", "BACKBONES",
]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softmax", "hard_sigmoid", "linear", "softplus", "softsign", "selu", "elu",
               "exponential")
MERGE_MODES = ("concatenate", "add", "subtract", "multiply", "average", "maximum")
INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal", "lecun_uniform", "zeros",
                "ones", "random_normal", "random_uniform", "truncated_normal", "orthogonal")
REGULARIZERS = ("l1", "l2", "l1_l2")
BACKBONES = ("Xception", "VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2",
             "ResNet152V2", "ResNeXt50", "ResNeXt101", "InceptionV3", "InceptionResNetV2", "DenseNet121",
             "DenseNet169", "DenseNet201", "MobileNet", "MobileNetV2")

Shape = tuple  # Keras layout, no batch axis: (rows, cols, channels) / (rows, cols, slices, channels) / (units,) ...


class LayerListError(ConfigError):
    """A layer-list entry is malformed or does not fit the running shape; names the index and the string."""


def _err(index: int, text: str, what: str) -> LayerListError:
    return LayerListError(f"layer list entry {index} '{text}': {what}")


# -- specs -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """Base of every parsed entry: where it came from, for messages."""

    index: int
    text: str


@dataclass(frozen=True)
class InputSpec(LayerSpec):
    shape: tuple[int, ...]  # channels-last, e.g. (512, 512, 1)


@dataclass(frozen=True)
class ConvSpec(LayerSpec):
    kind: str  # conv | transpose | separable | depthwise | resize
    dims: int
    maps: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str  # same | valid
    dilation: tuple[int, ...]
    init: str
    kernel_reg: Optional[str]
    activity_reg: Optional[str]
    l1: float
    l2: float
    upsample: Optional[tuple[int, ...]] = None  # resize convolutions: nearest upsampling before the conv


@dataclass(frozen=True)
class UpsampleSpec(LayerSpec):
    dims: int
    size: tuple[int, ...]


@dataclass(frozen=True)
class ZeroPadSpec(LayerSpec):
    dims: int
    padding: tuple[tuple[int, int], ...]  # (before, after) per spatial axis


@dataclass(frozen=True)
class CropSpec(LayerSpec):
    dims: int
    cropping: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PoolSpec(LayerSpec):
    dims: int
    op: str  # max | avg
    pool: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class GlobalPoolSpec(LayerSpec):
    dims: int
    op: str


@dataclass(frozen=True)
class BatchNormSpec(LayerSpec):
    momentum: float = 0.99  # Keras convention (torch momentum = 1 - this)
    epsilon: float = 1e-3


@dataclass(frozen=True)
class ActivationSpec(LayerSpec):
    name: str


@dataclass(frozen=True)
class AdvancedActivationSpec(LayerSpec):
    kind: str  # leaky_relu | elu | thresholded_relu | prelu
    param: Optional[float]


@dataclass(frozen=True)
class DenseSpec(LayerSpec):
    units: int


@dataclass(frozen=True)
class FlattenSpec(LayerSpec):
    pass


@dataclass(frozen=True)
class ReshapeSpec(LayerSpec):
    shape: tuple[int, ...]  # Keras target shape (channels-last), one -1 allowed


@dataclass(frozen=True)
class PermuteSpec(LayerSpec):
    dims: tuple[int, ...]  # Keras: 1-based axes of the channels-last sample


@dataclass(frozen=True)
class DropoutSpec(LayerSpec):
    kind: str  # dropout | spatial | gaussian_dropout | alpha | gaussian_noise
    rate: float  # stddev for gaussian_noise
    dims: Optional[int] = None  # spatial dropout only


@dataclass(frozen=True)
class SkipSpec(LayerSpec):
    scope: str  # outer | inner
    role: str  # source | target
    mode: Optional[str]


@dataclass(frozen=True)
class HookSpec(LayerSpec):
    pass


@dataclass(frozen=True)
class BackboneSpec(LayerSpec):
    name: str
    include_top: bool
    weights: Optional[str]
    input_shape: tuple[int, ...]
    skips: bool
    hooks: bool


# -- field parsing ---------------------------------------------------------------------------------------------------
class _Fields:
    """Positional fields of one entry with typed getters that raise errors naming the entry."""

    def __init__(self, index: int, text: str, names: Sequence[str], values: list[Optional[str]], required: int):
        self.index, self.text, self.names = index, text, list(names)
        if len(values) > len(names):
            raise _err(index, text, f"expected at most {len(names)} field(s) after the name "
                                    f"({':'.join(names) or 'none'}), got {len(values)}")
        missing = [n for n, v in zip(names[:required], values + [None] * required) if v is None]
        if missing:
            raise _err(index, text, f"field(s) {', '.join(missing)} required (format: Name:{':'.join(names)})")
        self.values = dict(zip(names, values + [None] * (len(names) - len(values))))

    def fail(self, name: str, expected: str) -> LayerListError:
        return _err(self.index, self.text, f"field '{name}' = {self.values.get(name)!r}: expected {expected}")

    def raw(self, name: str) -> Optional[str]:
        return self.values[name]

    def lit(self, name: str, expected: str) -> Any:
        v = self.values[name]
        if v is None:
            return None
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            raise self.fail(name, expected) from None

    def int(self, name: str, default: Optional[int] = None, minimum: int = 1) -> int:
        v = self.lit(name, f"an integer >= {minimum}")
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(name, f"an integer >= {minimum}")
        return v

    def float(self, name: str, default: float, lo: float = 0.0, hi: float = math.inf, hi_open: bool = False) -> float:
        v = self.lit(name, "a number")
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or v > hi or (hi_open and v >= hi):
            raise self.fail(name, f"a number in [{lo}, {hi}{')' if hi_open else ']'}")
        return float(v)

    def tuple(self, name: str, n: int, default: Optional[tuple[int, ...]] = None, minimum: int = 1) -> tuple[int, ...]:
        what = f"an integer >= {minimum} or a {n}-tuple of them, e.g. {tuple([2] * n)}"
        v = self.lit(name, what)
        if v is None:
            if default is None:
                raise self.fail(name, what)
            return default
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v,) * n
        if (not isinstance(v, tuple) or len(v) != n
                or any(isinstance(e, bool) or not isinstance(e, int) or e < minimum for e in v)):
            raise self.fail(name, what)
        return v

    def pairs(self, name: str, n: int) -> tuple[tuple[int, int], ...]:
        """Keras ZeroPadding/Cropping argument: int, n ints (symmetric), or n (before, after) pairs."""
        what = f"an integer, a {n}-tuple of integers or {n} (before, after) pairs, e.g. {((1, 1),) * n}"
        v = self.lit(name, what)
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v,) * n
        if not isinstance(v, tuple) or len(v) != n:
            raise self.fail(name, what)
        out = []
        for e in v:
            if isinstance(e, int) and not isinstance(e, bool):
                e = (e, e)
            if (not isinstance(e, tuple) or len(e) != 2
                    or any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in e)):
                raise self.fail(name, what)
            out.append(e)
        return tuple(out)

    def choice(self, name: str, options: Sequence[str], default: Optional[str]) -> Optional[str]:
        v = self.values[name]
        if v is None:
            return default
        key = v.strip().lower()
        for o in options:
            if o.lower() == key:
                return o
        raise self.fail(name, "one of " + ", ".join(options))

    def bool(self, name: str, default: bool) -> bool:
        v = self.values[name]
        if v is None:
            return default
        if v.strip() in ("True", "False"):
            return v.strip() == "True"
        raise self.fail(name, "True or False")


_CONV_FIELDS = ("maps", "kernel", "stride", "padding", "dilation", "initializer", "kernel_reg", "activity_reg", "l1",
                "l2")
_RESIZE_FIELDS = ("maps", "kernel", "stride", "upsample", "padding", "dilation", "initializer", "kernel_reg",
                  "activity_reg", "l1", "l2")
_DEPTHWISE_FIELDS = ("maps", "kernel", "stride", "padding", "initializer", "kernel_reg", "activity_reg", "l1", "l2")


def _parse_conv(f: _Fields, kind: str, dims: int) -> ConvSpec:
    # Defaults for omitted trailing fields are Keras' own (valid padding, glorot_uniform, no regularizer).
    ones = (1,) * dims
    maps = f.int("maps")
    kernel = f.tuple("kernel", dims)
    stride = f.tuple("stride", dims, ones)
    upsample = f.tuple("upsample", dims, (2,) * dims) if kind == "resize" else None
    padding = f.choice("padding", ("same", "valid"), "valid")
    dilation = f.tuple("dilation", dims, ones) if "dilation" in f.values else ones  # None -> ones in 2D *and* 3D
    init = f.choice("initializer", INITIALIZERS, "glorot_uniform")
    kreg = f.choice("kernel_reg", REGULARIZERS, None)
    areg = f.choice("activity_reg", REGULARIZERS, None)
    l1 = f.float("l1", 0.0)
    l2 = f.float("l2", 0.0)
    return ConvSpec(f.index, f.text, kind, dims, maps, kernel, stride, padding, dilation, init, kreg, areg, l1, l2,
                    upsample)


def _split(text: str) -> tuple[str, list[Optional[str]]]:
    parts = text.split(":")
    name = " ".join(parts[0].split())
    vals = [None if p.strip() in ("", "None") else p.strip() for p in parts[1:]]
    while vals and vals[-1] is None:  # trailing empty fields = omitted
        vals.pop()
    return name, vals


def parse_layer(s: str, index: int) -> LayerSpec:
    """Parse one DLAE layer string (manual section 6) into its typed spec; ``index`` is its place in the list."""
    if not isinstance(s, str):
        raise _err(index, str(s), "expected a string 'Name[:field...]'")
    name, vals = _split(s)
    key = name.lower()
    dims = 2 if key.endswith(" 2d") else 3 if key.endswith(" 3d") else None
    base = key[:-3] if dims else key

    def fields(names: Sequence[str], required: int = 0) -> _Fields:
        return _Fields(index, s, names, vals, required)

    if key == "input":
        f = fields(("shape",), 1)
        shape = f.lit("shape", "a tuple of positive integers, channels last, e.g. (512, 512, 1)")
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, tuple) or not shape or any(
                isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in shape):
            raise f.fail("shape", "a tuple of positive integers, channels last, e.g. (512, 512, 1)")
        return InputSpec(index, s, shape)
    conv_kinds = {"convolution": ("conv", _CONV_FIELDS), "transpose convolution": ("transpose", _CONV_FIELDS),
                  "separable convolution": ("separable", _CONV_FIELDS),
                  "depthwise separable convolution": ("depthwise", _DEPTHWISE_FIELDS),
                  "resize convolution": ("resize", _RESIZE_FIELDS)}
    if dims and base in conv_kinds:
        kind, names = conv_kinds[base]
        if kind == "depthwise" and len(vals) == 10:  # also accept the form with a dilation field
            names = _CONV_FIELDS
        return _parse_conv(fields(names, 2), kind, dims)
    if dims and base in ("upsample", "upsampling"):
        return UpsampleSpec(index, s, dims, fields(("size",)).tuple("size", dims, (2,) * dims))
    if dims and base == "zero padding":
        return ZeroPadSpec(index, s, dims, fields(("padding",), 1).pairs("padding", dims))
    if dims and base == "cropping":
        return CropSpec(index, s, dims, fields(("cropping",), 1).pairs("cropping", dims))
    if dims and base in ("max pooling", "average pooling"):
        f = fields(("pool", "stride"))
        pool = f.tuple("pool", dims, (2,) * dims)
        return PoolSpec(index, s, dims, "max" if base.startswith("max") else "avg", pool, f.tuple("stride", dims, pool))
    if dims and base in ("global max pooling", "global average pooling"):
        fields(())
        return GlobalPoolSpec(index, s, dims, "max" if "max" in base else "avg")
    if key == "batch normalization":
        f = fields(("momentum", "epsilon"))
        return BatchNormSpec(index, s, f.float("momentum", 0.99, 0.0, 1.0),
                             f.float("epsilon", 1e-3, 0.0, math.inf))
    if key == "activation":
        return ActivationSpec(index, s, fields(("activation",), 1).choice("activation", ACTIVATIONS, None))
    adv = {"leaky relu": ("leaky_relu", 0.3), "elu": ("elu", 1.0), "thresholded relu": ("thresholded_relu", 1.0)}
    if key in adv:
        kind, default = adv[key]
        return AdvancedActivationSpec(index, s, kind, fields(("parameter",)).float("parameter", default))
    if key == "prelu":
        fields(())
        return AdvancedActivationSpec(index, s, "prelu", None)
    if key == "dense":
        return DenseSpec(index, s, fields(("units",), 1).int("units"))
    if key == "flatten":
        fields(())
        return FlattenSpec(index, s)
    if key == "reshape":
        f = fields(("shape",), 1)
        what = "a tuple of positive integers (channels last, at most one -1), e.g. (262144, 1)"
        shape = f.lit("shape", what)
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if (not isinstance(shape, tuple) or not shape or sum(e == -1 for e in shape) > 1
                or any(isinstance(e, bool) or not isinstance(e, int) or (e < 1 and e != -1) for e in shape)):
            raise f.fail("shape", what)
        return ReshapeSpec(index, s, shape)
    if key == "permute":
        f = fields(("dims",), 1)
        what = "a permutation of 1..n (Keras) or 0..n-1 (the manual's example) over the channels-last sample axes"
        p = f.lit("dims", what)
        if isinstance(p, tuple) and sorted(p) == list(range(len(p))):
            p = tuple(d + 1 for d in p)  # 0-based (the manual writes Permute:(1, 0, 2)): unambiguous, shift
        if not isinstance(p, tuple) or sorted(p) != list(range(1, len(p) + 1)):
            raise f.fail("dims", what)
        return PermuteSpec(index, s, p)
    if key == "dropout":
        return DropoutSpec(index, s, "dropout", fields(("rate",), 1).float("rate", 0.0, 0.0, 1.0, hi_open=True))
    if dims and base == "spatial dropout":
        return DropoutSpec(index, s, "spatial", fields(("rate",), 1).float("rate", 0.0, 0.0, 1.0, hi_open=True), dims)
    if key == "gaussian dropout":
        return DropoutSpec(index, s, "gaussian_dropout",
                           fields(("rate",), 1).float("rate", 0.0, 0.0, 1.0, hi_open=True))
    if key == "alpha dropout":
        return DropoutSpec(index, s, "alpha", fields(("rate",), 1).float("rate", 0.0, 0.0, 1.0, hi_open=True))
    if key == "gaussian noise":
        return DropoutSpec(index, s, "gaussian_noise", fields(("stddev",), 1).float("stddev", 0.0))
    for scope in ("outer", "inner"):
        for role in ("source", "target"):
            if key == f"{scope} skip {role}":
                f = fields(("mode",), 1 if role == "target" else 0)
                return SkipSpec(index, s, scope, role, f.choice("mode", MERGE_MODES, None))
    if key == "hook connection source":
        fields(())
        return HookSpec(index, s)
    if key == "hook connection target":
        raise _err(index, s, "'Hook connection target' is not a layer (DLAE never implemented it): the detection head "
                             "reads the hook taps itself; remove this entry")
    for bb in BACKBONES:
        if key == bb.lower():
            f = fields(("include_top", "weights", "input_shape", "skips", "hooks"), 3)
            shape = f.lit("input_shape", "a channels-last shape tuple, e.g. (512, 512, 1)")
            if not isinstance(shape, tuple) or any(not isinstance(e, int) or e < 1 for e in shape):
                raise f.fail("input_shape", "a channels-last shape tuple, e.g. (512, 512, 1)")
            w = f.raw("weights")
            return BackboneSpec(index, s, bb, f.bool("include_top", False),
                                None if w is None or w.lower() == "none" else w, shape,
                                f.bool("skips", False), f.bool("hooks", False))
    raise _err(index, s, f"unknown layer name '{name}'; expected one of the DLAE layer names (manual section 6), "
                         f"e.g. 'Convolution 2D', 'Max pooling 3D', 'Activation', 'Outer skip source', or a backbone "
                         f"({', '.join(BACKBONES)})")


def parse_layer_list(layers: Sequence[str]) -> list[LayerSpec]:
    """Parse a whole list; entry 0 must be ``Input:(...)`` and no other entry may be."""
    if not layers:
        raise LayerListError("layer list is empty: expected 'Input:(rows, cols[, slices], channels)' then layers")
    specs = [parse_layer(s, i) for i, s in enumerate(layers)]
    if not isinstance(specs[0], InputSpec):
        raise _err(0, specs[0].text, "the first entry must be 'Input:(rows, cols[, slices], channels)'")
    for sp in specs[1:]:
        if isinstance(sp, InputSpec):
            raise _err(sp.index, sp.text, "'Input' may only be the first entry of a serial layer list")
    return specs


# -- Keras shape rules (channels-last, no batch axis) ----------------------------------------------------------------
def _need_rank(spec: LayerSpec, shape: Shape, dims: int) -> None:
    if len(shape) != dims + 1:
        what = "(rows, cols, channels)" if dims == 2 else "(rows, cols, slices, channels)"
        raise _err(spec.index, spec.text, f"expects a {dims}D feature map {what}, but the running shape is {shape}")


def _conv_len(n: int, k: int, s: int, d: int, padding: str) -> int:
    keff = (k - 1) * d + 1
    return -(-n // s) if padding == "same" else (n - keff) // s + 1


def layer_output_shape(spec: LayerSpec, in_shape: Optional[Shape]) -> Shape:
    """Output shape (Keras layout, no batch) of one entry for input shape ``in_shape``; Keras' rules.

    conv 'same': ceil(n / s); conv 'valid': floor((n - ((k - 1) d + 1)) / s) + 1; transposed 'same': n s,
    'valid': n s + max((k - 1) d + 1 - s, 0); pooling (valid): floor((n - p) / s) + 1. Skips and hooks pass the
    shape through (a target's merge is :func:`merge_output_shape`).
    """
    if isinstance(spec, InputSpec):
        return tuple(spec.shape)
    if isinstance(spec, BackboneSpec):
        raise _err(spec.index, spec.text, "a backbone's output shape comes from the built backbone")
    assert in_shape is not None
    sh = tuple(in_shape)

    def spatial_out(vals: list[int]) -> Shape:
        if any(v < 1 for v in vals):
            raise _err(spec.index, spec.text, f"input shape {sh} gives an empty output {tuple(vals)}")
        return tuple(vals)

    if isinstance(spec, ConvSpec):
        _need_rank(spec, sh, spec.dims)
        n, c = list(sh[:-1]), sh[-1]
        if spec.kind == "depthwise" and spec.maps % c:
            raise _err(spec.index, spec.text, f"a depthwise convolution's feature maps ({spec.maps}) must be a "
                                              f"multiple of its input channels ({c}): maps = channels x multiplier")
        if spec.kind == "resize":
            n = [a * u for a, u in zip(n, spec.upsample)]
        if spec.kind == "transpose":
            out = [a * s if spec.padding == "same" else a * s + max((k - 1) * d + 1 - s, 0)
                   for a, k, s, d in zip(n, spec.kernel, spec.stride, spec.dilation)]
        else:
            out = [_conv_len(a, k, s, d, spec.padding) for a, k, s, d in zip(n, spec.kernel, spec.stride,
                                                                                spec.dilation)]
        return spatial_out(out) + (spec.maps,)
    if isinstance(spec, UpsampleSpec):
        _need_rank(spec, sh, spec.dims)
        return tuple(a * u for a, u in zip(sh[:-1], spec.size)) + sh[-1:]
    if isinstance(spec, ZeroPadSpec):
        _need_rank(spec, sh, spec.dims)
        return tuple(a + b + e for a, (b, e) in zip(sh[:-1], spec.padding)) + sh[-1:]
    if isinstance(spec, CropSpec):
        _need_rank(spec, sh, spec.dims)
        return spatial_out([a - b - e for a, (b, e) in zip(sh[:-1], spec.cropping)]) + sh[-1:]
    if isinstance(spec, PoolSpec):
        _need_rank(spec, sh, spec.dims)
        return spatial_out([(a - p) // s + 1 for a, p, s in zip(sh[:-1], spec.pool, spec.stride)]) + sh[-1:]
    if isinstance(spec, GlobalPoolSpec):
        _need_rank(spec, sh, spec.dims)
        return sh[-1:]
    if isinstance(spec, DropoutSpec) and spec.kind == "spatial":
        _need_rank(spec, sh, spec.dims)
        return sh
    if isinstance(spec, BatchNormSpec) and len(sh) > 4:
        raise _err(spec.index, spec.text, f"batch normalization needs at most 3 spatial axes, running shape is {sh}")
    if isinstance(spec, (BatchNormSpec, ActivationSpec, AdvancedActivationSpec, DropoutSpec, SkipSpec, HookSpec)):
        return sh
    if isinstance(spec, DenseSpec):
        return sh[:-1] + (spec.units,)
    if isinstance(spec, FlattenSpec):
        return (math.prod(sh),)
    if isinstance(spec, ReshapeSpec):
        total, known = math.prod(sh), math.prod(e for e in spec.shape if e != -1)
        if -1 in spec.shape:
            if total % known:
                raise _err(spec.index, spec.text, f"cannot reshape {sh} ({total} values) to {spec.shape}")
            return tuple(total // known if e == -1 else e for e in spec.shape)
        if known != total:
            raise _err(spec.index, spec.text, f"cannot reshape {sh} ({total} values) to {spec.shape} ({known} values)")
        return tuple(spec.shape)
    if isinstance(spec, PermuteSpec):
        if len(spec.dims) != len(sh):
            raise _err(spec.index, spec.text, f"permutation {spec.dims} has {len(spec.dims)} axes but the running "
                                              f"shape {sh} has {len(sh)} (channels last, batch excluded)")
        return tuple(sh[d - 1] for d in spec.dims)
    raise _err(spec.index, spec.text, f"no shape rule for {type(spec).__name__}")


def merge_output_shape(mode: str, skip: Shape, x: Shape) -> Shape:
    """Keras merge rule: concatenate joins the last (channel) axis, skip first; the rest need equal shapes."""
    if mode == "concatenate":
        if len(skip) != len(x) or tuple(skip[:-1]) != tuple(x[:-1]):
            raise ValueError(f"concatenate needs equal shapes except the channel axis, got {tuple(skip)} and "
                             f"{tuple(x)}")
        return tuple(skip[:-1]) + (skip[-1] + x[-1],)
    if tuple(skip) != tuple(x):
        raise ValueError(f"{mode} needs equal shapes, got {tuple(skip)} and {tuple(x)}")
    return tuple(x)


# -- layout helpers --------------------------------------------------------------------------------------------------
def _to_keras(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1) if x.dim() > 2 else x


def _to_torch(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1) if x.dim() > 2 else x


def keras_to_torch_shape(shape: Shape) -> tuple[int, ...]:
    """(rows, cols[, slices], channels) -> (channels, rows, cols[, slices]); rank-1 shapes unchanged."""
    shape = tuple(shape)
    return shape[-1:] + shape[:-1] if len(shape) > 1 else shape


def torch_to_keras_shape(shape: Sequence[int]) -> Shape:
    shape = tuple(shape)
    return shape[1:] + shape[:1] if len(shape) > 1 else shape


# -- Keras initializers ----------------------------------------------------------------------------------------------
_TRUNC = 0.87962566103423978  # std of a unit normal truncated at +-2 (Keras 2.2.3+ rescales by it)


@torch.no_grad()
def keras_init_(w: torch.Tensor, name: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Fill ``w`` like the Keras initializer ``name`` with Keras' fans (passed in: Keras' kernel layouts differ)."""
    scale_fan = {"he": (2.0, fan_in), "lecun": (1.0, fan_in), "glorot": (2.0, (fan_in + fan_out) / 2.0)}
    fam, _, dist = name.partition("_")
    if fam in scale_fan:
        scale, n = scale_fan[fam]
        if dist == "normal":
            std = math.sqrt(scale / n) / _TRUNC
            return nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)
        limit = math.sqrt(3.0 * scale / n)
        return nn.init.uniform_(w, -limit, limit)
    if name == "zeros":
        return nn.init.zeros_(w)
    if name == "ones":
        return nn.init.ones_(w)
    if name == "random_normal":
        return nn.init.normal_(w, 0.0, 0.05)
    if name == "random_uniform":
        return nn.init.uniform_(w, -0.05, 0.05)
    if name == "truncated_normal":
        return nn.init.trunc_normal_(w, 0.0, 0.05, -0.1, 0.1)
    if name == "orthogonal":
        return nn.init.orthogonal_(w)
    raise ValueError(f"unknown initializer {name!r}; expected one of {', '.join(INITIALIZERS)}")


def _penalty(t: torch.Tensor, kind: Optional[str], l1: float, l2: float) -> torch.Tensor:
    p = t.new_zeros(())
    if kind in ("l1", "l1_l2") and l1:
        p = p + l1 * t.abs().sum()
    if kind in ("l2", "l1_l2") and l2:
        p = p + l2 * t.pow(2).sum()
    return p


# -- modules ---------------------------------------------------------------------------------------------------------
class KerasConv(nn.Module):
    """Every DLAE convolution (plain, transposed, separable, depthwise, resize) with TensorFlow's padding.

    'same' pads ``total = max((ceil(n/s) - 1) s + (k - 1) d + 1 - n, 0)`` with ``total // 2`` before and the rest
    after (the odd pixel at the bottom/right), computed from the actual input size at each call as TF does.
    Transposed 'same' crops the full transposed output the same way, to ``n s``.
    """

    def __init__(self, spec: ConvSpec, in_channels: int):
        super().__init__()
        d = spec.dims
        conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[d]
        self.kind, self.padding, self.dims = spec.kind, spec.padding, d
        self.kernel, self.stride, self.dilation, self.upsample = spec.kernel, spec.stride, spec.dilation, spec.upsample
        self.kernel_reg, self.activity_reg, self.l1, self.l2 = spec.kernel_reg, spec.activity_reg, spec.l1, spec.l2
        rf = math.prod(spec.kernel)
        c, m = in_channels, spec.maps
        if spec.kind in ("conv", "resize"):
            self.conv = conv_cls(c, m, spec.kernel, spec.stride, 0, spec.dilation)
            keras_init_(self.conv.weight, spec.init, c * rf, m * rf)
        elif spec.kind == "depthwise":  # Keras DepthwiseConv2D, depth multiplier = maps / channels
            self.conv = conv_cls(c, m, spec.kernel, spec.stride, 0, spec.dilation, groups=c)
            keras_init_(self.conv.weight, spec.init, c * rf, (m // c) * rf)
        elif spec.kind == "separable":  # depthwise (multiplier 1, no bias) then pointwise 1x1 with bias
            self.depthwise = conv_cls(c, c, spec.kernel, spec.stride, 0, spec.dilation, groups=c, bias=False)
            self.pointwise = conv_cls(c, m, 1)
            keras_init_(self.depthwise.weight, spec.init, c * rf, rf)
            keras_init_(self.pointwise.weight, spec.init, c, m)
        elif spec.kind == "transpose":
            keff = [(k - 1) * dd + 1 for k, dd in zip(spec.kernel, spec.dilation)]
            out_pad = tuple(max(s - ke, 0) for s, ke in zip(spec.stride, keff))  # Keras length n s when k < s
            tcls = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[d]
            self.conv = tcls(c, m, spec.kernel, spec.stride, 0, out_pad, dilation=spec.dilation)
            keras_init_(self.conv.weight, spec.init, m * rf, c * rf)  # Keras kernel (k.., maps, in): fan_in uses maps
        else:  # pragma: no cover - parse_layer only makes the kinds above
            raise ValueError(spec.kind)
        for mod in self.modules():
            if isinstance(mod, (nn.modules.conv._ConvNd,)) and mod.bias is not None:
                nn.init.zeros_(mod.bias)
        self._activity: Optional[torch.Tensor] = None

    def kernels(self) -> list[torch.Tensor]:
        return [self.depthwise.weight, self.pointwise.weight] if self.kind == "separable" else [self.conv.weight]

    def _same_pad(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for i in reversed(range(self.dims)):
            n, k, s, dd = x.shape[2 + i], self.kernel[i], self.stride[i], self.dilation[i]
            total = max((-(-n // s) - 1) * s + (k - 1) * dd + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads) if any(pads) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            for i, u in enumerate(self.upsample):
                if u > 1:
                    x = x.repeat_interleave(u, dim=2 + i)
        if self.kind == "transpose":
            y = self.conv(x)
            if self.padding == "same":
                for i in range(self.dims):
                    n, k, s, dd = x.shape[2 + i], self.kernel[i], self.stride[i], self.dilation[i]
                    before = max((k - 1) * dd + 1 - s, 0) // 2
                    y = y.narrow(2 + i, before, n * s)
        else:
            if self.padding == "same":
                x = self._same_pad(x)
            y = self.pointwise(self.depthwise(x)) if self.kind == "separable" else self.conv(x)
        self._activity = _penalty(y, self.activity_reg, self.l1, self.l2) if self.activity_reg else None
        return y

    def penalty(self) -> torch.Tensor:
        """Kernel penalty plus the activity penalty of the latest forward pass (Keras: summed over the batch)."""
        p = self.kernels()[0].new_zeros(())
        if self.kernel_reg:
            for w in self.kernels():
                p = p + _penalty(w, self.kernel_reg, self.l1, self.l2)
        if self._activity is not None:
            p = p + self._activity
        return p


class KerasDense(nn.Module):
    """Keras Dense: acts on the last (channels-last) axis, glorot_uniform kernel, zero bias."""

    def __init__(self, in_features: int, units: int):
        super().__init__()
        self.linear = nn.Linear(in_features, units)
        keras_init_(self.linear.weight, "glorot_uniform", in_features, units)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_torch(self.linear(_to_keras(x)))


class KerasFlatten(nn.Module):
    """Flatten in Keras' (rows, cols, [slices,] channels) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_keras(x).flatten(1)


class KerasReshape(nn.Module):
    def __init__(self, shape: Shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_torch(_to_keras(x).reshape(x.shape[0], *self.shape))


class KerasPermute(nn.Module):
    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_torch(_to_keras(x).permute(0, *self.dims))


class Upsample(nn.Module):
    """Keras UpSampling: nearest neighbour, i.e. each element repeated ``size`` times per axis."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, u in enumerate(self.size):
            if u > 1:
                x = x.repeat_interleave(u, dim=2 + i)
        return x


class ZeroPad(nn.Module):
    def __init__(self, padding: Sequence[tuple[int, int]]):
        super().__init__()
        self.pads = [v for pair in reversed(padding) for v in pair]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)


class Crop(nn.Module):
    def __init__(self, cropping: Sequence[tuple[int, int]]):
        super().__init__()
        self.cropping = tuple(cropping)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (b, e) in enumerate(self.cropping):
            x = x.narrow(2 + i, b, x.shape[2 + i] - b - e)
        return x


class GlobalPool(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, x.dim()))
        return x.amax(axes) if self.op == "max" else x.mean(axes)


class KerasActivation(nn.Module):
    """Keras activations by name; softmax over the channel (Keras last) axis."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.name
        if n == "linear":
            return x
        if n == "softmax":
            return torch.softmax(x, dim=1 if x.dim() > 1 else 0)
        if n == "hard_sigmoid":  # Keras 2.2: clip(0.2 x + 0.5, 0, 1), not torch's x/6 + 1/2
            return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)
        if n == "exponential":
            return torch.exp(x)
        return {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus,
                "softsign": F.softsign, "selu": F.selu, "elu": F.elu}[n](x)

    def extra_repr(self) -> str:
        return self.name


class KerasPReLU(nn.Module):
    """Keras PReLU: one learned alpha per element of the sample (zeros at start)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) - self.alpha * F.relu(-x)


class GaussianDropout(nn.Module):
    """Keras GaussianDropout: multiply by N(1, rate / (1 - rate)) noise while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.std = math.sqrt(rate / (1.0 - rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + self.std * torch.randn_like(x)) if self.training and self.std > 0 else x


class GaussianNoise(nn.Module):
    """Keras GaussianNoise: add N(0, stddev^2) noise while training."""

    def __init__(self, stddev: float):
        super().__init__()
        self.stddev = stddev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stddev * torch.randn_like(x) if self.training and self.stddev > 0 else x


class SkipSource(nn.Module):
    """Marker: push the running tensor on the outer or inner skip stack."""

    def __init__(self, scope: str):
        super().__init__()
        self.scope = scope

    def extra_repr(self) -> str:
        return self.scope


class SkipTarget(nn.Module):
    """Marker: pop the latest source of its stack and merge it with the running tensor (skip first)."""

    def __init__(self, scope: str, mode: str):
        super().__init__()
        self.scope, self.mode = scope, mode

    def extra_repr(self) -> str:
        return f"{self.scope}, {self.mode}"


class HookTap(nn.Module):
    """Marker: record the running tensor as a hook (SSD predictor input, U-Net tap)."""


class Backbone(nn.Module):
    """Wraps a backbone module whose ``forward`` returns ``(output, taps)`` (taps finest first)."""

    def __init__(self, spec: BackboneSpec, module: nn.Module):
        super().__init__()
        self.body = module
        self.skips, self.hooks, self.name = spec.skips, spec.hooks, spec.name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, taps = self.body(x)
        return out, list(taps)


def merge(mode: str, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Keras merge layers on [skip, x]: Concatenate (channel axis), Add, Subtract (skip - x), Multiply, ..."""
    if mode == "concatenate":
        return torch.cat([skip, x], dim=1)
    if mode == "add":
        return skip + x
    if mode == "subtract":
        return skip - x
    if mode == "multiply":
        return skip * x
    if mode == "average":
        return (skip + x) / 2
    if mode == "maximum":
        return torch.maximum(skip, x)
    raise ValueError(f"unknown merge mode {mode!r}; expected one of {', '.join(MERGE_MODES)}")


class LayerListNet(nn.Module):
    """The module a DLAE layer list builds. ``layers[i]`` is list entry ``i`` (Input is an Identity).

    ``forward(x)`` takes channels-first ``(N, C, rows, cols[, slices])`` and returns the last tensor (channels-first
    when it has spatial axes); ``forward_with_hooks(x)`` also returns the hook taps in list order.
    Attributes: ``specs`` (parsed entries), ``shapes`` (Keras-layout output shape per entry), ``hook_shapes``,
    ``input_shape`` / ``output_shape`` (torch layout, no batch), ``dims``, ``divisible_by`` (the product of the
    pooling and convolution strides along the most-downsampled axis: inputs whose sizes are multiples of it
    round-trip through a U-Net's skips).
    """

    def __init__(self, layers: list[nn.Module], specs: list[LayerSpec], shapes: list[Shape],
                 hook_shapes: list[Shape], dims: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.specs, self.shapes, self.hook_shapes, self.dims = tuple(specs), tuple(shapes), tuple(hook_shapes), dims
        self.input_shape = keras_to_torch_shape(shapes[0])
        self.output_shape = keras_to_torch_shape(shapes[-1])
        down = [1] * dims
        for sp in specs:
            if isinstance(sp, (PoolSpec, ConvSpec)) and getattr(sp, "kind", "") != "transpose" and sp.dims == dims:
                down = [a * b for a, b in zip(down, sp.stride)]
        self.divisible_by = max(down) if down else 1

    def regularization_penalty(self) -> torch.Tensor:
        """L1/L2 kernel and activity penalties of the latest forward pass (the Trainer adds this to the loss)."""
        return regularization_loss(self)

    def forward_with_hooks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outer: list[torch.Tensor] = []
        inner: list[torch.Tensor] = []
        hooks: list[torch.Tensor] = []
        for m in self.layers:
            if isinstance(m, SkipSource):
                (outer if m.scope == "outer" else inner).append(x)
            elif isinstance(m, SkipTarget):
                x = merge(m.mode, (outer if m.scope == "outer" else inner).pop(), x)
            elif isinstance(m, HookTap):
                hooks.append(x)
            elif isinstance(m, Backbone):
                x, taps = m(x)
                if m.skips:
                    outer = list(taps)
                if m.hooks:
                    hooks = list(taps)
            else:
                x = m(x)
        return x, hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hooks(x)[0]


def regularization_loss(module: nn.Module) -> torch.Tensor:
    """Sum of every L1/L2 kernel penalty and of the activity penalties of the latest forward pass.

    Add it to the task loss after the forward pass (Keras adds ``model.losses`` the same way).
    """
    total: Optional[torch.Tensor] = None
    for m in module.modules():
        if isinstance(m, KerasConv) and (m.kernel_reg or m._activity is not None):
            p = m.penalty()
            total = p if total is None else total + p
    if total is None:
        p0 = next(module.parameters(), None)
        return torch.zeros((), device=p0.device if p0 is not None else None)
    return total


# -- builder ---------------------------------------------------------------------------------------------------------
def _module_for(spec: LayerSpec, in_shape: Shape) -> nn.Module:
    """The torch module of one ordinary entry, given its Keras-layout input shape."""
    c = in_shape[-1]
    if isinstance(spec, ConvSpec):
        return KerasConv(spec, c)
    if isinstance(spec, UpsampleSpec):
        return Upsample(spec.size)
    if isinstance(spec, ZeroPadSpec):
        return ZeroPad(spec.padding)
    if isinstance(spec, CropSpec):
        return Crop(spec.cropping)
    if isinstance(spec, PoolSpec):
        cls = {("max", 2): nn.MaxPool2d, ("max", 3): nn.MaxPool3d, ("avg", 2): nn.AvgPool2d,
               ("avg", 3): nn.AvgPool3d}[(spec.op, spec.dims)]
        return cls(spec.pool, spec.stride)
    if isinstance(spec, GlobalPoolSpec):
        return GlobalPool(spec.op)
    if isinstance(spec, BatchNormSpec):
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d, 4: nn.BatchNorm3d}[len(in_shape)]
        return cls(c, eps=spec.epsilon, momentum=1.0 - spec.momentum)
    if isinstance(spec, ActivationSpec):
        return KerasActivation(spec.name)
    if isinstance(spec, AdvancedActivationSpec):
        if spec.kind == "leaky_relu":
            return nn.LeakyReLU(spec.param)
        if spec.kind == "elu":
            return nn.ELU(spec.param)
        if spec.kind == "thresholded_relu":
            return nn.Threshold(spec.param, 0.0)  # x if x > theta else 0
        return KerasPReLU(keras_to_torch_shape(in_shape))
    if isinstance(spec, DenseSpec):
        return KerasDense(c, spec.units)
    if isinstance(spec, FlattenSpec):
        return KerasFlatten()
    if isinstance(spec, ReshapeSpec):
        return KerasReshape(layer_output_shape(spec, in_shape))
    if isinstance(spec, PermuteSpec):
        return KerasPermute(spec.dims)
    if isinstance(spec, DropoutSpec):
        if spec.kind == "dropout":
            return nn.Dropout(spec.rate)
        if spec.kind == "spatial":  # whole channels dropped, as Keras SpatialDropout
            return {2: nn.Dropout2d, 3: nn.Dropout3d}[spec.dims](spec.rate)
        if spec.kind == "gaussian_dropout":
            return GaussianDropout(spec.rate)
        if spec.kind == "alpha":
            return nn.AlphaDropout(spec.rate)
        return GaussianNoise(spec.rate)
    raise _err(spec.index, spec.text, f"cannot build {type(spec).__name__}")  # pragma: no cover


def build_layer_list(layers: list[str], input_shape: tuple | None = None, dims: int | None = None, *,
                     in_channels: int | None = None, logits: bool = False,
                     backbone_factory: Callable[[BackboneSpec], nn.Module] | None = None) -> LayerListNet:
    """Build a DLAE serial layer list into a :class:`LayerListNet`.

    input_shape: torch layout without batch ``(C, rows, cols[, slices])``; replaces the ``Input`` entry's shape
        (which is channels-last) so a list written for 512 x 512 can be built for another size.
    dims: 2 or 3 to assert the spatial rank of the input (an error names the Input entry otherwise).
    in_channels: replaces only the Input's channel count (the data's channels win over the list's).
    logits: leave out a trailing ``Activation:softmax`` / ``sigmoid`` (replaced by an Identity, so indices stay)
        because ctdl's losses take logits.
    backbone_factory: builds a pretrained-network entry (``VGG16:False:none:(512, 512, 1):True:False``) as a module
        whose forward returns ``(output, taps)``; the entry must directly follow ``Input``.

    In-channels are inferred from the running shape as Keras does; every entry's output shape follows Keras' rules
    (:func:`layer_output_shape`). Spatial axes keep the Input entry's order (DLAE 3D: rows, cols, slices), so tuple
    fields apply axis by axis in that order. Convolutional lists run at any input size ('same' padding is computed
    per call, as TF does); Dense-after-Flatten, Reshape and PReLU (one alpha per element) fix the size they were
    built for. Skip sources and targets nest LIFO per scope (outer / inner); a target whose
    merge does not fit, or that has no open source, fails here naming both entries.
    """
    specs = parse_layer_list(layers)
    inp = specs[0]
    assert isinstance(inp, InputSpec)
    shape = tuple(inp.shape)
    if input_shape is not None:
        ts = tuple(int(v) for v in input_shape)
        if len(ts) != len(shape) or any(v < 1 for v in ts):
            raise _err(0, inp.text, f"input_shape {ts} (torch layout C, rows, cols[, slices]) does not have the rank "
                                    f"of the Input entry's channels-last shape {shape}")
        shape = torch_to_keras_shape(ts)
    if in_channels is not None:
        shape = shape[:-1] + (int(in_channels),)
    if dims is not None and len(shape) - 1 != dims:
        raise _err(0, inp.text, f"expected a {dims}D input (rank {dims + 1} with channels), got shape {shape}")
    net_dims = len(shape) - 1
    modules: list[nn.Module] = [nn.Identity()]
    shapes: list[Shape] = [shape]
    stacks: dict[str, list[tuple[LayerSpec, Shape]]] = {"outer": [], "inner": []}
    hooks: list[Shape] = []
    last = len(specs) - 1
    for spec in specs[1:]:
        if isinstance(spec, BackboneSpec):
            if spec.index != 1:
                raise _err(spec.index, spec.text, "a pretrained-network entry must directly follow the Input entry "
                                                  "(DLAE discarded every earlier entry)")
            if tuple(spec.input_shape) != shape:
                raise _err(spec.index, spec.text, f"backbone input_shape {spec.input_shape} differs from the Input "
                                                  f"shape {shape}")
            if backbone_factory is None:  # the registered DLAE backbones (ctdl.models.dlae_prebuilt)
                from ctdl.models.dlae_prebuilt import layerlist_backbone

                backbone_factory = layerlist_backbone
            mod = Backbone(spec, backbone_factory(spec))
            with torch.no_grad():
                was = mod.training
                mod.eval()
                out, taps = mod(torch.zeros(1, *keras_to_torch_shape(shape)))
                mod.train(was)
            tap_shapes = [torch_to_keras_shape(t.shape[1:]) for t in taps]
            if spec.skips:
                stacks["outer"] = [(spec, s) for s in tap_shapes]
            if spec.hooks:
                hooks = list(tap_shapes)
            shape = torch_to_keras_shape(out.shape[1:])
            modules.append(mod)
        elif isinstance(spec, SkipSpec) and spec.role == "source":
            stacks[spec.scope].append((spec, shape))
            modules.append(SkipSource(spec.scope))
        elif isinstance(spec, SkipSpec):
            st = stacks[spec.scope]
            if not st:
                raise _err(spec.index, spec.text, f"no open '{spec.scope.capitalize()} skip source' to merge with")
            src, src_shape = st.pop()
            try:
                shape = merge_output_shape(spec.mode or "concatenate", src_shape, shape)
            except ValueError as e:
                raise _err(spec.index, spec.text, f"cannot merge with its source, entry {src.index} '{src.text}': "
                                                  f"{e}") from None
            modules.append(SkipTarget(spec.scope, spec.mode or "concatenate"))
        elif isinstance(spec, HookSpec):
            hooks.append(shape)
            modules.append(HookTap())
        else:
            out_shape = layer_output_shape(spec, shape)
            if (logits and spec.index == last and isinstance(spec, ActivationSpec)
                    and spec.name in ("softmax", "sigmoid")):
                modules.append(nn.Identity())
            else:
                modules.append(_module_for(spec, shape))
            shape = out_shape
        shapes.append(shape)
    return LayerListNet(modules, specs, shapes, hooks, net_dims)
