"""pyro-sparse: Bayesian sparsification of neural networks in Pyro.

Importing the package registers every analytic KL and sets ``pyro.settings.set(module_local_params=True)``
(DESIGN.md contract 4: parameters live in modules, never in a global param store).
"""

import pyro

pyro.settings.set(module_local_params=True)

from . import distributions  # noqa: E402  (registers the KL pairs)
from .compress import load_compressed  # noqa: E402

__version__ = "0.1.0"
__all__ = ["distributions", "load_compressed"]
