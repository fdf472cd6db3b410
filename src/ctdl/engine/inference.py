"""Whole-volume inference: sub-volume majority voting (FCN-PPM), MONAI sliding window, 2D slice-wise, flip TTA.

Inputs are preprocessed float arrays ``(C, D, H, W)`` (a ``(D, H, W)`` array is taken as
``C = 1``); models return logits, ``(N, K, D, H, W)`` for 3D models and ``(N, K, H, W)``
for 2D models fed slices along axis 0. Outputs are class probabilities ``(K, D, H, W)``
float32 (softmax of the logits) and/or ``(D, H, W)`` uint8 label maps, always with exactly
the input's spatial shape: where a model needs sizes divisible by ``divisible_by`` (e.g.
4 for two poolings) every model input is padded at the far end of each axis with the
per-channel minimum of the image (a background-like value) and the output is cropped
back. Everything runs under ``torch.inference_mode()`` with the model in eval mode
(its previous train/eval mode is restored afterwards). The model is not moved:
put it on ``device`` yourself; inputs are moved there and outputs come back to the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

__all__ = [
    "subvolume_starts",
    "predict_subvolumes_voting",
    "predict_sliding_window",
    "predict_slices_2d",
    "flip_tta",
    "predict_volume",
]

Divisible = int | Sequence[int] | None


def subvolume_starts(length: int, window: int, overlap: int) -> list[int]:
    """Starts of ``window``-slice windows overlapping by ``overlap``; the last is moved back to end at the last slice.

    A volume with ``length <= window`` gives ``[0]``: the caller pads it to ``window``
    slices and crops the result back (see :func:`predict_subvolumes_voting`).
    """
    if length < 1 or window < 1:
        raise ValueError(f"length and window must be >= 1, got length={length}, window={window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must satisfy 0 <= overlap < window ({window}), got {overlap}")
    if length <= window:
        return [0]
    step = window - overlap
    starts = list(range(0, length - window + 1, step))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


# ----------------------------------------------------------------------------- helpers


def _as_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(C, D, H, W) float32 CPU tensor from an array or tensor; (D, H, W) -> C = 1."""
    t = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W) or (D, H, W), got shape {tuple(t.shape)}")
    return t


def _divisors(divisible_by: Divisible, n: int) -> tuple[int, ...]:
    """Per-axis divisors for ``n`` spatial axes."""
    if divisible_by is None:
        return (1,) * n
    if isinstance(divisible_by, int):
        d = (divisible_by,) * n
    else:
        d = tuple(int(v) for v in divisible_by)
        if len(d) == 3 and n == 2:  # a 3D spec used for 2D slices: keep (H, W)
            d = d[1:]
    if len(d) != n or min(d) < 1:
        raise ValueError(f"divisible_by must be a positive int or {n} positive ints, got {divisible_by!r}")
    return d


def _pad_far_end(x: torch.Tensor, target: Sequence[int], value: torch.Tensor | None) -> torch.Tensor:
    """Pad the trailing spatial axes of (N, C, *S) up to ``target`` with a per-channel constant (or zeros)."""
    spatial = tuple(x.shape[2:])
    if spatial == tuple(target):
        return x
    if value is None:
        value = torch.zeros(x.shape[1])
    fill = value.to(x.device, x.dtype).view(1, -1, *([1] * len(spatial)))
    out = fill.expand(x.shape[0], x.shape[1], *target).clone()
    out[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)] = x
    return out


def _call_model(
    model: nn.Module,
    x: torch.Tensor,
    n_classes: int,
    divisible_by: Divisible,
    pad_value: torch.Tensor | None,
) -> torch.Tensor:
    """Softmax of ``model(x)`` for x (N, C, *S): pads S to multiples of ``divisible_by``, crops the output back."""
    spatial = tuple(x.shape[2:])
    div = _divisors(divisible_by, len(spatial))
    target = tuple(-(-n // d) * d for n, d in zip(spatial, div))
    out = model(_pad_far_end(x, target, pad_value))
    if isinstance(out, (list, tuple)):  # deep supervision: first output is the full-resolution one
        out = out[0]
    if out.ndim != x.ndim or out.shape[0] != x.shape[0] or out.shape[1] != n_classes:
        raise ValueError(
            f"model output shape {tuple(out.shape)} does not match input {tuple(x.shape)} "
            f"with n_classes={n_classes} (expected (N, {n_classes}, *spatial))"
        )
    if tuple(out.shape[2:]) != target:
        raise ValueError(f"model changed the spatial size: input {target}, output {tuple(out.shape[2:])}")
    out = out[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]
    return torch.softmax(out.float(), dim=1)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode and inference mode; restore its train flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _channel_min(image: torch.Tensor) -> torch.Tensor:
    """Per-channel minimum of a (C, D, H, W) image (the background-like padding value)."""
    return image.flatten(1).amin(1)


# ----------------------------------------------------------------------------- voting


def _vote_labels(votes: torch.Tensor, prob_sum: torch.Tensor) -> torch.Tensor:
    """Majority vote per voxel; ties between the most-voted classes go to the larger summed softmax probability.

    A remaining exact tie goes to the lowest class index (``argmax`` returns the first).
    """
    top = votes.amax(0, keepdim=True)
    score = torch.where(votes == top, prob_sum, torch.full_like(prob_sum, -1.0))
    return score.argmax(0)


def _voting_accumulate(
    model: nn.Module,
    image: torch.Tensor,
    n_classes: int,
    window: int,
    overlap: int,
    batch_size: int,
    roi_hw: Sequence[int] | None,
    roi_overlap: float,
    device: str | torch.device,
    divisible_by: Divisible,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run all windows; return votes (K, D, H, W), summed softmax (K, D, H, W) and coverage (D,) on CPU."""
    c, d, h, w = image.shape
    pad_value = _channel_min(image)
    padded = _pad_far_end(image.unsqueeze(0), (max(d, window), h, w), pad_value)[0] if d < window else image
    starts = subvolume_starts(d, window, overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    votes = torch.zeros((n_classes, d, h, w), dtype=torch.int16)  # at most ceil(window / step) + 1 votes
    prob_sum = torch.zeros((n_classes, d, h, w), dtype=torch.float32)
    coverage = torch.zeros(d, dtype=torch.int32)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        x = torch.stack([padded[:, s : s + window] for s in chunk]).to(device)
        if roi_hw is None:
            p = _call_model(model, x, n_classes, divisible_by, pad_value)
        else:
            roi = (window, *[int(v) for v in roi_hw])
            p = sliding_window_inference(
                x,
                roi_size=roi,
                sw_batch_size=1,
                predictor=lambda t: _call_model(model, t, n_classes, divisible_by, pad_value),
                overlap=roi_overlap,
                mode="gaussian",
                cval=float(pad_value[0]) if c == 1 else 0.0,
            )
        p = p.float().cpu()
        lab = p.argmax(1)  # (n, window, H, W): each window's own decision
        for j, s in enumerate(chunk):
            n = min(window, d - s)  # windows of a short (padded) volume are cropped back
            for k in range(n_classes):  # per class: avoids an int64 one-hot of the whole window
                votes[k, s : s + n] += lab[j, :n] == k
            prob_sum[:, s : s + n] += p[j, :, :n]
            coverage[s : s + n] += 1
    return votes, prob_sum, coverage


def predict_subvolumes_voting(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    n_classes: int,
    window: int = 64,
    overlap: int = 16,
    batch_size: int = 1,
    roi_hw: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    divisible_by: Divisible = None,
    roi_overlap: float = 0.25,
    return_probs: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """FCN-PPM inference: argmax per ``window``-slice sub-volume, overlaps combined by per-voxel majority voting.

    Hand-written: MONAI's inferers blend probabilities and have no voting combiner.
    Each voxel's label is the class chosen by most of the windows covering it; a tie
    between classes with the same number of votes goes to the one with the larger
    softmax probability summed over those covering windows (then to the lowest class
    index). With ``roi_hw`` each sub-volume is tiled in-plane by MONAI's sliding window
    (Gaussian blending of probabilities, ``roi_overlap``) before its argmax. A volume
    shorter than ``window`` is padded at the end of axis 0 with the per-channel image
    minimum and cropped back. Returns ``(labels (D, H, W) uint8, votes (K, D, H, W)
    uint16)``, or the mean softmax over the covering windows ``(K, D, H, W)`` float32 as
    the second element when ``return_probs``.
    """
    if not 1 <= n_classes <= 256:
        raise ValueError(f"n_classes must be in 1..256 for uint8 label maps, got {n_classes}")
    img = _as_image(image)
    with _eval_mode(model):
        votes, prob_sum, coverage = _voting_accumulate(
            model, img, n_classes, window, overlap, batch_size, roi_hw, roi_overlap, device, divisible_by
        )
    labels = _vote_labels(votes, prob_sum).numpy().astype(np.uint8)
    if return_probs:
        return labels, (prob_sum / coverage.view(1, -1, 1, 1).float()).numpy()
    return labels, votes.numpy().astype(np.uint16)


# ----------------------------------------------------------------------------- other paths


def predict_sliding_window(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    n_classes: int,
    roi_size: Sequence[int],
    overlap: float = 0.25,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    device: str | torch.device = "cpu",
    divisible_by: Divisible = None,
) -> np.ndarray:
    """3D patch inference via ``monai.inferers.sliding_window_inference`` (blended softmax) -> (K, D, H, W)."""
    img = _as_image(image)
    pad_value = _channel_min(img)
    with _eval_mode(model):
        out = sliding_window_inference(
            img.unsqueeze(0),
            roi_size=tuple(int(v) for v in roi_size),
            sw_batch_size=sw_batch_size,
            predictor=lambda t: _call_model(model, t, n_classes, divisible_by, pad_value),
            overlap=overlap,
            mode=mode,
            cval=float(pad_value[0]) if img.shape[0] == 1 else 0.0,  # MONAI pads images smaller than roi_size
            sw_device=device,
            device="cpu",
        )
    return torch.as_tensor(out)[0].float().numpy()


def predict_slices_2d(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    n_classes: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    divisible_by: Divisible = None,
) -> np.ndarray:
    """Apply a 2D model to the slices along axis 0 (``batch_size`` slices at a time) -> probs (K, D, H, W)."""
    img = _as_image(image)
    pad_value = _channel_min(img)
    c, d, h, w = img.shape
    out = torch.empty((n_classes, d, h, w), dtype=torch.float32)
    with _eval_mode(model):
        for s in range(0, d, batch_size):
            x = img[:, s : s + batch_size].permute(1, 0, 2, 3).to(device)  # (n, C, H, W)
            p = _call_model(model, x, n_classes, divisible_by, pad_value)
            out[:, s : s + x.shape[0]] = p.cpu().permute(1, 0, 2, 3)
    return out.numpy()


def flip_tta(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray | torch.Tensor,
    axes: Sequence[Sequence[int]] = ((2,), (3,), (2, 3)),
) -> np.ndarray:
    """Average ``predict_fn`` over the unflipped image and each flip in ``axes`` (flip input, predict, flip back).

    ``axes`` index the ``(C, D, H, W)`` image and the ``(K, D, H, W)`` output alike:
    ``(2,)`` flips H (rows), ``(3,)`` W (columns), ``(1,)`` D (slices). ``predict_fn``
    normally returns softmax probabilities; any per-voxel array whose average is meaningful works.
    """
    img = _as_image(image).numpy()
    for ax in axes:
        if not ax or any(a not in (1, 2, 3) for a in ax):
            raise ValueError(f"flip axes must be non-empty tuples of spatial axes 1, 2, 3 of (C, D, H, W), got {ax!r}")
    total = np.array(predict_fn(img), dtype=np.float32)  # a fresh accumulator
    for ax in axes:
        flipped = np.ascontiguousarray(np.flip(img, axis=tuple(ax)))
        total += np.flip(np.asarray(predict_fn(flipped), dtype=np.float32), axis=tuple(ax))
    return total / np.float32(len(axes) + 1)


def predict_volume(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    n_classes: int,
    method: str = "voting",
    tta: bool = False,
    **opts: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict a whole volume -> ``(labels (D, H, W) uint8, probs (K, D, H, W) float32)``.

    ``method``: "voting" (:func:`predict_subvolumes_voting`; options window, overlap,
    batch_size, roi_hw, roi_overlap, device, divisible_by), "sliding_window"
    (:func:`predict_sliding_window`; roi_size required), or "slices2d"
    (:func:`predict_slices_2d`). ``tta`` adds flips (option ``tta_axes``, default H, W,
    H+W). For "voting" with TTA the votes and summed probabilities of all flips are
    pooled, i.e. the majority is taken over every (window, flip) prediction; ``probs`` is
    then the mean softmax over windows and flips. Labels of the other methods are the
    argmax of ``probs``.
    """
    if not 1 <= n_classes <= 256:
        raise ValueError(f"n_classes must be in 1..256 for uint8 label maps, got {n_classes}")
    img = _as_image(image)
    tta_axes = opts.pop("tta_axes", ((2,), (3,), (2, 3)))
    if method == "voting":
        keys = {"window", "overlap", "batch_size", "roi_hw", "roi_overlap", "device", "divisible_by"}
        _check_opts(method, opts, keys)

        def run(x: np.ndarray) -> np.ndarray:
            t = _as_image(x)
            with _eval_mode(model):
                votes, prob_sum, coverage = _voting_accumulate(
                    model,
                    t,
                    n_classes,
                    opts.get("window", 64),
                    opts.get("overlap", 16),
                    opts.get("batch_size", 1),
                    opts.get("roi_hw"),
                    opts.get("roi_overlap", 0.25),
                    opts.get("device", "cpu"),
                    opts.get("divisible_by"),
                )
            mean_p = prob_sum / coverage.view(1, -1, 1, 1).float()
            return torch.cat([votes.float(), prob_sum, mean_p]).numpy()

        stacked = flip_tta(run, img, tta_axes) if tta else run(img.numpy())
        votes_t = torch.as_tensor(stacked[:n_classes])
        # averaged vote counts keep the per-voxel ordering of the pooled counts (all windows x flips)
        votes_t = torch.round(votes_t * ((len(tta_axes) + 1) if tta else 1))
        prob_sum_t = torch.as_tensor(stacked[n_classes : 2 * n_classes])
        labels = _vote_labels(votes_t, prob_sum_t).numpy().astype(np.uint8)
        return labels, np.ascontiguousarray(stacked[2 * n_classes :], dtype=np.float32)
    if method == "sliding_window":
        _check_opts(method, opts, {"roi_size", "overlap", "mode", "sw_batch_size", "device", "divisible_by"})
        if "roi_size" not in opts:
            raise ValueError("predict_volume(method='sliding_window') needs roi_size=(d, h, w)")

        def run(x: np.ndarray) -> np.ndarray:
            return predict_sliding_window(model, x, n_classes, **opts)

    elif method == "slices2d":
        _check_opts(method, opts, {"batch_size", "device", "divisible_by"})

        def run(x: np.ndarray) -> np.ndarray:
            return predict_slices_2d(model, x, n_classes, **opts)

    else:
        raise ValueError(f"method must be 'voting', 'sliding_window' or 'slices2d', got {method!r}")
    probs = flip_tta(run, img, tta_axes) if tta else run(img.numpy())
    return probs.argmax(0).astype(np.uint8), np.asarray(probs, dtype=np.float32)


def _check_opts(method: str, opts: dict[str, Any], allowed: set[str]) -> None:
    """Reject options that the chosen method does not take (names the offending keys)."""
    extra = sorted(set(opts) - allowed)
    if extra:
        raise ValueError(f"predict_volume(method={method!r}) got unknown options {extra}; allowed: {sorted(allowed)}")
