"""Model zoo: importing this package fills the registry."""

from ctdl.models import fcn_ppm, monai_extra, monai_nets, pspnet, thesis, unet  # noqa: F401
from ctdl.models.registry import (
    MODELS,
    count_parameters,
    count_parameters_keras,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = ["MODELS", "count_parameters", "count_parameters_keras", "create_model", "list_models", "model_info", "register_model"]
