"""Guide family of beta-Bernoulli dropout: a Kumaraswamy per unit gate probability (Lee et al. 2018, Sec. 3.2).

q(π_k) = Kumaraswamy(a_k, b_k), a = softplus(a_uc), b = softplus(b_uc); reference init a_uc = −1, b_uc = 0.5413
(b ≈ 1); samples through the log-space sampler of ``pyro_sparse.distributions.Kumaraswamy``. Matches the
``Beta(α/K, 1)`` prior; the KL is registered in ``pyro_sparse.distributions.kl``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam

from pyro_sparse.distributions import Kumaraswamy
from pyro_sparse.settings import param_value


class KumaraswamyUnits(PyroModule):
    def __init__(self, num_units: int, a_uc_init: float = -1.0, b_uc_init: float = 0.5413):
        super().__init__()
        self.a_uc = PyroParam(torch.full((num_units,), float(a_uc_init)))
        self.b_uc = PyroParam(torch.full((num_units,), float(b_uc_init)))

    def distribution(self) -> Kumaraswamy:
        return Kumaraswamy(F.softplus(param_value(self, "a_uc")), F.softplus(param_value(self, "b_uc")),
                           validate_args=False)

    @classmethod
    def from_site(cls, prior, init, shape: torch.Size) -> KumaraswamyUnits:
        return cls(shape.numel())
