"""The engine split (issue 27, item 4): the research step (``SVIStep`` → ``StepResult``) apart from the loop, the
loop's per-epoch work as callbacks, and ``TrainConfig`` as the method's ``Hyperparameters`` plus the engine's
``EngineSettings``."""

import json
from dataclasses import fields

import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.data import load_dataset, subset
from pyro_sparse.errors import InvalidInputError
from pyro_sparse.infer import (
    Callback,
    EngineSettings,
    Hyperparameters,
    Objective,
    SparseELBO,
    StepResult,
    SVIStep,
    TrainConfig,
    fit,
    make_optimizer,
)
from pyro_sparse.settings import module_local_params, prepare_module_local, training_switches


def _digits():
    return subset(load_dataset("digits"), 300, 100)


def _model(data, method="bb"):
    torch.manual_seed(0)
    model = build_model("lenet300", method, data.input_shape, 10)
    return model, MeanFieldGuide(model)


def test_train_config_is_the_two_parts_together():
    h, e = {f.name for f in fields(Hyperparameters)}, {f.name for f in fields(EngineSettings)}
    assert not h & e and {f.name for f in fields(TrainConfig)} == h | e
    assert "lr_latent" in h and "seed" in h and "device" in e and "bf16" in e
    cfg = TrainConfig.for_method("bb", epochs=30, device="cuda", bf16=True)
    assert cfg.hyperparameters == Hyperparameters(epochs=30, lr_schedule="step", lr_latent=1e-2, weight_decay=1e-4)
    assert cfg.engine == EngineSettings(device="cuda", bf16=True)
    assert TrainConfig.combine(cfg.hyperparameters, cfg.engine) == cfg
    assert TrainConfig.combine(cfg.hyperparameters).engine == EngineSettings()
    with pytest.raises(InvalidInputError, match="unknown option.*'gate_lr'.*valid:"):
        Hyperparameters(gate_lr=1.0)
    with pytest.raises(InvalidInputError, match="unknown option.*'lr'"):
        EngineSettings(lr=1.0)
    with pytest.raises(InvalidInputError, match="--progress-every must be a positive integer"):
        EngineSettings(progress_every=0).validate("--")
    with pytest.raises(InvalidInputError, match="expects Hyperparameters and EngineSettings"):
        TrainConfig.combine(cfg.hyperparameters, {"device": "cpu"})


def test_fit_takes_hyperparameters_and_engine_apart_with_the_same_result(tmp_path):
    data = _digits()
    records = []
    for name, args, kwargs in (
            ("flat", (TrainConfig(epochs=2, lr_latent=0.05, seed=3, measure_latency=False),), {}),
            ("parts", (Hyperparameters(epochs=2, lr_latent=0.05, seed=3),),
             {"engine": EngineSettings(measure_latency=False)})):
        model, guide = _model(data)
        metrics = fit(model, guide, data, *args, run_dir=tmp_path / name, progress=False, **kwargs)
        log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        records.append(([{k: v for k, v in r.items() if "seconds" not in k} for r in log], metrics["test_error"]))
    assert records[0] == records[1]
    model, guide = _model(data)
    with pytest.raises(InvalidInputError, match="engine settings twice"):
        fit(model, guide, data, TrainConfig(epochs=1), engine=EngineSettings(), progress=False)
    with pytest.raises(InvalidInputError, match="TrainConfig.*or Hyperparameters"):
        fit(model, guide, data, {"epochs": 1}, progress=False)
    with pytest.raises(InvalidInputError, match="engine=EngineSettings"):
        fit(model, guide, data, Hyperparameters(epochs=1), engine="cuda", progress=False)


class _Recorder(Callback):
    def __init__(self, stop_after=None):
        self.seen, self.stop_after = [], stop_after

    def on_epoch_end(self, state):
        # the built-in callbacks ran first: the compact network's metrics are in the record, the checkpoint written
        assert {"test_error", "units", "nonzero_weights", "epoch_seconds"} <= set(state.record)
        self.seen.append((state.epoch, state.record["epoch"], state.optimizer.param_groups[1]["lr"],
                          state.model.training))
        if self.stop_after is not None and state.epoch + 1 >= self.stop_after:
            raise StopIteration("early stop")


def test_callbacks_see_each_epoch_after_the_built_in_ones_and_can_stop_training(tmp_path):
    data = _digits()
    model, guide = _model(data)
    recorder, plain = _Recorder(), []
    fit(model, guide, data, TrainConfig(epochs=3, lr_latent=0.05, lr_schedule="step", measure_latency=False),
        progress=False, callbacks=[recorder], callback=lambda r: plain.append(r["epoch"]))
    assert [s[:2] for s in recorder.seen] == [(0, 1), (1, 2), (2, 3)] and plain == [1, 2, 3]
    # the scheduler has stepped: the optimizer holds the next epoch's learning rates (step schedule: x0.1 at 50%, 80%)
    assert [s[2] for s in recorder.seen] == pytest.approx([0.05, 0.005, 0.0005])
    model, guide = _model(data)
    stopper = _Recorder(stop_after=2)
    with pytest.raises(StopIteration, match="early stop"):
        fit(model, guide, data, TrainConfig(epochs=5, measure_latency=False), run_dir=tmp_path / "run",
            progress=False, callbacks=[stopper])
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(InvalidInputError, match="callbacks must be a list of objects with on_epoch_end"):
        fit(model, guide, data, TrainConfig(epochs=1), progress=False, callbacks=[print])


@module_local_params()
def test_the_research_step_runs_in_a_users_own_loop():
    """``SVIStep`` is the step ``fit`` runs: a user's own loop with it reaches the same parameters as ``fit``."""
    data = _digits()
    cfg = TrainConfig(epochs=1, batch_size=100, lr_latent=0.05, lr_schedule="constant", measure_latency=False)
    model, guide = _model(data)
    fit(model, guide, data, cfg, progress=False)
    trained = {k: v.clone() for k, v in guide.state_dict().items()}

    model, guide = _model(data)
    prepare_module_local(model, guide)
    model.num_data = data.x_train.shape[0]
    step = SVIStep(Objective(model, guide, SparseELBO()), make_optimizer(model, guide, cfg))
    torch.manual_seed(cfg.seed * 100003)  # what fit seeds epoch 0 with
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(cfg.seed * 100003))
    model.train()
    guide.train()
    with training_switches(global_draws=False):  # as fit runs a SparseModel: no global draws it would throw away
        results = [step(data.x_train[perm[i:i + 100]], data.y_train[perm[i:i + 100]]) for i in range(0, 300, 100)]
    assert all(isinstance(r, StepResult) and r.loss.dim() == 0 and r.logits.shape == (100, 10) for r in results)
    assert all(not r.loss.requires_grad for r in results)
    for k, v in guide.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_training_flushes_subnormal_floats_and_restores_the_callers_mode():
    """``EngineSettings.flush_denormal`` (default on): the loop runs with subnormal floats flushed to zero (BB's
    pruned units made CPU steps 10-100x slower), and the caller's mode is back afterwards, whichever it was."""
    from pyro_sparse.settings import flushing_denormals

    data = _digits()
    seen = []

    class Probe(Callback):
        def on_epoch_end(self, state):
            seen.append(flushing_denormals())

    for flush, before in ((True, False), (False, False), (True, True)):
        torch.set_flush_denormal(before)
        try:
            model, guide = _model(data)
            fit(model, guide, data, TrainConfig(epochs=1, measure_latency=False, flush_denormal=flush),
                progress=False, callbacks=[Probe()])
            assert seen[-1] is (flush or before) and flushing_denormals() is before
        finally:
            torch.set_flush_denormal(False)
    with pytest.raises(InvalidInputError, match="flush-denormal must be True or False"):
        EngineSettings(flush_denormal="yes").validate()
