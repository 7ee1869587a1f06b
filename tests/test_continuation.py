"""The next stage in Python (issue 27, item 5): ``continue_as`` does what ``pyro-sparse train --init-from`` does —
dense → any method with the trained weights, a method continued, DBB from BB with BB's q(π) frozen."""

import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse import continue_as
from pyro_sparse.cli import main
from pyro_sparse.data import load_dataset, subset
from pyro_sparse.errors import InvalidInputError
from pyro_sparse.infer import TrainConfig, fit
from pyro_sparse.runfiles import read_config


def _digits():
    return subset(load_dataset("digits"), 300, 100)


def _trained(method, data):
    torch.manual_seed(0)
    model = build_model("lenet300", method, data.input_shape, 10, data.x_train.shape[0], data.mean, data.std)
    guide = MeanFieldGuide(model) if method != "dense" else None
    if guide is not None:
        fit(model, guide, data, TrainConfig(epochs=1, lr_latent=0.05, measure_latency=False), progress=False)
    return model, guide


def test_dbb_from_bb_keeps_the_weights_and_freezes_bb_q_pi():
    data = _digits()
    bb, bb_guide = _trained("bb", data)
    before = {k: v.clone() for k, v in bb_guide.state_dict().items()}
    dbb, dbb_guide = continue_as(bb, bb_guide, "dbb")
    assert dbb.method == "dbb" and bb.method == "bb"
    for name, p in bb.net.named_parameters():  # the trained weights
        assert torch.equal(dict(dbb.net.named_parameters())[name], p)
    frozen = {n for n, p in dbb_guide.named_parameters() if not p.requires_grad}
    assert frozen and frozen <= set(before)
    for n in frozen:
        assert torch.equal(dbb_guide.state_dict()[n], before[n])
    fit(dbb, dbb_guide, data, TrainConfig.for_method("dbb", epochs=1, measure_latency=False), progress=False)
    for n, v in dbb_guide.state_dict().items():
        if n in frozen:
            assert torch.equal(v, before[n]), n  # BB's q(π) stays
    assert any(not torch.equal(p, dict(bb.net.named_parameters())[n]) for n, p in dbb.net.named_parameters())
    for n, v in bb_guide.state_dict().items():  # the source is not changed
        assert torch.equal(v, before[n])


def test_continue_as_freezes_what_the_command_line_freezes(tmp_path):
    """One rule: ``continue_as`` and ``pyro-sparse train --init-from`` freeze the same guide parameters."""
    common = ["--arch", "lenet300", "--dataset", "digits", "--epochs", "1", "--no-latency", "--quiet"]
    assert main(["train", "--method", "bb", "--out", str(tmp_path / "bb"), *common]) == 0
    assert main(["train", "--method", "dbb", "--init-from", str(tmp_path / "bb"), "--out", str(tmp_path / "dbb"),
                 *common]) == 0
    cli_frozen = set(read_config(tmp_path / "dbb")["frozen"])
    data = load_dataset("digits")
    bb, bb_guide = _trained("bb", subset(data, 300, 100))
    _, dbb_guide = continue_as(bb, bb_guide, "dbb")
    assert {n for n, p in dbb_guide.named_parameters() if not p.requires_grad} == cli_frozen


def test_dense_and_same_method_continuations_and_refusals():
    data = _digits()
    dense, _ = _trained("dense", data)
    sbp, sbp_guide = continue_as(dense, None, "sbp")
    assert sbp.method == "sbp" and all(p.requires_grad for p in sbp_guide.parameters())
    for name, p in dense.net.named_parameters():
        assert torch.equal(dict(sbp.net.named_parameters())[name], p)
    bb, bb_guide = _trained("bb", data)
    again, again_guide = continue_as(bb, bb_guide, "bb")
    assert again is not bb and all(torch.equal(a, b) for a, b in zip(again_guide.state_dict().values(),
                                                                      bb_guide.state_dict().values(), strict=True))
    dbb, dbb_guide = continue_as(bb, bb_guide, "dbb")
    with pytest.raises(InvalidInputError, match="a dbb model cannot be continued as 'bb'; bb starts from"):
        continue_as(dbb, dbb_guide, "bb")
    with pytest.raises(InvalidInputError, match="a bb model cannot be continued as 'sbp'"):
        continue_as(bb, bb_guide, "sbp")
    with pytest.raises(InvalidInputError, match="unknown method 'nope'"):
        continue_as(bb, bb_guide, "nope")
    with pytest.raises(InvalidInputError, match="needs the trained guide"):
        continue_as(bb, None, "dbb")
    with pytest.raises(InvalidInputError, match="guide does not belong"):
        continue_as(bb, dbb_guide, "dbb")
    with pytest.raises(InvalidInputError, match="expects a trained pyro_sparse model"):
        continue_as(torch.nn.Linear(2, 2), None, "bb")
