"""ArviZ InferenceData, plots and the report command."""

import arviz as az
import matplotlib
import pytest

from pyro_sparse.cli import main
from pyro_sparse.data import load_dataset
from pyro_sparse.diagnostics import plot_training_curves, plot_unit_summary, to_inference_data
from pyro_sparse.runs import load_run

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def sbp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sbp"
    assert main(["train", "--method", "sbp", "--arch", "lenet300", "--dataset", "digits", "--epochs", "2",
                 "--out", str(out), "--quiet", "--no-latency"]) == 0
    return out


def test_inference_data_groups_shapes_and_arviz(sbp_run):
    model, guide, _ = load_run(sbp_run)
    data = load_dataset("digits")
    idata = to_inference_data(model, guide, data.x_test[:60], data.y_test[:60], num_samples=12)
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data"):
        assert hasattr(idata, group)
    post = idata.posterior
    assert set(post.data_vars) == {"fc1_units.theta", "fc2_units.theta", "fc3_units.theta"}
    assert post["fc1_units.theta"].shape == (1, 12, 64)
    assert post["fc2_units.theta"].dims == ("chain", "draw", "fc2_units_unit")
    assert idata.log_likelihood["y"].shape == (1, 12, 60)
    assert idata.posterior_predictive["y"].shape == (1, 12, 60)
    assert (idata.log_likelihood["y"].values <= 0).all()
    assert len(az.summary(idata, var_names=["fc3_units.theta"])) == 100  # fc3 has 100 inputs
    az.plot_forest(idata, var_names=["fc3_units.theta"], combined=True)
    assert az.loo(idata).elpd_loo < 0


def test_inference_data_rejects_bad_input(sbp_run):
    model, guide, _ = load_run(sbp_run)
    data = load_dataset("digits")
    with pytest.raises(ValueError, match="examples"):
        to_inference_data(model, guide, data.x_test[:10], data.y_test[:9])


def test_plots_and_report(sbp_run, capsys):
    model, guide, _ = load_run(sbp_run)
    assert len(plot_unit_summary(model, guide).axes) == 3
    assert len(plot_training_curves(sbp_run).axes) == 3
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # a caller's own backend stays (the report used to force Agg)
    try:
        assert main(["report", str(sbp_run)]) == 0
        assert matplotlib.get_backend() == "svg"
    finally:
        plt.switch_backend(before)
    written = capsys.readouterr().out.split()
    assert any(p.endswith("units.png") for p in written) and all((sbp_run / "report").exists() for _ in written)
