"""The engine's GPU-ready switches (issue 16, item 3), checked on the CPU: on-device augmentation, bf16 autocast of
the network's forward, ``torch.compile`` of the network, and the guide's skipped global draws inside steps."""

import json

import pyro
import pytest
import torch
from hostreads import count_host_reads
from pyro.nn import PyroModule
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.cli import main
from pyro_sparse.data import Dataset, augment, load_dataset, subset
from pyro_sparse.errors import InvalidInputError
from pyro_sparse.infer import SparseELBO, TrainConfig, fit


def _images(n=60, shape=(3, 8, 8)) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset("synthetic", torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g),
                   torch.rand(20, *shape, generator=g), torch.randint(0, 10, (20,), generator=g), 10)


def test_crop_flip_is_a_padded_window_per_image_possibly_mirrored():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = augment(x, "crop-flip")
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(64):
        windows = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8].flip(-1 if f else ()))]
        assert windows, f"image {i} is no window of its padded copy"
        flips += all(f for _, _, f in windows)
    assert 10 < flips < 54  # about half the images are mirrored
    assert not torch.equal(augment(x, "crop-flip"), augment(x, "crop-flip"))  # fresh draws each call
    assert sum(count_host_reads(lambda: augment(x, "crop-flip")).values()) == 0  # no device read


def test_augment_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="one of crop-flip"):
        augment(torch.rand(2, 3, 8, 8), "mixup")
    with pytest.raises(InvalidInputError, match=r"\[B, C, H, W\]"):
        augment(torch.rand(2, 64), "crop-flip")
    for bad in ({"augment": "mixup"}, {"bf16": 1}, {"compile": "yes"}):
        with pytest.raises(InvalidInputError):
            TrainConfig(**bad).validate()
    data = subset(load_dataset("digits"), 100, 50)
    model = build_model("logreg", "sbp", data.input_shape, 10)
    with pytest.raises(InvalidInputError, match="needs image data"):
        fit(model, MeanFieldGuide(model), data, TrainConfig(epochs=1, augment="crop-flip"), progress=False)
    for switch in ("bf16", "compile"):  # a model without a network in .net
        with pytest.raises(InvalidInputError, match="need a pyro_sparse model"):
            fit(PyroModule(), MeanFieldGuide(model), data, TrainConfig(epochs=1, **{switch: True}), progress=False)


def test_training_with_augmentation_differs_and_stays_finite():
    data = _images()
    runs = []
    for aug in (None, "crop-flip"):
        pyro.set_rng_seed(0)
        model = build_model("logreg", "bb", (3, 8, 8), 10)
        guide = MeanFieldGuide(model)
        runs.append(fit(model, guide, data, TrainConfig(epochs=2, batch_size=20, augment=aug, measure_latency=False),
                        progress=False))
    assert runs[0]["nll"] != runs[1]["nll"]
    assert all(torch.isfinite(torch.tensor(r["nll"])) for r in runs)


def test_bf16_autocast_covers_the_network_only():
    pyro.set_rng_seed(0)
    model = build_model("lenet5", "sbp", (1, 28, 28), 10, num_data=100)
    guide = MeanFieldGuide(model)
    seen = {}  # the output layer's output (no unit latent acts on it)
    out_layer = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    out_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.dtype))
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    model.autocast_dtype = torch.bfloat16
    elbo = SparseELBO()
    loss = elbo.differentiable_loss(model, guide, x, y)
    assert seen["out"] == torch.bfloat16  # the network ran in bf16
    assert elbo.last_return.dtype == torch.float32 and loss.dtype == torch.float32  # logits, likelihood, KL: fp32
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in [*model.parameters(), *guide.parameters()])
    model.autocast_dtype = None
    data = _images(40, (1, 28, 28))
    dtypes = []
    out_layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    during = []  # the attribute as the user's model holds it while the engine trains
    metrics = fit(model, guide, data, TrainConfig(epochs=1, batch_size=20, bf16=True, measure_latency=False),
                  progress=False, callback=lambda record: during.append(model.autocast_dtype))
    assert torch.bfloat16 in dtypes  # the engine's steps ran the network in bf16 (its evaluation in float32) ...
    assert during == [None] and model.autocast_dtype is None  # ... through a switch, not by setting the attribute
    assert torch.isfinite(torch.tensor(metrics["nll"]))


@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
def test_every_method_trains_under_bf16_autocast(method):
    """On the GPU (H200, 2026-12-04) DBB crashed in its first bf16 step: its gate statistics (float32 buffers) were
    moved towards the bfloat16 unit summaries (``lerp_``: "expected dtype float ... got BFloat16"). The same autocast
    runs on the CPU."""
    pyro.set_rng_seed(0)
    model = build_model("lenet5", method, (1, 28, 28), 10, num_data=40)
    guide = MeanFieldGuide(model)
    metrics = fit(model, guide, _images(40, (1, 28, 28)),
                  TrainConfig(epochs=1, batch_size=20, bf16=True, measure_latency=False), progress=False)
    assert torch.isfinite(torch.tensor(metrics["nll"]))
    buffers = [b for m in model.net.modules() for b in m.buffers(recurse=False) if b.is_floating_point()]
    assert all(b.dtype == torch.float32 and torch.isfinite(b).all() for b in buffers)


def test_compile_switch_trains_through_the_compiled_network(monkeypatch):
    """``TrainConfig(compile=True)`` runs the training steps through ``torch.compile`` of the network (here a
    recording stand-in: inductor takes a minute on a CPU) and leaves the network eager afterwards."""
    compiled = []

    def fake_compile(fn, *args, **kwargs):
        def run(*a, **k):
            compiled.append(1)
            return fn(*a, **k)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    data = subset(load_dataset("digits"), 100, 50)
    results = []
    for flag in (False, True):
        pyro.set_rng_seed(0)
        model = build_model("lenet300", "bb", data.input_shape, 10)
        results.append(fit(model, MeanFieldGuide(model), data, TrainConfig(epochs=1, batch_size=50, compile=flag,
                                                                         measure_latency=False), progress=False))
        assert model.net._compiled_call_impl is None
    assert len(compiled) >= 2  # both training steps went through the compiled callable
    assert results[0]["nll"] == pytest.approx(results[1]["nll"], rel=1e-6)  # same computation


@pytest.mark.parametrize("method", ["sbp", "dbb"])
def test_compiled_network_with_unit_latents_is_not_recompiled_step_after_step(method, monkeypatch):
    """Real dynamo (its ``eager`` backend: no code generation, seconds): the unit hooks draw through Pyro, which
    dynamo cannot trace; before the hooks were kept out of dynamo it compiled every hook closure as frames of its
    own and gave up on some (33 graphs for one LeNet-300-100 step; its recompile limit hit on the first VGG-like
    epoch of a GPU run). Now the graph breaks at each hook, which runs eagerly, and the segments between hooks are
    compiled once, in the first step."""
    from torch._dynamo.utils import counters

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    data = subset(load_dataset("digits"), 200, 50)

    def train(compile, batch_size, epochs):
        torch._dynamo.reset()
        counters.clear()
        pyro.set_rng_seed(0)
        model = build_model("lenet300", method, data.input_shape, 10)
        result = fit(model, MeanFieldGuide(model), data, TrainConfig(
            epochs=epochs, batch_size=batch_size, compile=compile, measure_latency=False), progress=False)
        # no frame dynamo gave up on (before: Pyro's generators and handlers inside the hooks, 4 of 83 frames)
        assert not counters["unimplemented"] and counters["frames"]["ok"] == counters["frames"]["total"]
        return result, counters["stats"]["unique_graphs"]

    _, one_step = train(True, 200, 1)
    compiled, eight_steps = train(True, 50, 2)
    assert 0 < one_step == eight_steps  # every graph is made in the first step (before: 33 in one step)
    eager, none = train(False, 50, 2)
    assert none == 0 and compiled["nll"] == pytest.approx(eager["nll"], rel=1e-6)  # the same computation
    torch._dynamo.reset()


def test_channels_last_hands_the_network_channels_last_batches():
    data = _images(40, (3, 32, 32))
    results, formats = [], []
    for flag in (False, True):
        pyro.set_rng_seed(0)
        model = build_model("vgg_like", "sbp", (3, 32, 32), 10, arch_options={"k": 0.125})
        first_conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
        hook = first_conv.register_forward_hook(
            lambda m, i, o, flag=flag: formats.append((flag, i[0].is_contiguous(memory_format=torch.channels_last)
                                                       and not i[0].is_contiguous())) if m.training else None)
        results.append(fit(model, MeanFieldGuide(model), data, TrainConfig(
            epochs=1, batch_size=40, channels_last=flag, augment="crop-flip", measure_latency=False), progress=False))
        hook.remove()
    assert {f for _, f in formats if _ is False} == {False} and {f for _, f in formats if _ is True} == {True}
    assert results[0]["nll"] == pytest.approx(results[1]["nll"], rel=1e-5)  # one step: the same computation
    with pytest.raises(InvalidInputError, match="channels-last must be True or False"):
        TrainConfig(channels_last="yes").validate()


def test_engine_steps_skip_the_global_draws_the_model_throws_away():
    pyro.set_rng_seed(0)
    model = build_model("lenet300", "sbp", (64,), 10, num_data=100)
    guide = MeanFieldGuide(model)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    guide.global_draws = False
    trace = pyro.poutine.trace(guide).get_trace(x, y)
    values = [s["value"] for s in trace.nodes.values() if s["type"] == "sample"]
    assert values and all(torch.isnan(v).all() for v in values)  # placeholders, not draws
    loss = SparseELBO().differentiable_loss(model, guide, x, y)
    assert torch.isfinite(loss)  # the model drew every latent per example from the tagged distributions
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in guide.parameters() if p.grad is not None)
    guide.global_draws = True
    trace = pyro.poutine.trace(guide).get_trace(x, y)
    assert all(torch.isfinite(s["value"]).all() for s in trace.nodes.values() if s["type"] == "sample")
    during = []
    fit(model, guide, Dataset("d", torch.rand(40, 64), torch.randint(0, 10, (40,)), x, y, 10),
        TrainConfig(epochs=1, batch_size=20, measure_latency=False), progress=False,
        callback=lambda record: during.append(guide.global_draws))
    assert during == [True] and guide.global_draws  # switched off inside the steps, never set on the guide


def test_cli_switches_are_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "bb", "--arch", "logreg", "--dataset", "digits", "--epochs", "1", "--bf16",
                 "--out", str(out), "--no-latency", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["bf16"] is True and cfg["augment"] is None and cfg["compile"] is False
    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "bb", "--arch", "logreg", "--dataset", "digits", "--epochs", "1", "--augment",
              "crop-flip", "--out", str(tmp_path / "aug"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs image data" in err[0]
    assert not (tmp_path / "aug").exists()  # refused before anything was written
    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "bb", "--arch", "logreg", "--dataset", "digits", "--devices", "0", "--out",
              str(tmp_path / "dev"), "--quiet"])
    assert e.value.code == 2 and "--devices must be a positive" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
def test_engine_steps_read_parameters_without_placeholder_param_statements(method):
    """Inside the engine's step (``Objective``, module-local parameters) the guide's families and the model's network
    read their parameters without Pyro's placeholder param statements; the loss and every gradient are those of the
    same step with the statements. Outside it (``SVI``-style traces, the global param store) every read is a
    statement, and the switch leaves nothing set behind."""
    from pyro_sparse.infer.train import Objective
    from pyro_sparse.settings import direct_param_reads, direct_reads, module_local_params

    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))

    def param_sites(fn):
        trace = pyro.poutine.trace(fn).get_trace(x, y)
        return [name for name, site in trace.nodes.items() if site["type"] == "param"]

    with module_local_params():
        pyro.set_rng_seed(0)
        model = build_model("lenet300", method, (64,), 10, num_data=100)
        guide = MeanFieldGuide(model)
        params = [*model.parameters(), *guide.parameters()]
        assert param_sites(guide) and param_sites(model)  # plain reads: statements
        with direct_param_reads():
            assert direct_reads()
            assert param_sites(guide) == [] and param_sites(model) == []
        assert not direct_reads()
        results = []
        buffers = {k: v.clone() for k, v in model.state_dict().items()}  # DBB's running statistics move per call
        for direct in (False, True):
            model.load_state_dict(buffers)
            pyro.set_rng_seed(1)
            if direct:
                loss = Objective(model, guide, SparseELBO())(x, y)
            else:
                loss = SparseELBO().differentiable_loss(model, guide, x, y)
            results.append((loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)))
        assert torch.equal(results[0][0], results[1][0])
        for a, b in zip(results[0][1], results[1][1], strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
    with direct_param_reads():  # the global param store: the statements carry the values, so they stay
        assert not direct_reads()
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = build_model("lenet300", method, (64,), 10, num_data=100)
        assert param_sites(MeanFieldGuide(model)) and param_sites(model)
    pyro.clear_param_store()


def test_dense_model_reads_its_network_without_module_statements_in_engine_steps():
    from pyro_sparse.settings import direct_param_reads, module_local_params

    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    with module_local_params():
        model = build_model("lenet300", "dense", (64,), 10, num_data=100)

        def param_sites():
            trace = pyro.poutine.trace(model).get_trace(x, y)
            return [name for name, site in trace.nodes.items() if site["type"] == "param"]

        assert len(param_sites()) == len(list(model.parameters()))  # Pyro's module statement, one per parameter
        with direct_param_reads():
            assert param_sites() == []
