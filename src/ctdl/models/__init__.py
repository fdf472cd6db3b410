"""Model zoo: importing this package fills the registry."""

from ctdl.models import cnn3d, viptt  # noqa: F401  (classification)
from ctdl.models import dlae_prebuilt  # noqa: F401  (DLAE prebuilt models and backbones)
from ctdl.models import fcn_ppm, gan, monai_extra, monai_nets, pspnet, ssd, thesis, unet  # noqa: F401
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
