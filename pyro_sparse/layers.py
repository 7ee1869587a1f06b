"""What pyro-sparse knows per layer type, in one place (docs/design.md, contract 10).

The types a method can put latents on (:data:`WEIGHT_LAYERS`), the normalisation layers multipliers are folded into
(:data:`NORM_LAYERS`), and the per-layer rules the unit placement and :func:`pyro_sparse.compact` use: how many
channels a layer has on each side (Torch-Pruning's pruner of the layer type answers where it has one), which side of a
layer a dependency prunes (Torch-Pruning's ``is_out_channel_pruning_fn``), how a per-channel factor folds into its
parameters, and whether an input channel is read at all.
"""

from __future__ import annotations

import torch
from torch import nn

from .nn.attention import head_count, head_projection

#: layer types a method attaches latents to (SVD: their weights; unit methods: their output channels / inputs)
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: normalisation layers over channels into whose affine parameters unit multipliers are folded
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d)
#: layers that produce a channel group's channels (a unit latent's producers)
PRODUCER_LAYERS = (nn.Conv1d, nn.Conv2d)


def is_out(handler, dg) -> bool:
    """Whether a dependency's ``handler`` prunes the output side of its layer (Torch-Pruning's
    ``is_out_channel_pruning_fn`` of the dependency graph ``dg``)."""
    return dg.is_out_channel_pruning_fn(handler)


def channels(m: nn.Module, side: str, dg=None) -> int:
    """The number of channels of ``m`` on ``side`` (``"out"`` or ``"in"``): from the Torch-Pruning pruner of its type
    when a dependency graph ``dg`` is given (any layer type it knows, LayerNorm included), else by our types."""
    if dg is not None:
        pruner = dg.get_pruner_of_module(m)
        if pruner is not None:
            n = pruner.get_out_channels(m) if side == "out" else pruner.get_in_channels(m)
            if n is not None:
                return int(n)
    if isinstance(m, NORM_LAYERS):
        return m.num_features
    if isinstance(m, nn.Linear):
        return m.out_features if side == "out" else m.in_features
    return m.out_channels if side == "out" else m.in_channels


def fold(m: nn.Module, where: str, factor: torch.Tensor, index=None, root_index=None) -> None:
    """Multiply the channels of ``m``'s output (``where="out"``: weight rows and bias, or a normalisation layer's
    affine parameters) or input (``"in"``: weight columns), or the heads of an ``nn.MultiheadAttention``
    (``"heads"``: each head's value rows; a qkv attention's: its columns of ``proj``), by ``factor [K]``; with
    ``index`` / ``root_index``,
    channel ``index[i]`` gets ``factor[root_index[i]]`` and the others 1."""
    if where == "heads" and not isinstance(m, nn.MultiheadAttention):  # a qkv attention: its projection's columns
        proj = head_projection(m)[1]
        proj.weight.mul_(factor.to(proj.weight).repeat_interleave(proj.in_features // head_count(m)).view(1, -1))
        return
    if where == "heads":  # an nn.MultiheadAttention: a head's output is linear in its value rows
        h, e = m.num_heads, m.embed_dim
        f = factor.to(m.in_proj_weight).repeat_interleave(e // h)
        m.in_proj_weight[2 * e:].mul_(f.view(-1, 1))
        if m.in_proj_bias is not None:
            m.in_proj_bias[2 * e:].mul_(f)
        return
    if index is not None:
        full = torch.ones(m.num_features if isinstance(m, NORM_LAYERS) else m.weight.shape[0],
                          dtype=factor.dtype, device=factor.device)
        factor = full.index_copy(0, index.to(factor.device), factor.index_select(0, root_index.to(factor.device)))
    if where == "in":
        m.weight.mul_(factor.view(1, -1, *([1] * (m.weight.dim() - 2))).to(m.weight))
        return
    m.weight.mul_(factor.view(-1, *([1] * (m.weight.dim() - 1))).to(m.weight))
    if m.bias is not None:
        m.bias.mul_(factor.to(m.bias))


def is_grouped(m: nn.Module) -> bool:
    """Whether ``m`` is a grouped convolution that is not depthwise (``1 < groups != in_channels``, e.g. RegNet's,
    ResNeXt's): its output channels can go only in equal counts per group (:func:`equal_per_group`), its input
    channels only at the same positions in every group (:func:`entering_positions`)."""
    groups = getattr(m, "groups", 1)
    return isinstance(m, WEIGHT_LAYERS) and groups > 1 and groups != getattr(m, "in_channels", groups)


def equal_per_group(m: nn.Module, channels: list[int], dead: set[int], root: dict[int, int]) -> set[int]:
    """``dead`` (root channel indices) less the channels revived so that every group of the grouped convolution
    ``m`` (:func:`is_grouped`) loses as many output channels as the group that loses fewest (at least one channel per
    group stays): ``m.groups`` blocks of ``m.out_channels / groups`` consecutive output channels; ``channels`` are
    ``m``'s output channels of the channel group and ``root`` maps them to root indices. Exact: a revived channel's
    test-time multiplier (0) is already folded in."""
    per = m.out_channels // m.groups
    blocks = [[root[c] for c in channels if c // per == g] for g in range(m.groups)]
    lose = min(min(sum(r in dead for r in block) for block in blocks), per - 1)
    revived = {r for block in blocks for r in sorted(r for r in block if r in dead)[lose:]}
    return dead - revived


def entering_positions(m: nn.Module, channels: list[int]) -> list[int]:
    """The position of each input channel ``channels[i]`` of the grouped convolution ``m`` (:func:`is_grouped`)
    inside its group (``c mod in_channels / groups``): Torch-Pruning removes a grouped convolution's input channels at
    the same positions in every group (one weight slice serves them all), so the channels of one position go
    together."""
    per = m.in_channels // m.groups
    return [c % per for c in channels]


def zero_columns(m: nn.Module, idxs: list[int]) -> bool:
    """Whether every weight column of input channels ``idxs`` of ``m`` is zero (unknown layouts: False)."""
    w = m.weight
    if isinstance(m, nn.Linear) or getattr(m, "groups", 1) == 1:
        return not bool(w[:, idxs].ne(0).any())
    if getattr(m, "transposed", False):
        return False
    per_in, per_out = m.in_channels // m.groups, w.shape[0] // m.groups  # (depthwise: per_in = 1)
    # input channel c is column c mod per_in of the filters of its group, c div per_in
    return not any(bool(w[c // per_in * per_out:(c // per_in + 1) * per_out, c % per_in].ne(0).any()) for c in idxs)
