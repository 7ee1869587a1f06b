"""Pyro models of pyro-sparse: plain architectures (:mod:`.nets`) and the classifier model around them."""

from . import nets
from .architectures import ARCHS, METHODS, Classifier, build_model, load_pretrained, sample_shape

__all__ = ["ARCHS", "METHODS", "Classifier", "build_model", "load_pretrained", "nets", "sample_shape"]
