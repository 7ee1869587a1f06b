"""Guide family of beta-Bernoulli dropout: a Kumaraswamy per unit gate probability (Lee et al. 2018, Sec. 3.2).

q(π_k) = Kumaraswamy(a_k, b_k), a = softplus(a_uc), b = softplus(b_uc); reference init a_uc = −1 (LeNets; 2 for the
authors' VGG with BatchNorm: the model's ``pi_init``), b_uc = 0.5413 (b ≈ 1); samples through the log-space
sampler of ``pyro_sparse.distributions.Kumaraswamy``. Matches the ``Beta(α/K, 1)`` prior; the KL is registered in
``pyro_sparse.distributions.kl``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam

from pyro_sparse.distributions import Kumaraswamy
from pyro_sparse.settings import param_value


class KumaraswamyUnits(PyroModule):
    def __init__(self, num_units: int, a_uc_init: float | torch.Tensor = -1.0, b_uc_init: float = 0.5413):
        super().__init__()
        self.a_uc = PyroParam(torch.as_tensor(a_uc_init, dtype=torch.float32).expand(num_units).clone())
        self.b_uc = PyroParam(torch.full((num_units,), float(b_uc_init)))

    def distribution(self) -> Kumaraswamy:
        return Kumaraswamy(F.softplus(param_value(self, "a_uc")), F.softplus(param_value(self, "b_uc")),
                           validate_args=False)

    @classmethod
    def from_site(cls, prior, init, shape: torch.Size) -> KumaraswamyUnits:
        """``init``: the model's ``pi_init`` (initial E[π] per unit, e.g. the authors' VGG init) or ``None`` (the
        LeNet init a_uc = −1). With b ≈ 1, E[π] = a / (a + 1), so a = E / (1 − E) and a_uc = softplus⁻¹(a)."""
        if init is None:
            return cls(shape.numel())
        a = init.detach().double().reshape(shape.numel())
        a = a / (1 - a)
        return cls(shape.numel(), a + torch.log(-torch.expm1(-a)))  # softplus⁻¹(a)
