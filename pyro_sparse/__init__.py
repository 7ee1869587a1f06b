"""pyro-sparse: Bayesian sparsification of neural networks in Pyro.

Importing the package registers every analytic KL (``torch.distributions.kl.register_kl``) and changes nothing
else: no Pyro setting, no param store entry (docs/design.md, contract 4). Models and guides work in both of Pyro's
parameter modes: the global param store (``SVI`` + ``pyro.optim``) and ``module_local_params=True`` (an ELBO module
+ a torch optimizer). The library's own entry points (:func:`pyro_sparse.infer.fit`, the CLI, ``reproduce``) use
module-local parameters inside :func:`module_local_params` and restore the caller's setting on exit.
"""

from . import distributions  # (registers the KL pairs)
from .compact import compact, load_compact, save_compact
from .continuation import continue_as
from .export import export
from .nn.sparse_linear import sparse_kernels
from .settings import module_local_params
from .sparsify import Method, SparseModel, register_method, sparsify

__version__ = "0.1.0"
__all__ = ["Method", "SparseModel", "compact", "continue_as", "distributions", "export", "load_compact",
           "module_local_params", "register_method", "save_compact", "sparse_kernels", "sparsify"]
