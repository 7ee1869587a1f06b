"""``Beta(α, 1)``: the beta-Bernoulli dropout prior on unit keep probabilities (Lee et al. 2018, Eq. 8).

A type of its own (a ``Beta`` subclass, so guides still pair it with the Kumaraswamy family) so that its KL from the
Kumaraswamy guide is chosen by type: the exact closed form, with no series for ``E_q[log(1 − π)]`` and no
data-dependent branch on the second concentration (which would read a tensor back to the host every step).
"""

from __future__ import annotations

import torch
from pyro.distributions import Beta


class Beta1(Beta):
    """``Beta(concentration1, 1)``, density ``α·π^(α−1)`` on ``[0, 1]``; batch shape = that of ``concentration1``.

    :param concentration1: α > 0 (tensor or float), e.g. α/K = 1e-4 for BB.
    """

    def __init__(self, concentration1, validate_args: bool | None = None):
        c1 = torch.as_tensor(concentration1, dtype=torch.get_default_dtype()) if not torch.is_tensor(
            concentration1) else concentration1
        super().__init__(c1, torch.ones_like(c1), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> Beta1:
        new = self._get_checked_instance(Beta1, _instance)
        return super().expand(batch_shape, _instance=new)
