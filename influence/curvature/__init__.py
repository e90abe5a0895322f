"""Curvature methods, registered by name: ekfac, kfac, lissa, identity."""

from . import ekfac, identity, kfac, lissa  # noqa: F401  (registers the methods)
from .base import CURVATURES, Curvature, FitConfig, get_curvature_class, make_config, register
from .factors import KroneckerConfig, KroneckerCurvature
from .lissa import LissaConfig, gauss_newton_product

__all__ = [
    "CURVATURES",
    "Curvature",
    "FitConfig",
    "KroneckerConfig",
    "KroneckerCurvature",
    "LissaConfig",
    "gauss_newton_product",
    "get_curvature_class",
    "make_config",
    "register",
]
