"""The model zoo of pyro-sparse: plain architectures (:mod:`.nets`) and :func:`build_model`, which attaches a method
to one of them as a :class:`pyro_sparse.model.Classifier` (re-exported here)."""

from . import nets
from .architectures import ARCHS, Classifier, build_model, load_pretrained, method_names, sample_shape

__all__ = ["ARCHS", "Classifier", "build_model", "load_pretrained", "method_names", "nets", "sample_shape"]
