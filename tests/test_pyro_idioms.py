"""Pyro-native: our models and guides work with Pyro's own idioms in both parameter modes, and importing pyro-sparse
changes nothing in anybody else's Pyro code (DESIGN.md contract 4).

* global param store: ``SVI(model, guide, pyro.optim.Adam, TraceMeanField_ELBO() | SparseELBO())`` + ``svi.step``;
* ``module_local_params=True``: ``TraceMeanField_ELBO()(model, guide)`` (an ``nn.Module``) + a torch optimizer;
* ``Predictive`` (sequential and parallel), vectorised particles, honest guide traces, no warning floods.
"""

import json
import math
import subprocess
import sys
import textwrap
import warnings

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.compact import compact
from pyro_sparse.data import load_dataset
from pyro_sparse.infer import SparseELBO, TrainConfig, fit
from pyro_sparse.metrics import classification_error

METHODS = ("svd", "sbp", "bb", "dbb")


@pytest.fixture(scope="module")
def data():
    return load_dataset("noise-digits")


def _build(method, data, seed=0):
    pyro.set_rng_seed(seed)
    model = build_model("logreg", method, data.input_shape, 10, num_data=len(data.y_train), mean=data.mean,
                        std=data.std)
    return model, MeanFieldGuide(model)


def _batches(data, steps, size=100):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, len(data.y_train), (size,), generator=g) for _ in range(steps)]


# ---- importing pyro-sparse changes nothing: canonical Pyro patterns, each in a fresh process ----------------------

PATTERNS = {
    "param_guide_svi": """
        def model(x):
            mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
            with pyro.plate("data", len(x)):
                pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)
        def guide(x):
            loc = pyro.param("loc", torch.tensor(0.0))
            scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
            pyro.sample("mu", dist.Normal(loc, scale))
        x = torch.randn(50) + 3.0
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        out["losses"] = [svi.step(x) for _ in range(100)]
        out["loc"] = pyro.param("loc").item()
    """,
    "autonormal_regression_save_load": """
        class Regression(PyroModule):
            def __init__(self):
                super().__init__()
                self.linear = PyroModule[nn.Linear](3, 1)
                self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
                self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))
            def forward(self, x, y=None):
                sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
                mean = self.linear(x).squeeze(-1)
                with pyro.plate("data", x.shape[0]):
                    pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
                return mean
        x = torch.randn(100, 3)
        y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.1 * torch.randn(100)
        model = Regression()
        guide = AutoNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
        out["losses"] = [svi.step(x, y) for _ in range(150)]
        out["weight_loc"] = pyro.param("AutoNormal.locs.linear.weight").flatten().tolist()
        pyro.get_param_store().save(path)
        pyro.clear_param_store()
        pyro.get_param_store().load(path)
        out["stored"] = sorted(pyro.get_param_store().keys())
        out["reloaded_weight_loc"] = pyro.param("AutoNormal.locs.linear.weight").flatten().tolist()
    """,
    "pyromodule_pyroparam_and_parameter": """
        class Net(PyroModule):
            def __init__(self):
                super().__init__()
                self.scale = PyroParam(torch.tensor(1.0), constraint=dist.constraints.positive)
                self.linear = PyroModule[nn.Linear](2, 1)
                self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
            def forward(self, x, y=None):
                mean = self.linear(x).squeeze(-1)  # the bias stays a plain nn.Parameter
                with pyro.plate("data", x.shape[0]):
                    pyro.sample("obs", dist.Normal(mean, self.scale), obs=y)
        x = torch.randn(64, 2)
        y = x @ torch.tensor([0.5, -1.0]) + 1.0
        net = Net()
        guide = AutoNormal(net)
        svi = SVI(net, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        out["losses"] = [svi.step(x, y) for _ in range(100)]
        out["scale"] = pyro.param("scale").item()
        out["bias"] = pyro.param("linear.bias").flatten().tolist()
    """,
}

PREAMBLE = """
    import json, sys
    import pyro, torch, pyro.distributions as dist
    from torch import nn
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.nn import PyroModule, PyroParam, PyroSample
    when, path = sys.argv[1], sys.argv[2]
    settings_before = dict(pyro.settings.get())
    if when == "first":
        import pyro_sparse  # noqa: F401
    pyro.set_rng_seed(0)
    out = {}
"""

EPILOGUE = """
    if when == "last":  # a later notebook cell: imported while the user's SVI state is live, then more steps
        import pyro_sparse  # noqa: F401
        out["after_import"] = [svi.step(*([x, y] if "y" in dir() else [x])) for _ in range(5)]
    else:
        out["after_import"] = [svi.step(*([x, y] if "y" in dir() else [x])) for _ in range(5)]
    out["settings_changed"] = dict(pyro.settings.get()) != settings_before
    print(json.dumps(out))
"""


def _run_pattern(body: str, when: str, tmp_path) -> dict:
    script = textwrap.dedent(PREAMBLE) + textwrap.dedent(body) + textwrap.dedent(EPILOGUE)
    res = subprocess.run([sys.executable, "-c", script, when, str(tmp_path / f"store-{when}.pt")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_importing_pyro_sparse_changes_no_pyro_code(pattern, tmp_path):
    """The same script without the import, with it first, and with it in a later "cell": identical results."""
    without = _run_pattern(PATTERNS[pattern], "never", tmp_path)
    first = _run_pattern(PATTERNS[pattern], "first", tmp_path)
    last = _run_pattern(PATTERNS[pattern], "last", tmp_path)
    assert without == first == last
    assert not first["settings_changed"]
    assert without["losses"][-1] < without["losses"][0]
    if "stored" in without:  # AutoNormal's parameters are in the param store and round-trip through save/load
        assert "AutoNormal.locs.linear.weight" in without["stored"]
        assert without["reloaded_weight_loc"] == without["weight_loc"]


def test_import_leaves_settings_and_param_store_alone():
    code = ("import pyro; s = dict(pyro.settings.get()); import pyro_sparse, pyro_sparse.models, pyro_sparse.guides, "
            "pyro_sparse.infer, pyro_sparse.cli, pyro_sparse.reproduce; "
            "assert dict(pyro.settings.get()) == s, (s, pyro.settings.get()); "
            "assert len(pyro.get_param_store()) == 0; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_generic_top_level_names_are_not_installed(tmp_path):
    """``models`` and ``guides`` install as ``pyro_sparse.models`` / ``pyro_sparse.guides`` only."""
    for name in ("models", "guides"):
        res = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=60)
        assert res.returncode != 0 and f"No module named '{name}'" in res.stderr
    res = subprocess.run([sys.executable, "-c", "import pyro_sparse.models, pyro_sparse.guides"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


# ---- both parameter modes give the same training ----------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_svi_global_store_equals_elbo_module(method, data):
    """``SVI`` + ``pyro.optim.Adam`` (global param store) and the ELBO module + ``torch.optim.Adam``
    (``module_local_params=True``): same seed, same batches → the same loss trajectory and test error."""
    batches = _batches(data, 60)
    model, guide = _build(method, data)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=TraceMeanField_ELBO())
    pyro.set_rng_seed(5)
    svi_losses = [svi.step(data.x_train[i], data.y_train[i]) for i in batches]
    assert len(pyro.get_param_store()) > 0  # the guide's PyroParams live in the global store
    svi_error = classification_error(compact(model, guide), data.x_test, data.y_test)
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=True):
        model, guide = _build(method, data)
        loss_fn = TraceMeanField_ELBO()(model, guide)
        optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
        pyro.set_rng_seed(5)
        module_losses = []
        for i in batches:
            loss = loss_fn(data.x_train[i], data.y_train[i])
            loss.backward()
            optim.step()
            optim.zero_grad()
            module_losses.append(loss.item())
        module_error = classification_error(compact(model, guide), data.x_test, data.y_test)
    assert len(pyro.get_param_store()) == 0  # module-local: the store is untouched
    assert torch.allclose(torch.tensor(svi_losses), torch.tensor(module_losses), rtol=1e-5)
    assert svi_error == module_error
    assert sum(svi_losses[-10:]) < sum(svi_losses[:10])


def test_sparse_elbo_with_svi_and_param_store_round_trip(data, tmp_path):
    model, guide = _build("svd", data)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 1e-2}), loss=SparseELBO())
    for i in _batches(data, 30):
        svi.step(data.x_train[i], data.y_train[i])
    trained = {n: guide.posterior(n).loc.detach().clone() for n in guide.site_names}
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    _, fresh = _build("svd", data, seed=1)
    assert not all(torch.equal(fresh.posterior(n).loc, v) for n, v in trained.items())
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    for n, v in trained.items():  # the fresh guide reads the loaded store
        assert torch.equal(fresh.posterior(n).loc, v)


def test_elbo_module_keeps_two_models_apart():
    with pyro.settings.context(module_local_params=True):
        a = build_model("logreg", "sbp", (64,), 10, num_data=100)
        b = build_model("logreg", "sbp", (64,), 10, num_data=100)
        ga, gb = MeanFieldGuide(a), MeanFieldGuide(b)
        x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
        TraceMeanField_ELBO()(a, ga)(x, y).backward()
    assert all(p.grad is None for p in gb.parameters())
    assert any(p.grad is not None for p in ga.parameters())


def test_fit_scopes_its_parameter_mode(data):
    """``fit`` trains a model built in the default (global) mode with module-local parameters and restores the
    caller's setting, on return and on an exception."""
    model, guide = _build("bb", data)
    small = load_dataset("noise-digits")
    small.x_train, small.y_train = small.x_train[:200], small.y_train[:200]
    assert not pyro.settings.get("module_local_params")
    fit(model, guide, small, TrainConfig(epochs=1, batch_size=50, lr=1e-2, measure_latency=False), progress=False)
    assert not pyro.settings.get("module_local_params")
    assert len(pyro.get_param_store()) == 0
    with pyro.settings.context(module_local_params=True):
        with pytest.raises(ValueError, match="epochs"):
            fit(model, guide, small, TrainConfig(epochs=0), progress=False)
        assert pyro.settings.get("module_local_params")
    assert not pyro.settings.get("module_local_params")


# ---- Predictive, particles, honest traces, no warning floods --------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_predictive_draws_posterior_predictive(method, parallel, data):
    model, guide = _build(method, data)
    x = data.x_test[:7]
    out = Predictive(model, guide=guide, num_samples=6, parallel=parallel)(x)
    assert out["obs"].shape == (6, 7)
    assert out["obs"].min() >= 0 and out["obs"].max() < 10
    latent = {n: v for n, v in out.items() if n != "obs"}
    assert set(latent) == set(guide.site_names)
    for name, v in latent.items():
        assert v.shape[0] == 6 and v.shape[-1] == guide.posterior(name).batch_shape[-1]
        assert not torch.equal(v[0], v[1])  # six different posterior draws


def test_parallel_predictive_equals_sequential_on_the_same_draws():
    """Conditioned on the same latent draws, the vectorised network (sample dims folded into the batch, grouped
    convolutions) gives each sample's logits exactly as a separate run does (LeNet-5: convs and dense layers)."""
    from pyro.poutine import condition

    for method in ("svd", "sbp"):
        model = build_model("lenet5", method, (1, 28, 28), 10, num_data=1000)
        guide = MeanFieldGuide(model)
        x = torch.rand(5, 1, 28, 28)
        with torch.no_grad():
            trace = pyro.poutine.trace(pyro.plate("s", 3, dim=-2)(guide)).get_trace(x)
            draws = {n: s["value"].view_as(s["value"]) for n, s in trace.nodes.items() if s["type"] == "sample"}
            together = pyro.plate("s", 3, dim=-2)(condition(model, draws))(x)
            for s in range(3):
                alone = condition(model, {n: v[s] for n, v in draws.items()})(x)
                assert torch.allclose(together[s], alone, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("elbo", [SparseELBO, TraceMeanField_ELBO], ids=["SparseELBO", "TraceMeanField_ELBO"])
def test_vectorised_particles_estimate_the_same_elbo(method, elbo, data):
    model, guide = _build(method, data)
    x, y = data.x_train[:100], data.y_train[:100]
    vec = elbo(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    one = elbo(max_plate_nesting=1)
    with torch.no_grad():
        v = torch.tensor([vec.loss(model, guide, x, y) for _ in range(30)])
        s = torch.tensor([one.loss(model, guide, x, y) for _ in range(240)])
    se = math.sqrt(v.var() / len(v) + s.var() / len(s))
    assert abs(v.mean() - s.mean()) < 4 * se + 1e-3 * abs(s.mean())
    assert v.var() < s.var()  # 8 particles per estimate: less variance
    vec.differentiable_loss(model, guide, x, y).backward()
    assert all(torch.isfinite(p.grad).all() for p in guide.parameters() if p.grad is not None)


def test_guide_traces_record_draws_from_q(data):
    """No hidden means: the SVD weight a guide trace records is a fresh draw from N(θ, σ²) every time."""
    model, guide = _build("svd", data)
    with torch.no_grad():
        fam = guide.sites["weights__fc1__weight"]
        fam.log_sigma2.fill_(math.log(0.04))
        q = guide.posterior("weights.fc1.weight")
        draws = torch.stack([pyro.poutine.trace(guide).get_trace()
                             .nodes["weights.fc1.weight"]["value"] for _ in range(400)])
    assert not torch.equal(draws[0], draws[1])
    assert torch.allclose(draws.mean(0), q.loc, atol=0.05)
    assert torch.allclose(draws.std(0).mean(), torch.tensor(0.2), rtol=0.05)
    for method in ("sbp", "bb"):
        _, g = _build(method, data)
        site = g.site_names[0]
        a, b = (pyro.poutine.trace(g).get_trace().nodes[site]["value"] for _ in range(2))
        assert not torch.equal(a, b)


def test_init_to_sample_and_prior_predictive_run_with_the_improper_prior(data):
    from pyro.infer.autoguide import AutoNormal, init_to_sample

    model, _ = _build("svd", data)
    prior = Predictive(model, num_samples=3)(data.x_test[:4])
    assert prior["obs"].shape == (3, 4)
    assert torch.equal(prior["weights.fc1.weight"], torch.zeros_like(prior["weights.fc1.weight"]))  # documented: zeros
    guide = AutoNormal(model, init_loc_fn=init_to_sample)
    loss = TraceMeanField_ELBO().loss(model, guide, data.x_train[:10], data.y_train[:10])
    assert math.isfinite(loss)


def test_stock_elbo_trains_bb_without_warnings(data):
    """Gates driven towards 0 at a large learning rate used to flood ``Encountered NaN/+inf: log_prob_sum``."""
    model, guide = _build("bb", data)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-1}), loss=TraceMeanField_ELBO())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in _batches(data, 400):
            svi.step(data.x_train[i], data.y_train[i])
    assert guide.posterior("units.fc1_units.pi").mean.min() < 1e-6  # the saturated regime was reached
    assert [str(w.message) for w in caught] == []
