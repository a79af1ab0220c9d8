"""PEFT methods behind one interface (``methods.base.Method``), found through a registry."""

from . import adapter, adaptformer, bitfit, dtl, full, kadaptation, karst, linear, lora, sparse_tuning, ssf, vpt  # noqa: F401  (registration by import)
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
