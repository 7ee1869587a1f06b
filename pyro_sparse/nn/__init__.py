"""Sparsifying PyroModules: weights with a prior (SVD), unit noise (SBP), unit gates (BB, DBB)."""

from .dbb import DBBGate, DynamicGate
from .svd import SVDConv2d, SVDLinear, set_train_clip
from .units import BBGate, SBPNoise, Select, Standardize, UnitModule

__all__ = [
    "BBGate", "DBBGate", "DynamicGate", "SBPNoise", "SVDConv2d", "SVDLinear", "Select", "Standardize", "UnitModule",
    "set_train_clip",
]
