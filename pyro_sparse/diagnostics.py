"""ArviZ diagnostics and plots of the sparsification posteriors.

:func:`to_inference_data` turns a trained model and guide into ``arviz.InferenceData`` with

* ``posterior``: only the sparsification variables, one chain, ``num_samples`` draws — SBP ``theta`` and BB/DBB
  ``pi`` (and DBB ``beta``) per unit, drawn from the guide (dims ``(chain, draw, <layer>_unit)``);
  for SVD layers ``log_alpha`` per input unit (the median log α of the unit's outgoing weights: a variational
  parameter, so constant over draws) — never the raw weights;
* ``posterior_predictive``: ``y`` drawn from the model for every draw (dims ``(chain, draw, obs)``), each draw with
  one global sample of every latent (``pyro.infer.Predictive``);
* ``log_likelihood``: ``y`` — log p(y_i | x_i, draw) in nats (dims ``(chain, draw, obs)``), so ``az.loo`` works;
* ``observed_data``: ``y`` (dim ``obs``).

Plots (matplotlib, each returns the ``Figure``): :func:`plot_unit_summary`, :func:`plot_input_mask` (from
:func:`input_mask`),
:func:`plot_first_layer`, :func:`plot_training_curves`; :func:`write_report` writes them all for a run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import torch

from .compact import check_guide
from .distributions import normal_log_alpha
from .errors import InvalidInputError
from .sparsify import SparseModel


def _short(name: str) -> str:
    """A site's display name: ``units.fc1_units.pi`` → ``fc1_units.pi``, ``weights.fc1.weight`` → ``fc1.weight``."""
    for prefix in ("net.", "units.", "weights."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _unit_log_alpha(q) -> torch.Tensor:
    """Median log α of each input unit's outgoing weights, ``[in]``, from a Gaussian weight posterior."""
    return normal_log_alpha(q).transpose(0, 1).reshape(q.loc.shape[1], -1).median(1).values


def _sparse_sites(model, guide):
    from pyro_sparse.guides import latent_sites

    for name, module, attr, _ in latent_sites(model):
        yield name, module, attr, guide.posterior(name)


@torch.no_grad()
def to_inference_data(model, guide, x: torch.Tensor, y: torch.Tensor, num_samples: int = 100, seed: int = 0):
    """``arviz.InferenceData`` of a trained ``model`` / ``guide`` on the examples ``x [n, *input_shape]``, ``y [n]``.

    The draws use their own seed: the caller's random state (torch, NumPy, Python, as Pyro seeds them) and the
    train/eval modes of ``model`` and ``guide`` are restored on return.

    :param num_samples: posterior draws (one chain), ``>= 1``.
    :param seed: seed of the draws.
    :raises InvalidInputError: (a ValueError) not a sparsified model with its own guide, ``x`` of another shape than
        the model's inputs, ``x`` and ``y`` of different lengths, labels that are not integers, ``num_samples < 1``.
    """
    import arviz as az
    from pyro.util import get_rng_state, set_rng_state

    if not isinstance(model, SparseModel):
        raise InvalidInputError(f"to_inference_data takes a sparsified model (sparsify, build_model), got a "
                                f"{type(model).__name__}")
    check_guide(model, guide)
    if not torch.is_tensor(x) or tuple(x.shape[1:]) != tuple(model.input_shape):
        raise InvalidInputError(f"x must be inputs [n, {', '.join(map(str, model.input_shape))}], got "
                                f"{list(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not torch.is_tensor(y) or y.shape != x.shape[:1] or y.is_floating_point():
        raise InvalidInputError(f"x has {x.shape[0]} examples; y must be as many integer labels [n], got "
                                f"{list(y.shape) if torch.is_tensor(y) else type(y).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidInputError(f"num_samples must be >= 1, got {num_samples!r}")
    state, modes = get_rng_state(), (model.training, guide.training)
    try:
        pyro.set_rng_seed(seed)
        return _inference_data(az, model, guide, x, y, num_samples)
    finally:
        set_rng_state(state)
        model.train(modes[0])
        guide.train(modes[1])


def _inference_data(az, model, guide, x, y, num_samples):
    device = next(iter(guide.parameters()), torch.zeros(())).device
    x, y = x.to(device), y.to(device)
    posterior, dims = {}, {}
    for name, _, attr, q in _sparse_sites(model, guide):
        key = _short(name)
        if attr == "weight":  # SVD: log α per input unit
            draws = _unit_log_alpha(q).expand(num_samples, -1)
            key = key.replace(".weight", ".log_alpha")
        else:
            draws = q.sample((num_samples,))
        posterior[key] = draws.cpu().numpy()[None]
        dims[key] = [f"{key.split('.')[0]}_unit"]
    model.eval()
    guide.eval()
    # posterior-predictive draws with one global sample of every latent per draw (Pyro's Predictive), so that the
    # pointwise log-likelihoods of one draw share its weights, as az.loo assumes
    predictive = pyro.infer.Predictive(model, guide=guide, num_samples=num_samples, return_sites=("_RETURN",))
    logits = predictive(x)["_RETURN"].reshape(num_samples, x.shape[0], -1)
    logp = torch.log_softmax(logits, -1)
    log_lik = logp.gather(2, y.view(1, -1, 1).expand(num_samples, -1, 1)).squeeze(2).cpu().numpy()[None]
    y_pred = torch.distributions.Categorical(logits=logits).sample().cpu().numpy()[None]
    coords = {"obs": np.arange(x.shape[0])}
    return az.from_dict(
        posterior=posterior,
        posterior_predictive={"y": y_pred},
        log_likelihood={"y": log_lik},
        observed_data={"y": y.cpu().numpy()},
        coords=coords,
        dims={**dims, "y": ["obs"]},
    )


def _unit_stats(model, guide):
    """``[(label, values [K], threshold, kind)]`` per unit latent / SVD layer (SVD: the median log α of each input
    unit's weights), from :meth:`pyro_sparse.SparseModel.summary`."""
    out = []
    for row in model.summary(guide):
        key = _short(row["site"])
        if row["statistic"] == "log_alpha":
            values = row["values"].transpose(0, 1).reshape(row["values"].shape[1], -1).median(1).values
            out.append((key, values.cpu().numpy(), row["threshold"], "median log α"))
        else:
            out.append((key, row["values"].cpu().numpy(), row["threshold"], row["statistic"]))
    return out


def plot_unit_summary(model, guide):
    """One panel per layer: the pruning statistic of every unit (SNR, E[π] or median log α) and its threshold."""
    import matplotlib.pyplot as plt

    stats = _unit_stats(model, guide)
    fig, axes = plt.subplots(len(stats), 1, figsize=(8, 2.2 * len(stats)), squeeze=False)
    for ax, (label, v, thr, kind) in zip(axes[:, 0], stats, strict=True):
        ax.plot(v, ".", ms=3)
        ax.axhline(thr, color="r", lw=1, label=f"threshold {thr:g}")
        if kind != "median log α":
            ax.set_yscale("log")
        ax.set_ylabel(kind)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("unit")
    fig.tight_layout()
    return fig


def input_mask(model, guide) -> np.ndarray:
    """Boolean ``[n_inputs]``: which input features (pixels) the compact network still reads.

    Static pruning only (the compact network's ``Select``); DBB's per-example gates come on top of it.
    """
    from .compact import compact
    from .nn import Select

    small = compact(model, guide)
    n = int(np.prod(model.input_shape))
    keep = np.zeros(n, dtype=bool)
    sel = next((m for m in small.modules() if isinstance(m, Select)), None)
    keep[sel.index.cpu().numpy() if sel is not None else np.arange(n)] = True
    return keep


def plot_input_mask(model, guide, image_shape: tuple[int, int] = (28, 28), ax=None, label: str = "kept input pixels"):
    """Kept input pixels as an image (as in the SBP / BB papers' figures); draws on ``ax`` if given, titled
    ``"{label}: kept/total"``."""
    import matplotlib.pyplot as plt

    keep = input_mask(model, guide)
    if keep.size != image_shape[0] * image_shape[1]:
        raise ValueError(f"input mask has {keep.size} features, expected {image_shape[0]}x{image_shape[1]} pixels")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(keep.reshape(image_shape), cmap="gray")
    ax.set_title(f"{label}: {keep.sum()}/{keep.size}", fontsize=9)
    ax.axis("off")
    return fig or ax.figure


def plot_first_layer(model, guide, image_shape: tuple[int, int] = (28, 28), units: int = 10):
    """SVD: log α of the first layer's weights as images (SVD paper, Fig. 3).

    Surviving units first. Dense first layer ``[out, 784]``: ``units`` output units, each as an ``image_shape``
    image of its input weights. Conv first layer ``[C_out, C_in, k, k]``: ``units`` filters (input channel 0) as
    ``k × k`` images. Bright = pruned (log α ≥ 3).
    :raises ValueError: the first sparse layer is not SVD.
    """
    import matplotlib.pyplot as plt

    name, _, attr, q = next(iter(_sparse_sites(model, guide)))
    if attr != "weight":
        raise ValueError("plot_first_layer needs an SVD model (latent weights)")
    la = normal_log_alpha(q).detach().cpu().numpy()
    images = la[:, 0] if la.ndim == 4 else la.reshape(la.shape[0], *image_shape)
    alive = (la.reshape(la.shape[0], -1) < 3).any(1)
    images = np.concatenate([images[alive], images[~alive]])  # surviving units first
    k = min(units, images.shape[0])
    fig, axes = plt.subplots(1, k, figsize=(1.3 * k, 1.6))
    for i, ax in enumerate(np.atleast_1d(axes)):
        im = ax.imshow(images[i], cmap="magma", vmin=-4, vmax=8)
        ax.axis("off")
    fig.colorbar(im, ax=list(np.atleast_1d(axes)), fraction=0.02, pad=0.01)
    fig.suptitle(f"{_short(name)}: log α per weight (bright = pruned, ≥ 3)", fontsize=9)
    return fig


def plot_training_curves(run_dir: str | Path):
    """Loss, train/test error and surviving weights per epoch from ``RUN_DIR/log.jsonl``.

    :raises MissingRunFileError: no log (or an empty one). :raises RunDirError: a corrupted log.
    """
    import matplotlib.pyplot as plt

    from .errors import MissingRunFileError
    from .runfiles import read_log

    rows = read_log(run_dir, torn_ok=False)
    if not rows:
        raise MissingRunFileError(f"{run_dir} holds no training log (log.jsonl missing or empty)")
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    axes[0].plot(ep, [r["loss"] for r in rows], label="−ELBO / N")
    axes[0].plot(ep, [r["nll"] for r in rows], label="NLL / N")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[1].plot(ep, [r["train_error"] for r in rows], label="train (stochastic)")
    axes[1].plot(ep, [r["test_error"] for r in rows], label="test (compact)")
    axes[1].set_ylabel("error %")
    axes[1].legend(fontsize=8)
    axes[2].plot(ep, [r["nonzero_weights"] for r in rows])
    axes[2].set_yscale("log")
    axes[2].set_ylabel("non-zero weights")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def write_report(run_dir: str | Path, model, guide) -> list[Path]:
    """Write the plots of a finished run to ``RUN_DIR/report/*.png``; returns the paths written (matplotlib's
    backend is left as the caller has it)."""
    import matplotlib.pyplot as plt

    from .runfiles import read_log

    if not read_log(run_dir, torn_ok=False):  # one-line errors for a missing or corrupted log, before any plot
        plot_training_curves(run_dir)
    out = Path(run_dir) / "report"
    out.mkdir(exist_ok=True)
    written = []
    figs = {"training_curves": lambda: plot_training_curves(run_dir), "units": lambda: plot_unit_summary(model, guide)}
    if tuple(model.input_shape) == (1, 28, 28):
        figs["input_mask"] = lambda: plot_input_mask(model, guide)
        figs["first_layer_log_alpha"] = lambda: plot_first_layer(model, guide)
    for name, make in figs.items():
        try:
            fig = make()
        except (ValueError, StopIteration):
            continue  # not applicable to this method
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
