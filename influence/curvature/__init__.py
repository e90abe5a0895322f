"""Curvature methods, registered by name: ekfac, kfac, lissa, identity."""
from .base import CURVATURES, Curvature, FitConfig, get_curvature_class, make_config, register
from .factors import KroneckerConfig
from . import ekfac, identity, kfac, lissa  # noqa: F401  (registers the methods)
from .lissa import LissaConfig, gauss_newton_product

__all__ = ["CURVATURES", "Curvature", "FitConfig", "KroneckerConfig", "LissaConfig", "get_curvature_class",
           "make_config", "register", "gauss_newton_product"]
