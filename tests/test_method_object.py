"""A method is one object: what ``register_method`` adds reaches build_model, the training defaults, the CLI's
``--method`` and the stage rules, without editing the package."""

import json

import pytest
from pyro_sparse.models import build_model, method_names

from pyro_sparse import Method, register_method
from pyro_sparse.cli import main
from pyro_sparse.errors import InvalidInputError
from pyro_sparse.infer import TrainConfig
from pyro_sparse.nn import BBGate
from pyro_sparse.sparsify import METHODS, training_defaults


@pytest.fixture
def gate_method():
    """A fifth method: the BB gate with its own training defaults (gate lr 3e-2, linear decay), continuing BB runs."""
    spec = Method("bb_fast", "units", unit=BBGate, training={"lr_schedule": "linear", "lr_latent": 3e-2},
                  starts_from=("bb",))
    register_method(spec)
    try:
        yield spec
    finally:
        METHODS.pop("bb_fast", None)


def test_the_built_in_methods_carry_the_cli_training_defaults():
    assert training_defaults("bb") == {"lr_schedule": "step", "lr_latent": 1e-2, "weight_decay": 1e-4}
    cfg = TrainConfig.for_method("svd", epochs=200)
    assert (cfg.lr_schedule, cfg.warmup_start, cfg.warmup_end, cfg.lr_latent) == ("linear", 5, 20, None)
    cfg = TrainConfig.for_method("dbb", epochs=30, lr=3e-4)
    assert (cfg.lr_schedule, cfg.lr_latent, cfg.weight_decay, cfg.lr, cfg.epochs) == ("step", 1e-2, 1e-4, 3e-4, 30)
    assert TrainConfig.for_method("dense").lr_schedule == "linear"
    with pytest.raises(InvalidInputError, match="unknown method 'nope'"):
        TrainConfig.for_method("nope")
    with pytest.raises(InvalidInputError, match="unknown field"):
        TrainConfig.for_method("bb", gate_lr=1.0)


def test_register_method_checks_its_fields():
    with pytest.raises(ValueError, match="unknown training default"):
        register_method(Method("x", "units", unit=BBGate, training={"lr_gate": 1.0}))
    with pytest.raises(ValueError, match="other than 'dense'"):
        register_method(Method("dense", "units", unit=BBGate))
    assert "x" not in METHODS


def test_a_registered_method_reaches_every_entry_point(gate_method, tmp_path, capsys):
    assert method_names()[-1] == "bb_fast"
    model = build_model("logreg", "bb_fast", (64,), 10, 100)
    assert model.spec is gate_method
    cfg = TrainConfig.for_method("bb_fast", epochs=2)
    assert (cfg.lr_schedule, cfg.lr_latent) == ("linear", 3e-2)
    common = ["--arch", "logreg", "--dataset", "digits", "--epochs", "1", "--quiet", "--no-latency"]
    assert main(["train", "--method", "bb", *common, "--out", str(tmp_path / "bb")]) == 0
    assert main(["train", "--method", "bb_fast", *common, "--init-from", str(tmp_path / "bb"),
                 "--out", str(tmp_path / "fast")]) == 0
    saved = json.loads((tmp_path / "fast" / "config.json").read_text())["config"]
    assert (saved["lr_schedule"], saved["lr_latent"]) == ("linear", 3e-2)
    assert "bb_fast logreg on digits" in capsys.readouterr().out
    # the stage rule comes from the object: bb_fast continues BB runs, not SBP ones
    assert main(["train", "--method", "sbp", *common, "--out", str(tmp_path / "sbp")]) == 0
    with pytest.raises(SystemExit):
        main(["train", "--method", "bb_fast", *common, "--init-from", str(tmp_path / "sbp"),
              "--out", str(tmp_path / "fast2")])
    assert "starts from bb or bb_fast or dense runs" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
def test_summary_says_what_the_keep_rule_decides(method):
    """``model.summary(guide)``: the statistic per site, the threshold in effect and the keep mask; moving the
    threshold with ``set_thresholds`` moves the mask, and ``compact`` removes exactly what the summary says."""
    import torch
    from pyro_sparse.guides import MeanFieldGuide
    from torch import nn

    from pyro_sparse import compact, sparsify

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model = sparsify(net, method, torch.randn(4, 64), num_data=100)
    guide = MeanFieldGuide(model)
    with torch.no_grad():  # spread the posterior so that a threshold splits the units / weights
        for name, p in guide.named_parameters():
            p.add_(torch.randn_like(p) * (2.0 if method != "svd" or "log" in name else 0.0))
    rows = model.summary(guide)
    assert rows and all(r["keep"].shape == r["values"].shape for r in rows)
    stat = {"svd": "log_alpha", "sbp": "SNR", "bb": "E[π]", "dbb": "E[π]"}[method]
    assert {r["statistic"] for r in rows} == {stat}
    first = rows[0]
    assert first["threshold"] == {"svd": 3.0, "sbp": 1.0}.get(method, 1e-3)
    middle = float(first["values"].flatten().median())
    model.set_thresholds(**{"weight" if method == "svd" else "unit": middle})
    rows = model.summary(guide)
    first = rows[0]
    assert first["threshold"] == middle and 0 < first["kept"] < first["total"]
    assert torch.equal(first["keep"], first["values"] < middle if method == "svd" else first["values"] >= middle)
    small = compact(model, guide)
    if method == "svd":  # the pruned weights are zero in the compact network (dead units removed besides)
        kept = sum(r["kept"] for r in rows)
        assert sum(int(m.weight.ne(0).sum()) for m in small.modules() if isinstance(m, nn.Linear)) == kept
    else:  # units on the inputs of the two Linear layers: their in_features are what the summary keeps
        linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
        assert [r["layers"] for r in rows] == [["0"], ["2"]]
        assert [m.in_features for m in linears] == [r["kept"] for r in rows]


GAUSS_GATE = '''
"""A fifth method, defined outside pyro-sparse: a Gaussian multiplicative gate per unit, prior Normal(1, 1), the
Normal guide family and torch's Normal-Normal KL; prune units whose posterior |mean| / std is below the threshold."""
import pyro.distributions as dist
import torch
from pyro.nn import PyroSample

from pyro_sparse import Method
from pyro_sparse.nn import UnitModule


class GaussGate(UnitModule):
    latent_site = "z"
    default_threshold = 1.0
    statistic_name = "|mean|/std"

    def __init__(self, num_units, noise="per-example"):
        super().__init__(num_units, noise)
        self.register_buffer("one", torch.ones(num_units))
        self.z = PyroSample(lambda self: self.cached_prior("z", lambda: dist.Normal(self.one, 1.0).to_event(1),
                                                           self.one))

    def multiplier(self, x):
        return self.draw(self.z, x.shape[0])

    def statistic(self, q):
        return (q.mean.abs() / q.stddev).detach()

    def keep(self, q, threshold=None):
        threshold = self.default_threshold if threshold is None else threshold
        return self.statistic(q) >= threshold, q.mean.detach()


GAUSS = Method("gauss", "units", unit=GaussGate, training={"lr_schedule": "linear", "lr_latent": 1e-2})
'''


@pytest.fixture
def user_method(tmp_path, monkeypatch):
    (tmp_path / "my_gate.py").write_text(GAUSS_GATE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_gate:GAUSS"
    METHODS.pop("gauss", None)
    import sys

    sys.modules.pop("my_gate", None)


def test_a_method_defined_outside_the_package_works_everywhere(user_method, tmp_path, capsys):
    import pyro
    import torch
    from pyro.infer import SVI, Predictive, Trace_ELBO
    from pyro_sparse.guides import MeanFieldGuide
    from torch import nn

    from pyro_sparse import compact, load_compact, save_compact, sparsify
    from pyro_sparse.diagnostics import to_inference_data
    from pyro_sparse.errors import UntrustedCodeError
    from pyro_sparse.runs import load_run
    from pyro_sparse.trust import import_method

    gauss = import_method(user_method)  # as the CLI does for --method my_gate:GAUSS
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    model = sparsify(net, "gauss", x, num_data=16)
    guide = MeanFieldGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    logits = Predictive(model, guide=guide, num_samples=4, return_sites=("_RETURN",))(x)["_RETURN"]
    assert logits.shape == (4, 16, 10)
    model.set_thresholds(unit=float(model.summary(guide)[0]["values"].median()))
    first = model.summary(guide)[0]
    assert 0 < first["kept"] < first["total"]  # the gate really prunes: compact has units to remove
    small = compact(model, guide)
    assert small[0][-1].in_features == first["kept"]  # Select + Linear: the kept inputs of the first layer
    save_compact(small, tmp_path / "small")
    assert torch.allclose(load_compact(tmp_path / "small", factory=lambda: net)(x), small(x), atol=1e-5)
    idata = to_inference_data(model, guide, x, y, num_samples=5)
    assert any(k.endswith(".z") for k in idata.posterior.data_vars)
    # the engine and the command line: --method package.module:Name, recorded as the method's source
    common = ["--arch", "logreg", "--dataset", "digits", "--epochs", "1", "--quiet", "--no-latency"]
    run = tmp_path / "run"
    assert main(["train", "--method", user_method, *common, "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["method"], cfg["method_source"], cfg["args"]["method"]) == ("gauss", user_method, user_method)
    assert (cfg["config"]["lr_schedule"], cfg["config"]["lr_latent"]) == ("linear", 1e-2)
    assert "--method my_gate:GAUSS" in cfg["command"]
    assert main(["evaluate", str(run)]) == 0  # the compact network is plain modules: no method needed
    # reading the run back: the same trust rule as a user's --arch
    METHODS.pop("gauss")
    with pytest.raises(UntrustedCodeError, match="names the method 'my_gate:GAUSS'"):
        load_run(run)
    model, guide, _ = load_run(run, method=gauss)
    assert model.spec is gauss
    METHODS.pop("gauss")
    assert load_run(run, trust_code=True)[0].method == "gauss"
    METHODS.pop("gauss")
    with pytest.raises(SystemExit):
        main(["report", str(run), "--method", "my_gate:OTHER"])
    assert "differs from the method source 'my_gate:GAUSS'" in capsys.readouterr().err
    assert main(["report", str(run), "--method", user_method]) == 0
    capsys.readouterr()
