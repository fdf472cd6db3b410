"""Optimizer registry: every name builds from OptimizerConfig and steps."""

from __future__ import annotations

import typing

import pytest
import torch

from ctdl.config.schema import OptimizerConfig
from ctdl.engine.optimizers import OPTIMIZERS, build_optimizer

NAMES = list(typing.get_args(OptimizerConfig.model_fields["name"].annotation))


def test_registry_covers_config_names() -> None:
    assert sorted(NAMES) == OPTIMIZERS.names()


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_builds_and_steps(name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = build_optimizer(OptimizerConfig(name=name, lr=0.05, weight_decay=1e-4), model.parameters())
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fcn_ppm_sgd_settings() -> None:
    cfg = OptimizerConfig(name="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-5)
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (1e-3, 0.9, 1e-5, False)


def test_parameters_are_mapped() -> None:
    params = list(torch.nn.Linear(2, 2).parameters())
    sgd = build_optimizer(OptimizerConfig(name="sgd", momentum=0.8, nesterov=True), params)
    assert sgd.param_groups[0]["nesterov"] is True and sgd.param_groups[0]["momentum"] == 0.8
    rms = build_optimizer(OptimizerConfig(name="rmsprop", rho=0.7, momentum=0.5, eps=1e-6), params)
    assert isinstance(rms, torch.optim.RMSprop)
    assert (rms.param_groups[0]["alpha"], rms.param_groups[0]["momentum"], rms.param_groups[0]["eps"]) == (0.7, 0.5, 1e-6)
    ada = build_optimizer(OptimizerConfig(name="adadelta", rho=0.95), params)
    assert isinstance(ada, torch.optim.Adadelta) and ada.param_groups[0]["rho"] == 0.95
    adamw = build_optimizer(OptimizerConfig(name="adamw", betas=(0.8, 0.99), weight_decay=0.0), params)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.99) and adamw.param_groups[0]["weight_decay"] == 0.0
    assert isinstance(build_optimizer(OptimizerConfig(name="nadam"), params), torch.optim.NAdam)
    assert isinstance(build_optimizer(OptimizerConfig(name="adamax"), params), torch.optim.Adamax)
    assert isinstance(build_optimizer(OptimizerConfig(name="adagrad"), params), torch.optim.Adagrad)


def test_param_groups_and_empty_params() -> None:
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = build_optimizer(OptimizerConfig(name="adam", lr=1e-3),
                          [{"params": a.parameters()}, {"params": b.parameters(), "lr": 1e-4}])
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer(OptimizerConfig(name="sgd"), [])


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="sgd"):
        OPTIMIZERS.get("lion")
