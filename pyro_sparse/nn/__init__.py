"""The latent building blocks a method attaches: weights with a prior (SVD), unit noise (SBP), gates (BB, DBB)."""

from .attention import PrunedMultiheadAttention
from .dbb import DBBGate, DynamicGate
from .sparse_linear import SparseLinear, sparse_kernels
from .svd import WeightSite, set_train_clip
from .units import BBGate, SBPNoise, Select, Standardize, UnitModule

__all__ = [
    "BBGate", "DBBGate", "DynamicGate", "PrunedMultiheadAttention", "SBPNoise", "Select", "SparseLinear", "Standardize",
    "UnitModule", "WeightSite",
    "set_train_clip", "sparse_kernels",
]
