"""The training loop (resume, checkpoints) and the CLI, including every bad-input path."""

import json
import subprocess
import sys

import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

import pyro_sparse
from pyro_sparse.cli import main
from pyro_sparse.data import load_dataset, split_validation, subset
from pyro_sparse.infer import TrainConfig, fit
from pyro_sparse.metrics import classification_error


def _digits_run(tmp, epochs=2, callback=None, resume=False, **cfg_kwargs):
    data = subset(load_dataset("digits"), 400, 200)
    torch.manual_seed(0)
    model = build_model("logreg", "svd", data.input_shape, 10, mean=data.mean, std=data.std)
    guide = MeanFieldGuide(model)
    cfg = TrainConfig(epochs=epochs, batch_size=50, lr=1e-2, lr_schedule="linear", warmup_start=0, warmup_end=1,
                      measure_latency=False, **cfg_kwargs)
    tmp.mkdir(exist_ok=True)
    metrics = fit(model, guide, data, cfg, tmp, resume=resume, progress=False, callback=callback)
    return model, guide, metrics


def test_resume_equals_uninterrupted(tmp_path):
    m_full, g_full, met_full = _digits_run(tmp_path / "full", epochs=3)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _digits_run(tmp_path / "cut", epochs=3, callback=stop_after_first)
    assert len((tmp_path / "cut" / "log.jsonl").read_text().splitlines()) == 1  # the finished epoch is kept
    m_res, g_res, met_res = _digits_run(tmp_path / "cut", epochs=3, resume=True)
    for a, b in zip(list(m_full.state_dict().values()) + list(g_full.state_dict().values()),
                    list(m_res.state_dict().values()) + list(g_res.state_dict().values()), strict=True):
        assert torch.equal(a, b)
    assert met_full["test_error"] == met_res["test_error"]
    assert len((tmp_path / "cut" / "log.jsonl").read_text().splitlines()) == 3


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_cli_train_evaluate_digits(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--epochs", "2",
                 "--out", str(out), "--no-latency", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("method", "arch", "dataset", "epochs", "seed", "test_error", "layer_sparsity", "compression",
                "n_weights", "n_nonzero", "train_seconds", "units", "flops_speedup", "memory_fraction"):
        assert key in metrics
    assert metrics["n_weights"] == 640 and metrics["compression"] == pytest.approx(640 / metrics["n_nonzero"])
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_error"] == pytest.approx(metrics["test_error"])
    data = load_dataset("digits")
    assert classification_error(pyro_sparse.load_compact(out), data.x_test, data.y_test) == pytest.approx(
        metrics["test_error"])


def test_train_clip_from_switches_clipping_on_at_that_epoch():
    """``train_clip_from=2``: epochs 0 and 1 train without clipping, epochs 2 and 3 with it (at the weight
    threshold)."""
    data = subset(load_dataset("digits"), 400, 200)
    torch.manual_seed(0)
    model = build_model("logreg", "svd", data.input_shape, 10, mean=data.mean, std=data.std)
    seen = []

    def record_clip(record):
        seen.append({m.train_clip for m in model.modules() if hasattr(m, "train_clip")})

    cfg = TrainConfig(epochs=4, batch_size=50, lr=1e-2, measure_latency=False, train_clip_from=2, weight_threshold=2.5)
    fit(model, MeanFieldGuide(model), data, cfg, None, progress=False, callback=record_clip)
    assert seen == [{None}, {None}, {2.5}, {2.5}]


def test_cli_train_clip_is_train_clip_from_zero(tmp_path):
    out = tmp_path / "clip"
    assert main(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--epochs", "1",
                 "--train-clip", "--no-latency", "--quiet", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["train_clip_from"] == 0 and cfg["train_clip_from"] == 0


def test_cli_kl_scale_is_recorded_and_its_command_reparses(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--method", "sbp", "--arch", "logreg", "--dataset", "digits", "--epochs", "1",
            "--kl-scale", "fc1=4", "--quiet", "--no-latency", "--out", str(out)]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kl_scale"] == {"fc1": 4.0} and cfg["config"]["kl_scale"] == {"fc1": 4.0}
    reparsed = pyro_sparse.cli.build_parser().parse_args(cfg["command"].split()[1:])
    assert reparsed.kl_scale == ["fc1=4"]
    # the scale is part of the run's identity: --resume with another scale is refused, naming it
    code, err = _cli([*args[:-6], "--kl-scale", "fc1=8", "--resume", "--out", str(out)], capsys)
    assert code == 2 and "--kl-scale {'fc1': 8.0} contradicts the recorded {'fc1': 4.0}" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope", "--arch", "logreg", "--dataset", "digits"], "invalid choice: 'nope'"),
        (["--method", "svd", "--arch", "resnet", "--dataset", "digits"], "invalid choice: 'resnet'"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["--method", "svd", "--arch", "lenet5", "--dataset", "digits"], "lenet5 expects 28x28 images"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "digits", "--epochs", "0"], "--epochs must be"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "digits", "--lr", "-1"], "--lr must be > 0, got -1.0"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "digits", "--lr-latent", "0"], "--lr-latent must be"),
        (["--method", "sbp", "--arch", "logreg", "--dataset", "digits", "--train-clip"], "--train-clip applies to"),
        (["--method", "bb", "--arch", "logreg", "--dataset", "digits", "--train-clip-from", "3"],
         "--train-clip-from applies to"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "digits", "--train-clip", "--train-clip-from", "3"],
         "exclude each other"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "digits", "--train-clip-from", "-1"],
         "--train-clip-from must be an epoch in 0 … 99"),
        (["--method", "svd", "--arch", "lenet300", "--dataset", "mnist", "--data-root", "/nonexistent"],
         "train-images-idx3-ubyte"),
        (["--method", "sbp", "--arch", "logreg", "--dataset", "digits", "--kl-scale", "fc1=0"],
         "--kl-scale expects LAYER=S"),
        (["--method", "sbp", "--arch", "logreg", "--dataset", "digits", "--kl-scale", "fc1"],
         "--kl-scale expects LAYER=S"),
        (["--method", "sbp", "--arch", "logreg", "--dataset", "digits", "--kl-scale", "conv1=40"],
         "layer 'conv1' has no latent site; latent sites: units.fc1_units.theta"),
        (["--method", "dense", "--arch", "logreg", "--dataset", "digits", "--kl-scale", "fc1=2"],
         "latent sites: none"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "digits", "--val-size", "0"],
         "--val-size must be a positive number"),
        (["--method", "svd", "--arch", "logreg", "--dataset", "digits", "--val-size", "1347"],
         "--val-size: validation size must be between 1 and 1346"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    code, err = _cli(["train", *args, "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_cli_refuses_to_overwrite_and_resumes_nothing_corrupt(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = _cli(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--out", str(out)],
                     capsys)
    assert code == 2 and "already holds files" in err
    assert (out / "keep.txt").read_text() == "precious"
    # a corrupted checkpoint: resume and init-from fail cleanly
    run = tmp_path / "done"
    assert main(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--epochs", "1", "--out",
                 str(run), "--quiet", "--no-latency"]) == 0
    (run / "metrics.json").unlink()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, err = _cli(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--epochs", "1",
                      "--out", str(run), "--resume"], capsys)
    assert code == 2 and "corrupted" in err and len(err.splitlines()) == 1
    code, err = _cli(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--out",
                      str(tmp_path / "new"), "--init-from", str(run)], capsys)
    assert code == 2 and "corrupted" in err and not (tmp_path / "new").exists()
    code, err = _cli(["evaluate", str(tmp_path / "missing")], capsys)
    assert code == 2 and "config.json" in err
    assert (out / "keep.txt").read_text() == "precious"
    code, err = _cli(["train", "--method", "bb", "--arch", "logreg", "--dataset", "digits", "--epochs", "1",
                      "--out", str(run), "--resume"], capsys)
    assert code == 2 and "--method 'bb' contradicts the recorded 'svd'" in err


def test_console_script_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyro_sparse.cli", "train", "--method", "svd", "--arch", "logreg",
                        "--dataset", "digits", "--epochs", "-3", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--epochs" in r.stderr


def test_short_real_mnist_run(mnist_root):
    """LeNet-300-100 with SVD on a 3,000-example MNIST subset learns and prunes."""
    data = subset(load_dataset("mnist", mnist_root), 3000, 1000)
    model = build_model("lenet300", "svd", data.input_shape, 10, mean=data.mean, std=data.std)
    guide = MeanFieldGuide(model)
    # 3,000 examples make the KL of 266k weights dominate: keep β small (warm-up) for a 4-epoch run
    cfg = TrainConfig(epochs=4, lr=1e-3, warmup_start=0, warmup_end=100, measure_latency=False)
    metrics = fit(model, guide, data, cfg, progress=False)
    assert metrics["test_error"] < 15.0
    assert metrics["n_nonzero"] < metrics["n_weights"]
    assert metrics["units"][0] <= 784


def test_reproduce_smoke(mnist_root, tmp_path, capsys):
    """`pyro-sparse reproduce --budget smoke`: every method's stage, the peer, the table and the plots."""
    out = tmp_path / "repro"
    assert main(["reproduce", "--arch", "lenet300", "--budget", "smoke", "--data-root", str(mnist_root),
                 "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    methods = [r["method"] for r in table["rows"]]
    assert methods[:5] == ["dense", "svd", "sbp", "bb", "dbb"]
    assert all(r["epochs"] == 1 for r in table["rows"])
    for name in ("table.md", "error_vs_flops.png", "units.png", "svd_log_alpha.png", "input_masks.png"):
        assert (out / name).is_file()
    dbb_cfg = json.loads((out / "seed0" / "dbb" / "config.json").read_text())
    assert dbb_cfg["init_from"].endswith("bb")
    assert "| dense | 1 |" in capsys.readouterr().out


def test_reproduce_trains_stages_in_parallel_as_it_would_in_turn(mnist_root, tmp_path, capsys):
    """``--jobs 2``: stages in two processes (one thread each here), each after the stage it continues; every
    stage's log equals that of a sequential run at one thread."""
    import torch

    common = ["reproduce", "--arch", "lenet300", "--budget", "smoke", "--data-root", str(mnist_root), "--seeds", "2",
              "--rows", "dense", "bb", "dbb", "--no-peer"]
    assert main([*common, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert err.index("seed 0 bb done") < err.index("seed 0 dbb started")  # DBB waits for its BB stage
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*common, "--out", str(tmp_path / "seq")]) == 0
    finally:
        torch.set_num_threads(threads)
    for seed in (0, 1):
        for row in ("dense", "bb", "dbb"):
            logs = [[{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                     for line in (tmp_path / way / f"seed{seed}" / row / "log.jsonl").read_text().splitlines()]
                    for way in ("par", "seq")]
            assert logs[0] == logs[1], (seed, row)
    from conftest import cli_error

    capsys.readouterr()
    assert "--jobs must be >= 1" in cli_error([*common, "--out", str(tmp_path / "x"), "--jobs", "0"], capsys)


def test_reproduce_svd_from_scratch_clips_in_the_last_tenth(tmp_path):
    """LeNet-300-100's SVD stage (from scratch, 200 epochs) switches train-time clipping on at epoch 180; stages from
    a dense net, and short smoke stages, do not clip."""
    from pyro_sparse.reproduce import row_options

    opts = row_options("lenet300", "svd", 200, 0, "mnist", None, tmp_path, "cpu")
    assert opts["train_clip_from"] == 180 and "init_from" not in opts
    assert "train_clip_from" not in row_options("lenet500", "svd", 200, 0, "mnist", None, tmp_path, "paper")
    assert "train_clip_from" not in row_options("lenet300", "svd", 1, 0, "mnist", None, tmp_path, "smoke")


def test_reproduce_paper_budget_runs_the_chosen_recipes(tmp_path):
    """--budget paper: each row's recipe chosen on validation (PAPER_RECIPES), a 5,000-image validation split on
    MNIST, and the options are ones the stage accepts (issue 26, item 2)."""
    from pyro_sparse.reproduce import BUDGETS, row_options
    from pyro_sparse.stage import check_options, command_line, stage_options

    bb = row_options("lenet500", "bb", 200, 0, "mnist", None, tmp_path, "paper")
    assert (bb["noise"], bb["lr_latent"], bb["lr_schedule"]) == ("per-batch", 0.1, "linear")
    dbb = row_options("lenet500", "dbb", 200, 0, "mnist", None, tmp_path, "paper")
    assert (dbb["noise"], dbb["lr_latent"], dbb["init_from"]) == ("per-batch", 0.01, str(tmp_path / "bb"))
    sbp = row_options("lenet500", "sbp", 200, 0, "mnist", None, tmp_path, "paper")
    assert sbp["lr_latent"] == 0.03 and sbp["init_from"] == str(tmp_path / "dense")
    assert "noise" not in row_options("lenet500", "bb", 30, 0, "mnist", None, tmp_path, "cpu")
    assert BUDGETS["paper"]["lenet500"]["dense"] == 20 and BUDGETS["paper"]["lenet5"]["dense"] == 20
    for options in (bb, dbb, sbp):
        check_options(stage_options(options))
        assert "--lr-latent" in command_line(stage_options(options))


def test_reproduce_kl_scale_goes_to_sbp_and_bb_stages_only(tmp_path, capsys):
    from pyro_sparse.reproduce import row_options, run

    scale = {"conv1": 40.0, "conv2": 16.0}
    for method in ("sbp", "bb"):
        assert row_options("lenet5", method, 10, 0, "mnist", None, tmp_path, "cpu", scale)["kl_scale"] == [
            "conv1=40", "conv2=16"]
    for method in ("dense", "svd", "dbb"):
        assert "kl_scale" not in row_options("lenet5", method, 10, 0, "mnist", None, tmp_path, "cpu", scale)
    # a finished stage made with another scale is neither reused nor overwritten
    stage = tmp_path / "repro" / "seed0" / "sbp"
    stage.mkdir(parents=True)
    (stage / "config.json").write_text(json.dumps({"kl_scale": None}))
    (stage / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="trained with kl_scale None, this reproduction asks for"):
        run("lenet5", "smoke", tmp_path / "repro", methods=("sbp",), peer=False, kl_scale=scale)
    code, err = _cli(["reproduce", "--arch", "lenet5", "--budget", "smoke", "--out", str(tmp_path / "repro"),
                      "--kl-scale", "conv1=40"], capsys)
    assert code == 2 and "choose another --out" in err and (stage / "metrics.json").read_text() == "{}"


def test_validation_split_is_fixed_disjoint_and_complete():
    data = load_dataset("digits")
    a, b = split_validation(data, 300), split_validation(data, 300)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)  # the same for every run
    assert a.x_val.shape[0] == 300 and a.x_train.shape[0] == data.x_train.shape[0] - 300
    rows = lambda x: {tuple(r.tolist()) for r in x}  # noqa: E731
    assert rows(a.x_val).isdisjoint(rows(a.x_train))
    assert rows(a.x_val) | rows(a.x_train) == rows(data.x_train)
    assert torch.equal(a.x_test, data.x_test)
    for bad in (0, data.x_train.shape[0]):
        with pytest.raises(ValueError, match="validation size must be between 1 and"):
            split_validation(data, bad)
    with pytest.raises(ValueError, match="already has a validation split"):
        split_validation(a, 10)


def test_fit_reports_validation_error_and_trains_without_it(tmp_path):
    data = split_validation(subset(load_dataset("digits"), 400, 200), 100)
    torch.manual_seed(0)
    model = build_model("logreg", "svd", data.input_shape, 10, mean=data.mean, std=data.std)
    guide = MeanFieldGuide(model)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=1e-2, measure_latency=False)
    metrics = fit(model, guide, data, cfg, tmp_path, progress=False)
    assert model.num_data == 300  # the ELBO's N counts the examples trained on
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("val_error" in r for r in log)
    from pyro_sparse.compact import load_compact

    compact = load_compact(tmp_path)
    assert metrics["val_size"] == 100
    assert metrics["val_error"] == pytest.approx(classification_error(compact, data.x_val, data.y_val))
    assert log[-1]["val_error"] == pytest.approx(metrics["val_error"])


def test_cli_val_size_is_recorded_and_part_of_the_resume_identity(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--epochs", "1", "--no-latency",
            "--quiet", "--out", str(out)]
    assert main([*base, "--val-size", "200"]) == 0
    printed = capsys.readouterr().out
    assert "val error" in printed and "(200 held out)" in printed
    assert json.loads((out / "config.json").read_text())["val_size"] == 200
    assert json.loads((out / "metrics.json").read_text())["val_size"] == 200
    (out / "metrics.json").unlink()
    code, err = _cli([*base, "--resume", "--val-size", "100"], capsys)
    assert code == 2 and "--val-size 100 contradicts the recorded 200" in err


def test_cifar10_reports_both_test_sets(tmp_path, cifar_root, capsys):
    """CIFAR-10 offline: the test error on the 5,000 held-out training images and, beside it, on the copy's 1,000
    official test images (``test_error_official1k``), in the epoch log, metrics.json, the summary and ``evaluate``."""
    import json

    from pyro_sparse.cli import main

    run = tmp_path / "run"
    assert main(["train", "--method", "dense", "--arch", "logreg", "--dataset", "cifar10", "--data-root",
                 str(cifar_root), "--subset", "200", "--epochs", "1", "--quiet", "--no-latency", "--out",
                 str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_error_official1k"] <= 100 and "test_error_official1k" in (run / "log.jsonl").read_text()
    assert "(official1k " in capsys.readouterr().out
    assert main(["evaluate", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_error_official1k"] == metrics["test_error_official1k"]
    assert evaluated["test_error"] == metrics["test_error"]


def test_reproduce_cifar10_tables_smoke(cifar_root, tmp_path, capsys):
    """`pyro-sparse reproduce` on CIFAR-10 (smoke budget, one row each): the VGG-like table at k = 0.25 (both test
    sets, 15 filter counts, the paper's beside) and the sparse-VD Table 4 net's "binary dropout
    on convs + SVD on the FC layers" (the selector and the dropout reach the stage; FC compression reported). The
    stages run through the library (no CLI argv in between) and record the commit they ran on."""
    from pyro_sparse.reproduce import row_options

    out = tmp_path / "vgg"
    assert main(["reproduce", "--arch", "vgg_like", "--budget", "smoke", "--data-root", str(cifar_root),
                 "--rows", "dense", "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    assert table["dataset"] == "cifar10" and table["width"] == 0.25
    (dense,) = table["rows"]
    assert len(dense["units"]) == 15 and dense["units"][0] == 16  # 64 filters × 0.25
    assert dense["paper"][0] == 7.43 and dense["test_error_official1k"] is not None
    assert row_options("vgg_like", "bb", 15, 0, "cifar10", None, out, "cpu")["init_from"] == str(out / "dense")
    cfg = json.loads((out / "seed0" / "dense" / "config.json").read_text())
    assert cfg["arch_options"] == {"k": 0.25}
    assert cfg["args"]["augment"] == "crop-flip" and "--arch-option k=0.25" in cfg["command"]
    assert cfg["commit"] is None or len(cfg["commit"].removesuffix("+changes")) == 40
    assert "error % (1,000 official)" in capsys.readouterr().out
    assert (out / "units.png").is_file() and (out / "error_vs_flops.png").is_file()

    out = tmp_path / "t4"
    assert main(["reproduce", "--arch", "conv3fc3", "--budget", "smoke", "--data-root", str(cifar_root),
                 "--rows", "bd+svd-fc", "--out", str(out)]) == 0
    (row,) = json.loads((out / "table.json").read_text())["rows"]
    cfg = json.loads((out / "seed0" / "bd+svd-fc" / "config.json").read_text())
    assert cfg["net_kwargs"]["include"] == ["fc*"] and cfg["arch_options"] == {"dropout": "conv"}
    metrics = json.loads((out / "seed0" / "bd+svd-fc" / "metrics.json").read_text())
    assert metrics["layer_kinds"] == ["conv"] * 3 + ["linear"] * 3
    assert all(s == 0 for s in metrics["layer_sparsity"][:3])  # the convs are not sparsified
    assert row["fc_compression"]["median"] >= 1.0 and row["paper_fc_compression"] == 171.0
    from pyro_sparse.runs import load_run

    model, _, _ = load_run(out / "seed0" / "bd+svd-fc")  # the recorded selector and arch options rebuild the model
    assert sorted(model.weight_layers.values()) == ["fc1", "fc2", "fc3"]
    assert "fc compression" in (out / "table.md").read_text().lower()


def test_resume_needs_no_source_run_and_keeps_what_it_froze(tmp_path, monkeypatch):
    """A DBB run freezes its BB source's π posterior; interrupted, it resumes after the BB run was moved away (the
    checkpoint holds the state; config.json's ``frozen`` names what stays frozen), and the π it trains on is the
    BB run's."""
    import pyro_sparse.infer as infer

    bb, dbb = tmp_path / "bb", tmp_path / "dbb"
    base = ["train", "--arch", "lenet300", "--dataset", "digits", "--no-latency", "--quiet"]
    assert main([*base, "--method", "bb", "--epochs", "1", "--out", str(bb)]) == 0
    real_fit = infer.fit

    def stop_after_first_epoch(*args, **kwargs):
        def stop(record):
            if record["epoch"] == 1:
                raise KeyboardInterrupt
        return real_fit(*args, callback=stop, **kwargs)

    monkeypatch.setattr(infer, "fit", stop_after_first_epoch)
    dbb_args = [*base, "--method", "dbb", "--epochs", "3", "--init-from", str(bb), "--out", str(dbb)]
    assert main(dbb_args) == 130
    frozen = json.loads((dbb / "config.json").read_text())["frozen"]
    assert frozen and all(".pi" in name or "pi" in name for name in frozen)
    bb_pi = {k: v for k, v in torch.load(bb / "checkpoint.pt", weights_only=True)["guide"].items() if k in frozen}
    bb.rename(tmp_path / "elsewhere")
    seen = {}

    def spy(model, guide, *args, **kwargs):
        result = real_fit(model, guide, *args, **kwargs)
        seen.update(requires_grad={n: p.requires_grad for n, p in guide.named_parameters()},
                    pi={n: p.detach().clone() for n, p in guide.named_parameters() if n in frozen})
        return result

    monkeypatch.setattr(infer, "fit", spy)
    assert main([*dbb_args, "--resume"]) == 0
    assert {n for n, g in seen["requires_grad"].items() if not g} == set(frozen)
    assert set(seen["pi"]) == set(bb_pi) and all(torch.equal(seen["pi"][n], bb_pi[n]) for n in bb_pi)
    assert len((dbb / "log.jsonl").read_text().splitlines()) == 3


def test_a_failed_epoch_compaction_keeps_the_run_resumable(tmp_path, capsys, monkeypatch):
    """On an H200 a BB LeNet-5 run stopped at epoch 21 when the per-epoch compaction failed its self-check (cuDNN's
    TF32, fixed since): the error is one line, the note says the finished epochs are kept, and --resume goes on."""
    import pyro_sparse.infer.callbacks as callbacks
    from pyro_sparse.errors import CompactMismatchError

    real, calls = callbacks.compact, []

    def flaky(model, guide):
        calls.append(1)
        if len(calls) == 2:
            raise CompactMismatchError("compact network differs from the eval-mode model at layer 'fc2'")
        return real(model, guide)

    monkeypatch.setattr(callbacks, "compact", flaky)
    out = tmp_path / "run"
    args = ["train", "--method", "bb", "--arch", "lenet300", "--dataset", "digits", "--epochs", "3", "--out",
            str(out), "--no-latency", "--quiet"]
    code, err = _cli(args, capsys)
    assert code == 2 and "keeps every finished epoch" in err and "differs from the eval-mode model" in err
    assert len((out / "log.jsonl").read_text().splitlines()) == 1 and not (out / "metrics.json").exists()
    assert main([*args, "--resume"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 3 and (out / "metrics.json").is_file()
