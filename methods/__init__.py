"""PEFT methods behind one interface (``methods.base.Method``), found through a registry."""

from . import (  # noqa: F401  (registration by import)
    adapter,
    adaptformer,
    bitfit,
    boft,
    dtl,
    fact,
    fourierft,
    full,
    glora,
    ia3,
    kadaptation,
    karst,
    linear,
    ln_tuning,
    loha,
    lokr,
    lora,
    oft,
    repadapter,
    sparse_tuning,
    ssf,
    vera,
    vpt,
)
from .base import (
    BackboneSpec,
    Method,
    MethodError,
    available_methods,
    backbone_spec_of,
    get_method,
    make_config,
    register_method,
)

__all__ = [
    "BackboneSpec",
    "Method",
    "MethodError",
    "available_methods",
    "backbone_spec_of",
    "get_method",
    "make_config",
    "register_method",
]
