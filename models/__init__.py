"""Pyro models of pyro-sparse: the papers' architectures with a categorical likelihood."""

from .architectures import ARCHS, METHODS, Classifier, build_model, build_net, load_pretrained, register_unit

__all__ = ["ARCHS", "METHODS", "Classifier", "build_model", "build_net", "load_pretrained", "register_unit"]
