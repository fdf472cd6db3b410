"""Optimizer registry: every optimizer DLAE offers (Keras 2.2.4) plus AdamW, all with weight decay.

Each factory takes ``params`` and the keyword arguments it understands; :func:`build_optimizer`
passes each one only the :class:`~ctdl.config.schema.OptimizerConfig` fields its signature names.
DLAE's per-update ``decay`` is not an optimizer argument here: use the ``time_decay`` schedule.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable

import torch

from ctdl.config.schema import OptimizerConfig
from ctdl.registry import Registry

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(params: Params, lr: float = 1e-3, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Stochastic gradient descent with (optionally Nesterov) momentum (FCN-PPM: 0.9, wd 1e-5)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (L2 weight decay added to the gradient)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params: Params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-8, momentum: float = 0.0,
            weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """RMSprop with smoothing constant alpha = rho (Keras naming) and optional momentum."""
    return torch.optim.RMSprop(params, lr=lr, alpha=rho, eps=eps, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad")
def adagrad(params: Params, lr: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adagrad."""
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adadelta")
def adadelta(params: Params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-8,
             weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adadelta with decay rate rho."""
    return torch.optim.Adadelta(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamax")
def adamax(params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adamax (Adam with the infinity norm)."""
    return torch.optim.Adamax(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("nadam")
def nadam(params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """NAdam (Adam with Nesterov momentum)."""
    return torch.optim.NAdam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def build_optimizer(cfg: OptimizerConfig, params: Params) -> torch.optim.Optimizer:
    """Build the optimizer ``cfg.name`` over ``params`` from the config fields its factory accepts."""
    factory = OPTIMIZERS.get(cfg.name)
    accepted = set(inspect.signature(factory).parameters) - {"params"}
    kwargs = {k: v for k, v in cfg.model_dump().items() if k in accepted}
    params = list(params)
    if not params:
        raise ValueError(f"optimizer '{cfg.name}' got no parameters to optimize")
    return factory(params, **kwargs)


__all__ = ["OPTIMIZERS", "build_optimizer"]
