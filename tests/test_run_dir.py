"""A run directory: one writer, crash-safe at every file write, divergence leaves a resumable run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse import runfiles
from pyro_sparse.cli import main
from pyro_sparse.data import load_dataset, subset
from pyro_sparse.errors import DivergenceError
from pyro_sparse.infer import TrainConfig, fit

TRAIN = ["train", "--method", "sbp", "--arch", "lenet300", "--dataset", "digits", "--epochs", "2", "--subset", "300",
         "--quiet", "--no-latency", "--val-size", "50"]
TIMING = {"train_seconds", "epoch_seconds", "seconds_per_epoch"}


class Killed(BaseException):
    """A simulated kill: nothing in pyro-sparse catches it (like SIGKILL, it skips every error handler)."""


def _state(run_dir):
    """Everything a run directory holds, timings aside: file names and comparable contents."""
    out = {}
    for f in sorted(run_dir.iterdir()):
        if f.name == "log.jsonl":
            out[f.name] = [{k: v for k, v in r.items() if k not in TIMING} for r in runfiles.read_log(run_dir)]
        elif f.name in ("metrics.json", "config.json"):  # config: the same but for where it was written
            d = {k: v for k, v in json.loads(f.read_text()).items() if k not in TIMING | {"command"}}
            d.get("args", {}).pop("out", None)
            out[f.name] = d
        elif f.name == "compact.json":  # names the run's config.json, which differs by its --out
            out[f.name] = {k: v for k, v in json.loads(f.read_text()).items() if k != "config_sha256"}
        elif f.name == "checkpoint.pt":
            ck = torch.load(f, weights_only=True)
            out[f.name] = (ck["epoch"], {k: v.tolist() for part in ("model", "guide") for k, v in ck[part].items()})
        else:
            out[f.name] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return _state(run)


def _writes(monkeypatch, kill_at: int | None, instant: str) -> list:
    """Count the file writes of a run directory; raise :class:`Killed` at write ``kill_at`` at ``instant``:
    ``before`` it, ``during`` it (a ``.tmp`` written, or half a log line) or ``after`` it."""
    seen = []
    commit, append = runfiles._commit, runfiles._append

    def _kill(k):
        return kill_at is not None and k == kill_at

    def fake_commit(tmp, path):
        seen.append(path.name)
        k = len(seen)
        if _kill(k) and instant == "before":
            tmp.unlink()
            raise Killed
        if _kill(k) and instant == "during":
            raise Killed
        commit(tmp, path)
        if _kill(k):
            raise Killed

    def fake_append(path, text):
        seen.append(path.name)
        k = len(seen)
        if _kill(k) and instant == "before":
            raise Killed
        append(path, text[: len(text) // 2] if _kill(k) and instant == "during" else text)
        if _kill(k):
            raise Killed

    monkeypatch.setattr(runfiles, "_commit", fake_commit)
    monkeypatch.setattr(runfiles, "_append", fake_append)
    return seen


def test_killed_at_every_file_write_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, uninterrupted):
    with monkeypatch.context() as m:
        writes = _writes(m, None, "after")
        assert main([*TRAIN, "--out", str(tmp_path / "count")]) == 0
    # config, (log line, checkpoint) per epoch, then finalisation: compact weights, compact spec, metrics
    assert writes == ["config.json", "log.jsonl", "checkpoint.pt", "log.jsonl", "checkpoint.pt",
                      "compact.safetensors", "compact.json", "metrics.json"]
    for k in range(1, len(writes) + 1):
        for instant in ("before", "during", "after"):
            run = tmp_path / f"kill{k}{instant}"
            with monkeypatch.context() as m:
                _writes(m, k, instant)
                with pytest.raises(Killed):
                    main([*TRAIN, "--out", str(run)])
            resume = ["--resume"] if (run / "config.json").is_file() else []  # else: rerun into the same --out
            if not (run / "metrics.json").is_file():
                assert main([*TRAIN, "--out", str(run), *resume]) == 0, (k, instant)
            assert _state(run) == uninterrupted, (k, instant)


def test_two_writers_one_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    (run / "metrics.json").unlink()  # a run to resume
    before = _state(run)
    with runfiles.RunLock(run):  # this process writes the directory; a second process must keep out
        r = subprocess.run([sys.executable, "-m", "pyro_sparse.cli", *TRAIN, "--out", str(run), "--resume"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert r.stderr.strip() == (f"pyro-sparse: error: {run} is being written by process {os.getpid()}; wait for "
                                    "it to finish or choose another --out (one writer per run directory)")
        assert (run / ".lock").read_text() == str(os.getpid())
    assert {k: v for k, v in _state(run).items() if k != ".lock"} == before
    assert not (run / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_reported_and_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    (run / "metrics.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(str(dead.pid))  # what a killed writer leaves
    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"stale lock of process {dead.pid}, which is not running" in err
    assert not (run / ".lock").exists() and (run / "metrics.json").is_file()


def test_run_directory_files_share_one_permission(tmp_path):
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    modes = {f.name: f.stat().st_mode & 0o777 for f in run.iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_divergence_stops_with_one_line_and_leaves_a_resumable_run(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--epochs", "3", "--lr", "1e30",
              "--quiet", "--no-latency", "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "training diverged at epoch 1, step" in err and "has no checkpoint yet" in err
    assert sorted(f.name for f in run.iterdir()) == ["config.json"]
    with pytest.raises(SystemExit):  # resumable (the recorded run, which diverges again the same way)
        main(["train", "--method", "svd", "--arch", "logreg", "--dataset", "digits", "--out", str(run), "--resume"])
    assert "training diverged at epoch 1, step" in capsys.readouterr().err


def test_divergence_after_a_good_epoch_keeps_its_checkpoint(tmp_path):
    data = subset(load_dataset("digits"), 300)
    cfg = TrainConfig(epochs=3, batch_size=50, lr=1e-2, measure_latency=False)

    def run(out, poison):
        torch.manual_seed(0)
        model = build_model("logreg", "sbp", data.input_shape, 10, mean=data.mean, std=data.std)
        guide = MeanFieldGuide(model)

        def callback(record):
            if poison and record["epoch"] == 1:
                with torch.no_grad():
                    model.net.fc1.weight[0, 0] = float("nan")

        return fit(model, guide, data, cfg, out, resume=not poison and out.exists(), progress=False,
                   callback=callback)

    with pytest.raises(DivergenceError, match=r"at epoch 2, step 1: the loss is nan; .* keeps its checkpoint of "
                                              r"epoch 1; lower --lr"):
        run(tmp_path / "cut", poison=True)
    assert [r["epoch"] for r in runfiles.read_log(tmp_path / "cut")] == [1]
    assert runfiles.load_checkpoint(tmp_path / "cut")["epoch"] == 0
    resumed = run(tmp_path / "cut", poison=False)
    full = run(tmp_path / "full", poison=False)
    assert resumed["test_error"] == full["test_error"] and resumed["nll"] == full["nll"]
