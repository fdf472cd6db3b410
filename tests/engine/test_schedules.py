"""Per-epoch learning-rate schedules against hand-computed sequences.

Convention under test: ``lrs[e]`` is the learning rate used during 0-based epoch ``e``, i.e. after
``e`` calls of ``step()`` (torch's MultiStepLR convention: milestone 3 = after 3 completed epochs).
"""

from __future__ import annotations

import io

import pytest
import torch

from ctdl.config.schema import ScheduleConfig
from ctdl.engine.schedules import build_scheduler


def _opt(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _lrs(cfg: ScheduleConfig, lr: float, epochs: int = 8, metrics=None, mode: str = "min") -> list[float]:
    opt = _opt(lr)
    sched = build_scheduler(cfg, opt, epochs, mode=mode)
    out = []
    for e in range(epochs):
        out.append(sched.get_last_lr()[0])
        assert opt.param_groups[0]["lr"] == out[-1]
        sched.step(None if metrics is None else metrics[e])
    return out


def test_multistep_fcn_ppm() -> None:
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[3, 5, 7], gamma=0.1), 1e-3, epochs=9)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6], rel=1e-12)


def test_none_is_constant() -> None:
    assert _lrs(ScheduleConfig(name="none"), 0.01) == [0.01] * 8


def test_step_decay() -> None:
    lrs = _lrs(ScheduleConfig(name="step", step_size=3, gamma=0.5), 1.0)
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25], rel=1e-12)


def test_exponential() -> None:
    lrs = _lrs(ScheduleConfig(name="exponential", gamma=0.5), 1.0)
    assert lrs == pytest.approx([1, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125], rel=1e-12)


def test_time_decay() -> None:
    lrs = _lrs(ScheduleConfig(name="time_decay", decay=0.5), 1.0)
    assert lrs == pytest.approx([1, 2 / 3, 1 / 2, 2 / 5, 1 / 3, 2 / 7, 1 / 4, 2 / 9], rel=1e-12)


def test_polynomial() -> None:
    lrs = _lrs(ScheduleConfig(name="polynomial", power=2.0), 1.0)
    assert lrs == pytest.approx([64 / 64, 49 / 64, 36 / 64, 25 / 64, 16 / 64, 9 / 64, 4 / 64, 1 / 64], rel=1e-9)


def test_cosine() -> None:
    lrs = _lrs(ScheduleConfig(name="cosine"), 1.0)
    expected = [1.0, 0.96193977, 0.85355339, 0.69134172, 0.5, 0.30865828, 0.14644661, 0.03806023]
    assert lrs == pytest.approx(expected, abs=1e-8)


def test_cosine_to_min_lr() -> None:
    lrs = _lrs(ScheduleConfig(name="cosine", min_lr=0.1), 1.0)
    expected = [1.0, 0.96193977, 0.85355339, 0.69134172, 0.5, 0.30865828, 0.14644661, 0.03806023]
    assert lrs == pytest.approx([0.1 + 0.9 * v for v in expected], abs=1e-8)


def test_warmup_then_multistep() -> None:
    # warm-up epochs 0-2 at (e+1)/4; the schedule's clock starts at epoch 3, milestone 2 -> epoch 5
    cfg = ScheduleConfig(name="multistep", milestones=[2], gamma=0.1, warmup_epochs=3)
    lrs = _lrs(cfg, 1.0)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.1, 0.1, 0.1], rel=1e-12)


def test_warmup_then_polynomial_spans_remaining_epochs() -> None:
    cfg = ScheduleConfig(name="polynomial", power=1.0, warmup_epochs=2)
    lrs = _lrs(cfg, 1.0, epochs=6)  # polynomial over 4 epochs after 2 warm-up epochs
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25], rel=1e-9)


def test_min_lr_floor() -> None:
    lrs = _lrs(ScheduleConfig(name="exponential", gamma=0.5, min_lr=0.2), 1.0, epochs=5)
    assert lrs == pytest.approx([1, 0.5, 0.25, 0.2, 0.2], rel=1e-12)


def test_plateau_reduces_after_patience() -> None:
    cfg = ScheduleConfig(name="plateau", factor=0.5, patience=2)
    metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]
    lrs = _lrs(cfg, 1.0, metrics=metrics)
    # best 0.9 at epoch 1; bad epochs 2, 3, 4 -> the third exceeds patience 2 -> lr halves for epoch 5
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 0.5, 0.5, 0.5])


def test_plateau_max_mode_and_missing_metric() -> None:
    cfg = ScheduleConfig(name="plateau", factor=0.5, patience=0)
    # rising metric in max mode never reduces; None (no validation) never counts as bad
    assert _lrs(cfg, 1.0, metrics=[1, 2, None, 3, None, 4, 5, 6], mode="max") == [1.0] * 8
    # the same sequence in min mode reduces after every non-improving validated epoch
    lrs = _lrs(cfg, 1.0, metrics=[1, 2, None, 3, None, 4, 5, 6], mode="min")
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.0625])


def test_plateau_cooldown_and_min_lr() -> None:
    cfg = ScheduleConfig(name="plateau", factor=0.1, patience=0, cooldown=2, min_lr=1e-3)
    lrs = _lrs(cfg, 1.0, metrics=[1.0] * 8)
    # reduce after epoch 1, cool down 2 epochs, reduce again, then clamp at min_lr
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01], rel=1e-9)
    lrs = _lrs(cfg, 1.0, metrics=[1.0] * 14, epochs=14)
    assert lrs[-1] == pytest.approx(1e-3) and min(lrs) >= 1e-3


def test_set_mode_switches_plateau_direction() -> None:
    opt = _opt(1.0)
    sched = build_scheduler(ScheduleConfig(name="plateau", factor=0.5, patience=0), opt, 4)
    sched.set_mode("max")
    for v in (1.0, 2.0, 3.0):
        sched.step(v)
    assert sched.get_last_lr() == [1.0]


@pytest.mark.parametrize("name", ["multistep", "step", "exponential", "time_decay", "plateau", "polynomial", "cosine", "none"])
def test_state_dict_round_trip_weights_only(name: str) -> None:
    cfg = ScheduleConfig(name=name, patience=0, factor=0.5, decay=0.3, warmup_epochs=1)
    metrics = [1.0, 0.5, 0.6, 0.7, 0.4, 0.8, 0.9, 1.0]
    opt_a = _opt(0.1)
    a = build_scheduler(cfg, opt_a, 8)
    for m in metrics[:4]:
        a.step(m)
    buf = io.BytesIO()
    torch.save({"s": a.state_dict(), "o": opt_a.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    opt_b = _opt(0.1)
    b = build_scheduler(cfg, opt_b, 8)
    opt_b.load_state_dict(loaded["o"])
    b.load_state_dict(loaded["s"])
    for m in metrics[4:]:
        a.step(m)
        b.step(m)
        assert a.get_last_lr() == b.get_last_lr()


def test_load_rejects_other_schedule() -> None:
    a = build_scheduler(ScheduleConfig(name="step"), _opt(1.0), 4)
    b = build_scheduler(ScheduleConfig(name="cosine"), _opt(1.0), 4)
    with pytest.raises(ValueError, match="scheduler"):
        b.load_state_dict(a.state_dict())
