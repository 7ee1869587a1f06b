"""Our models and guides work with plain Pyro: TraceMeanField_ELBO, analytic KLs, module-local parameters.

With ``module_local_params=True`` (DESIGN.md contract 4) Pyro's idiom is ``loss_fn = TraceMeanField_ELBO()(model,
guide)`` (an ``nn.Module``) and a torch optimizer over ``loss_fn.parameters()``; ``SVI`` with ``pyro.optim`` needs the
global param store and is not available in that mode.
"""

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.compress import compress
from pyro_sparse.data import load_dataset
from pyro_sparse.metrics import classification_error


def test_plain_pyro_elbo_module_trains_svd_logreg_on_digits():
    pyro.set_rng_seed(0)
    data = load_dataset("noise-digits")
    model = build_model("logreg", "svd", data.input_shape, 10, num_data=len(data.y_train), mean=data.mean,
                        std=data.std)
    guide = MeanFieldGuide(model)
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    loss_fn = TraceMeanField_ELBO()(model, guide)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        idx = torch.randint(0, len(data.y_train), (100,))
        loss = loss_fn(data.x_train[idx], data.y_train[idx])
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    assert any(not torch.equal(before[k], v) for k, v in guide.state_dict().items())
    assert len(pyro.get_param_store()) == 0  # parameters live in the modules (DESIGN.md contract 4)
    assert classification_error(compress(model, guide), data.x_test, data.y_test) < 15.0


def test_two_models_train_in_one_process():
    a = build_model("logreg", "sbp", (64,), 10, num_data=100)
    b = build_model("logreg", "sbp", (64,), 10, num_data=100)
    ga, gb = MeanFieldGuide(a), MeanFieldGuide(b)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    TraceMeanField_ELBO().differentiable_loss(a, ga, x, y).backward()
    assert all(p.grad is None for p in gb.parameters())
