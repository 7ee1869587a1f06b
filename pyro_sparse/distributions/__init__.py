"""Priors and variational families of pyro-sparse; importing this package registers every analytic KL."""

from . import kl
from .beta1 import Beta1
from .kl import kl_normal_log_uniform_from_log_alpha, kumaraswamy_expected_log1m, log_alpha, normal_log_alpha
from .kumaraswamy import Kumaraswamy
from .log_uniform import LogUniform
from .truncated import TruncatedLogNormal, TruncatedLogUniform

__all__ = [
    "Beta1",
    "Kumaraswamy",
    "LogUniform",
    "TruncatedLogNormal",
    "TruncatedLogUniform",
    "kl",
    "kl_normal_log_uniform_from_log_alpha",
    "kumaraswamy_expected_log1m",
    "log_alpha",
    "normal_log_alpha",
]
