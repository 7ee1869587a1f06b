"""Sparsifying PyroModules: weights with a prior (SVD), unit noise (SBP), unit gates (BB, DBB)."""

from .svd import SVDConv2d, SVDLinear
from .units import BBGate, SBPNoise, Select, Standardize, UnitModule

__all__ = ["BBGate", "SBPNoise", "SVDConv2d", "SVDLinear", "Select", "Standardize", "UnitModule"]
